"""Where a settlement report comes from: a local path, s3://bucket/key, or an upload.

Every source ends up as a local file plus the SHA-256 of its bytes, read in blocks so
that no report is ever held in memory. S3 objects and uploads are spooled to disk
first: the hash decides whether the report was already reconciled, before any work.

The spool folder holds `report-*.csv` (a copy whose run is not known yet) and
`run-ID.csv` (the copy run ID executes from, kept until that run is COMPLETED or
FAILED). The latter outlives its process on purpose: a service that starts again finds
it by the run's id (`reopen`) and checks its SHA-256 before executing the run.
`sweep_spool` removes what no run will read again.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, TextIO
from urllib.parse import urlparse

from conveyor.reconciliation.formats import open_report

BLOCK_SIZE = 1 << 20
UPLOAD_SOURCE_PREFIX = "upload:"  # how an upload's source is recorded: upload:FILENAME
INCOMING_PREFIX = "report-"
RUN_FILE_PREFIX = "run-"
# A spooled file this old whose run is not executing any more is a leftover of a process that
# died; an upload or a re-submitted report is always fresh.
SPOOL_LEFTOVER_SECONDS = 3600


class ReportUnavailable(RuntimeError):
    """A run's report cannot be read again byte for byte; the message says what to do."""


@dataclass(frozen=True)
class SettlementFile:
    path: Path
    source: str  # as the user named it
    sha256: str
    spooled: bool  # a copy in the spool folder, removed once its run has finished

    def open_text(self) -> TextIO:
        return open_report(self.path)

    def discard(self) -> None:
        if self.spooled:
            self.path.unlink(missing_ok=True)

    def kept_for(self, run_id: str) -> SettlementFile:
        """This report as run `run_id`'s spooled copy, which a restarted service can find again."""
        if not self.spooled:
            return self
        kept = self.path.with_name(f"{RUN_FILE_PREFIX}{run_id}.csv")
        if kept != self.path:
            os.replace(self.path, kept)  # atomic: the same folder, so the same file system
        return replace(self, path=kept)


def spool_dir() -> Path:
    """Where S3 downloads and uploads wait for their run (CONVEYOR_SPOOL_DIR, or the temp folder)."""
    directory = Path(os.environ.get("CONVEYOR_SPOOL_DIR") or Path(tempfile.gettempdir()) / "conveyor-settlements")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def open_source(source: str, s3_client=None) -> SettlementFile:
    """A report named by a local path or an s3:// URI."""
    if source.startswith("s3://"):
        return _from_s3(source, s3_client)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such file. Give the path of a settlement report CSV, or s3://bucket/key")
    return SettlementFile(path=path.resolve(), source=source, sha256=_sha256_of(path), spooled=False)


def spool(stream: BinaryIO, source: str) -> SettlementFile:
    """Copy a stream (an upload, an S3 body) to the spool folder, hashing it on the way."""
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=spool_dir(), prefix=INCOMING_PREFIX, suffix=".csv", delete=False) as handle:
        while block := stream.read(BLOCK_SIZE):
            digest.update(block)
            handle.write(block)
    return SettlementFile(path=Path(handle.name), source=source, sha256=digest.hexdigest(), spooled=True)


def reopen(run_id: str, source: str, sha256: str, s3_client=None) -> SettlementFile:
    """Run `run_id`'s report again, byte for byte: its spooled copy, else its source.

    Raises ReportUnavailable when neither holds the content the run was submitted with.
    """
    kept = spool_dir() / f"{RUN_FILE_PREFIX}{run_id}.csv"
    if kept.is_file():
        if _sha256_of(kept) == sha256:
            return SettlementFile(path=kept, source=source, sha256=sha256, spooled=True)
        kept.unlink(missing_ok=True)  # a torn or foreign copy: no run can use it
    if source.startswith(UPLOAD_SOURCE_PREFIX):
        raise ReportUnavailable(
            f"the uploaded report ({source[len(UPLOAD_SOURCE_PREFIX):]}) is no longer in the spool folder of the"
            " service that restarted it. Upload the report again (set CONVEYOR_SPOOL_DIR to storage that survives"
            " the service, e.g. EFS, to keep uploads across restarts)")
    try:
        report = open_source(source, s3_client)
    except FileNotFoundError:
        raise ReportUnavailable(f"{source} is not there any more. Submit the report again from where it is now") from None
    except Exception as exc:  # noqa: BLE001 - S3 denied, network: say which, the caller decides what follows
        raise ReportUnavailable(f"{source} could not be read ({type(exc).__name__}: {exc}). Check that this"
                                " service can read it, then restart the run or submit the report again") from None
    if report.sha256 != sha256:
        report.discard()
        raise ReportUnavailable(
            f"{source} has changed since the run was submitted (SHA-256 now {report.sha256[:12]}…, the run's report"
            f" {sha256[:12]}…). Submit the report again to reconcile what it holds now: that is a new run")
    return report.kept_for(run_id)


def sweep_spool(statuses_of: Callable[[list[str]], dict[str, str]], now: float | None = None) -> list[Path]:
    """Remove the spooled reports no run will read again, and return them.

    `statuses_of` maps run ids to their statuses (an id without a run is left out). A run's
    copy goes once the run is COMPLETED, or when the run is FAILED or gone and the copy is
    SPOOL_LEFTOVER_SECONDS old; `report-*` copies go at that age (their request died). Copies
    of unfinished runs stay: the process executing the run, or the next recovery, reads them.
    """
    now = time.time() if now is None else now
    folder = spool_dir()
    by_run: dict[str, Path] = {}
    removable: list[Path] = []
    for path in folder.iterdir():
        if path.name.startswith(RUN_FILE_PREFIX) and path.suffix == ".csv":
            run_id = path.name[len(RUN_FILE_PREFIX):-len(".csv")]
            if _is_uuid(run_id):
                by_run[run_id] = path
        elif path.name.startswith(INCOMING_PREFIX) and path.suffix == ".csv" and _age(path, now) > SPOOL_LEFTOVER_SECONDS:
            removable.append(path)
    statuses = statuses_of(list(by_run)) if by_run else {}
    for run_id, path in by_run.items():
        status = statuses.get(run_id)
        if status == "COMPLETED" or (status in (None, "FAILED") and _age(path, now) > SPOOL_LEFTOVER_SECONDS):
            removable.append(path)
    for path in removable:
        path.unlink(missing_ok=True)
    return removable


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(BLOCK_SIZE):
            digest.update(block)
    return digest.hexdigest()


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0  # removed meanwhile by another process


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _from_s3(uri: str, s3_client) -> SettlementFile:
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket or not key:
        raise FileNotFoundError(f"{uri}: an S3 source looks like s3://bucket/path/to/report.csv")
    if s3_client is None:
        import boto3  # only S3 sources need it; AWS_ENDPOINT_URL_S3 points it at moto locally

        s3_client = boto3.client("s3")
    from botocore.exceptions import ClientError

    try:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            raise FileNotFoundError(f"{uri}: no such object. Check the bucket and key") from None
        raise
    with body:
        return spool(body, uri)
