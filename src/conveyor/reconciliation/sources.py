"""Where a settlement report comes from: a local path, s3://bucket/key, or an upload.

Every source ends up as a local file plus the SHA-256 of its bytes, read in blocks so
that no report is ever held in memory. S3 objects and uploads are spooled to disk
first: the hash decides whether the report was already reconciled, before any work.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO
from urllib.parse import urlparse

BLOCK_SIZE = 1 << 20


@dataclass(frozen=True)
class SettlementFile:
    path: Path
    source: str  # as the user named it
    sha256: str
    spooled: bool  # a copy made for this run, removed once the run has finished

    def open_text(self) -> TextIO:
        # utf-8-sig drops a byte-order mark; newline="" lets csv handle CRLF and quoted newlines.
        return self.path.open(encoding="utf-8-sig", newline="")

    def discard(self) -> None:
        if self.spooled:
            self.path.unlink(missing_ok=True)


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
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(BLOCK_SIZE):
            digest.update(block)
    return SettlementFile(path=path.resolve(), source=source, sha256=digest.hexdigest(), spooled=False)


def spool(stream: BinaryIO, source: str) -> SettlementFile:
    """Copy a stream (an upload, an S3 body) to the spool folder, hashing it on the way."""
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=spool_dir(), prefix="report-", suffix=".csv", delete=False) as handle:
        while block := stream.read(BLOCK_SIZE):
            digest.update(block)
            handle.write(block)
    return SettlementFile(path=Path(handle.name), source=source, sha256=digest.hexdigest(), spooled=True)


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
