"""Where a settlement report comes from: a local path, s3://bucket/key, or an upload.

The CLI reads any local path its user names (`open_source`): it runs as that user. A service
reads a local path only under the report folder its operator configured (`open_offered_source`,
`confine`): its callers must not make it read its own secrets, /proc, or the database's files.

Every source ends up as a local file plus the SHA-256 of its bytes, read in blocks so
that no report is ever held in memory. S3 objects, uploads and a service's local reports
are spooled to disk first: the hash decides whether the report was already reconciled,
before any work, and what is read is what was checked and hashed.

The spool folder holds `report-*.csv` (a copy whose run is not known yet) and
`run-ID.csv` (the copy run ID executes from, kept until that run is COMPLETED or
FAILED). The latter outlives its process on purpose: a service that starts again finds
it by the run's id (`reopen`) and checks its SHA-256 before executing the run.
`sweep_spool` removes what no run will read again.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import time
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TextIO

from conveyor.reconciliation.formats import open_report

BLOCK_SIZE = 1 << 20
REPORT_DIR_VARIABLE = "CONVEYOR_REPORT_DIR"  # the folder under which a service reads local reports
UPLOAD_SOURCE_PREFIX = "upload:"  # how an upload's source is recorded: upload:FILENAME
INCOMING_PREFIX = "report-"
RUN_FILE_PREFIX = "run-"
# A spooled file this old whose run is not executing any more is a leftover of a process that
# died; an upload or a re-submitted report is always fresh.
SPOOL_LEFTOVER_SECONDS = 3600
MAX_PATH_BYTES = 4096  # PATH_MAX
MAX_UPLOAD_NAME = 255
# Bucket names as S3 allows them (virtual-host style); keys are 1 to 1024 bytes of UTF-8.
S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MAX_S3_KEY_BYTES = 1024
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


class SourceRefused(ValueError):
    """A source this service does not read as named; the message says how to offer the report instead."""


class SourceUnreadable(RuntimeError):
    """A source this service may name but could not read (S3 refused, unreachable); the message says what to check."""


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
    """A report named by any local path or an s3:// URI: for the CLI, which reads as its user."""
    if source.startswith("s3://"):
        return _from_s3(source, s3_client)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such file. Give the path of a settlement report CSV, or s3://bucket/key")
    return SettlementFile(path=path.resolve(), source=source, sha256=_sha256_of(path), spooled=False)


def how_to_offer(report_dir: Path | None) -> str:
    """How a service's caller can offer a report."""
    local = (f"or the absolute path of a regular file under {report_dir}" if report_dir is not None
             else f"(local paths are refused: this service has no report folder; its operator can set {REPORT_DIR_VARIABLE})")
    return f"Upload the file in the multipart field 'report', or name it s3://bucket/key, {local}"


def confine(source: str, report_dir: Path | None) -> PurePosixPath:
    """The local path a service may look at for `source`, or SourceRefused: the rule alone, without I/O.

    `report_dir` is the operator's report folder, absolute; None allows no local path. The
    answer is still to be resolved (symlinks) and checked again with `is_within` before it is read.
    """
    refusal = _refusal(source, report_dir)
    if refusal:
        raise SourceRefused(f"{refusal}. {how_to_offer(report_dir)}")
    return PurePosixPath(os.path.normpath(source))


def is_within(real_path: str | PurePosixPath, report_dir: Path) -> bool:
    """Whether a resolved path (no symlink, no '..') names something inside the report folder."""
    return PurePosixPath(report_dir) in PurePosixPath(real_path).parents


def _refusal(source: str, report_dir: Path | None) -> str | None:
    if _SCHEME.match(source):
        return "only s3:// URIs are read; other URIs (file://, http://, …) are not"
    if report_dir is None:
        return "this service reads no local paths"
    if not source or any(unicodedata.category(c) in ("Cc", "Cs") for c in source):
        return "the path is empty or holds control characters"
    if len(os.fsencode(source)) > MAX_PATH_BYTES:
        return f"the path is longer than {MAX_PATH_BYTES} bytes"
    if not os.path.isabs(source):
        return "the path is relative; name an absolute path"
    if not is_within(os.path.normpath(source), report_dir):
        return "the path is outside the report folder"
    return None


def open_offered_source(source: str, report_dir: Path | None, s3_client=None) -> SettlementFile:
    """A report a service's caller named: an s3:// URI, or a regular file under `report_dir` (None: no path).

    Raises SourceRefused for anything else, FileNotFoundError for a missing file in the folder.
    The file is opened without following a last symlink, and the real path of the opened file is
    checked, so a symlink swapped in meanwhile cannot lead it out of the folder. It is copied to the
    spool folder from that same descriptor: the run reads the copy, never the path again.
    """
    if source.startswith("s3://"):
        try:
            s3_location(source)
        except SourceRefused as exc:
            raise SourceRefused(f"{exc}. {how_to_offer(report_dir)}") from None
        return _from_s3(source, s3_client)
    real = os.path.realpath(confine(source, report_dir))  # symlinks and '..' resolved
    real_dir = Path(os.path.realpath(report_dir))  # the folder may itself be a symlink
    if not is_within(real, real_dir):
        raise SourceRefused(f"the path leads outside the report folder. {how_to_offer(report_dir)}")
    try:
        descriptor = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file under the report folder {report_dir}. {how_to_offer(report_dir)}") from None
    except OSError:  # a symlink swapped in, no permission, a name too long: never quote the OS's message
        raise SourceRefused(f"the path cannot be opened as a file. {how_to_offer(report_dir)}") from None
    try:
        problem = _problem_with_opened(descriptor, real, real_dir)
        if problem is None:
            with open(descriptor, "rb", closefd=False) as handle:
                return spool(handle, source)
    finally:
        os.close(descriptor)
    raise SourceRefused(f"{problem}. {how_to_offer(report_dir)}")


def _problem_with_opened(descriptor: int, real: str, real_dir: Path) -> str | None:
    opened = os.fstat(descriptor)
    if not stat.S_ISREG(opened.st_mode):
        return "the path is not a regular file"
    if opened.st_nlink > 1:  # a hard link may lead anywhere on the file system: a copy cannot
        return "the file has other hard links; copy it into the folder instead"
    if not is_within(_real_path_of(descriptor, real), real_dir):
        return "the path leads outside the report folder"
    return None


def upload_source(filename: str | None) -> str:
    """How an upload is recorded: upload:NAME, with the client's file name reduced to a short, plain base name.

    Never a path: an upload is read only from its spooled copy.
    """
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] not in ("C", "Z") or c == " ").strip()
    return UPLOAD_SOURCE_PREFIX + (name[:MAX_UPLOAD_NAME] or "report.csv")


def spool(stream: BinaryIO, source: str) -> SettlementFile:
    """Copy a stream (an upload, an S3 body) to the spool folder, hashing it on the way."""
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=spool_dir(), prefix=INCOMING_PREFIX, suffix=".csv", delete=False) as handle:
        while block := stream.read(BLOCK_SIZE):
            digest.update(block)
            handle.write(block)
    return SettlementFile(path=Path(handle.name), source=source, sha256=digest.hexdigest(), spooled=True)


def reopen(run_id: str, source: str, sha256: str, report_dir: Path | None, s3_client=None) -> SettlementFile:
    """Run `run_id`'s report again, byte for byte: its spooled copy, else its source.

    A service reads a local source only under its report folder `report_dir`, as when it was
    offered (a run the CLI submitted may name any path). Raises ReportUnavailable when neither
    holds the content the run was submitted with.
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
        report = open_offered_source(source, report_dir, s3_client)
    except FileNotFoundError:
        raise ReportUnavailable(f"{source} is not there any more. Submit the report again from where it is now") from None
    except SourceRefused as exc:
        raise ReportUnavailable(f"this service does not read {source}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - S3 denied, network: say which, the caller decides what follows
        reason = str(exc) if isinstance(exc, SourceUnreadable) else type(exc).__name__
        raise ReportUnavailable(f"{source} could not be read ({reason}). Check that this"
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


def _real_path_of(descriptor: int, opened: str) -> str:
    """Where an open file really is: from /proc on Linux, else the path it was opened by, if still that file."""
    try:
        return os.readlink(f"/proc/self/fd/{descriptor}")
    except OSError:
        same = os.path.samestat(os.fstat(descriptor), os.stat(opened, follow_symlinks=False))
        return opened if same else "/"


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


def s3_location(uri: str) -> tuple[str, str]:
    """(bucket, key) of s3://bucket/key, or SourceRefused. The key is taken as written: '?' and '#' included."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if (not S3_BUCKET.fullmatch(bucket) or ".." in bucket or not key or len(key.encode("utf-8", "replace")) > MAX_S3_KEY_BYTES
            or any(unicodedata.category(c) in ("Cc", "Cs") for c in key)):
        raise SourceRefused("an S3 source looks like s3://bucket/path/to/report.csv: a bucket name of 3 to 63"
                            " lowercase letters, digits, dots and hyphens, and a key of 1 to 1024 bytes without"
                            " control characters")
    return bucket, key


def _from_s3(uri: str, s3_client) -> SettlementFile:
    bucket, key = s3_location(uri)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if s3_client is None:
            import boto3  # only S3 sources need it; AWS_ENDPOINT_URL_S3 points it at moto locally

            s3_client = boto3.client("s3")
        with s3_client.get_object(Bucket=bucket, Key=key)["Body"] as body:
            return spool(body, uri)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            raise FileNotFoundError(f"{uri}: no such object. Check the bucket and key") from None
        # Only S3's error code: its message and the request's details are not the caller's to see.
        raise SourceUnreadable(f"S3 refused to give {uri} ({code or 'no error code'}): check the bucket and key,"
                               " and that this service may s3:GetObject it") from None
    except BotoCoreError as exc:
        raise SourceUnreadable(f"{uri} could not be read from S3 ({type(exc).__name__}): check this service's AWS"
                               " region, credentials and route to S3") from None
