"""Which report sources a service reads, and how an upload and an error are recorded: the rules alone."""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path, PurePosixPath

import pytest
from aws_lambda_powertools import Logger

from conveyor.observability import describe_error, log_failure
from conveyor.reconciliation.sources import (
    MAX_UPLOAD_NAME, SourceRefused, confine, is_within, s3_location, upload_source,
)

FOLDER = Path("/srv/reports")


@pytest.mark.parametrize("source", [
    "/srv/reports/stripe.csv",
    "/srv/reports/2026/10/adyen.csv",
    "/srv/reports/./2026/../stripe.csv",
])
def test_an_absolute_path_under_the_folder_is_allowed_normalised(source):
    path = confine(source, FOLDER)

    assert is_within(path, FOLDER) and ".." not in path.parts


@pytest.mark.parametrize(("source", "why"), [
    ("/etc/passwd", "outside the report folder"),
    ("/proc/self/environ", "outside the report folder"),
    ("/srv/reports/../secrets/token", "outside the report folder"),
    ("/srv/reports", "outside the report folder"),  # the folder itself is no file
    ("/srv/reports-other/x.csv", "outside the report folder"),  # a sibling sharing the prefix
    ("//srv/reports/x.csv", "outside the report folder"),
    ("stripe.csv", "relative"),
    ("reports/stripe.csv", "relative"),
    ("", "empty"),
    ("/srv/reports/x.csv\x00.txt", "control characters"),
    ("/srv/reports/x\n.csv", "control characters"),
    ("/srv/reports/\udc80.csv", "control characters"),
    ("/srv/reports/" + "a" * 5000, "longer than 4096 bytes"),
    ("file:///srv/reports/stripe.csv", "only s3:// URIs"),
    ("http://127.0.0.1/report.csv", "only s3:// URIs"),
    ("S3://bucket/key", "only s3:// URIs"),
])
def test_anything_else_is_refused_saying_how_to_offer_a_report(source, why):
    with pytest.raises(SourceRefused) as refused:
        confine(source, FOLDER)

    message = str(refused.value)
    assert why in message
    assert "multipart field 'report'" in message and "s3://bucket/key" in message and str(FOLDER) in message


def test_without_a_folder_no_local_path_is_allowed():
    with pytest.raises(SourceRefused) as refused:
        confine("/srv/reports/stripe.csv", None)

    assert "CONVEYOR_REPORT_DIR" in str(refused.value) and "multipart field 'report'" in str(refused.value)


def test_within_compares_whole_path_components():
    assert is_within(PurePosixPath("/srv/reports/a/b.csv"), FOLDER)
    assert not is_within(PurePosixPath("/srv/reports"), FOLDER)
    assert not is_within(PurePosixPath("/srv/reportsx/b.csv"), FOLDER)
    assert not is_within(PurePosixPath("/srv/b.csv"), FOLDER)


@pytest.mark.parametrize(("uri", "bucket", "key"), [
    ("s3://settlements/stripe/2026-10.csv", "settlements", "stripe/2026-10.csv"),
    ("s3://my.bucket-1/a?b#c.csv", "my.bucket-1", "a?b#c.csv"),  # a key is taken as written
])
def test_an_s3_uri_names_a_bucket_and_a_key(uri, bucket, key):
    assert s3_location(uri) == (bucket, key)


@pytest.mark.parametrize("uri", [
    "s3://",
    "s3://bucket",
    "s3://bucket/",
    "s3://Bucket/key.csv",
    "s3://b/key.csv",
    "s3://user:secret@bucket/key.csv",
    "s3://bucket:443/key.csv",
    "s3://bucket..name/key.csv",
    "s3://-bucket/key.csv",
    "s3://bucket/key\r\n.csv",
    "s3://bucket/" + "k" * 1025,
])
def test_a_malformed_s3_uri_is_refused_saying_what_one_looks_like(uri):
    with pytest.raises(SourceRefused, match="s3://bucket/path/to/report.csv"):
        s3_location(uri)


@pytest.mark.parametrize(("filename", "recorded"), [
    ("stripe.csv", "upload:stripe.csv"),
    ("../../etc/passwd", "upload:passwd"),
    ("C:\\Users\\me\\adyen.csv", "upload:adyen.csv"),
    ("a\r\nb\x00c\u202e.csv", "upload:abc.csv"),
    ("", "upload:report.csv"),
    (None, "upload:report.csv"),
    ("/", "upload:report.csv"),
])
def test_an_upload_is_recorded_by_a_plain_base_name(filename, recorded):
    assert upload_source(filename) == recorded


def test_an_upload_name_is_bounded():
    assert upload_source("x" * 10_000) == "upload:" + "x" * MAX_UPLOAD_NAME


def test_an_error_is_described_without_credentials_statements_or_secrets(monkeypatch):
    monkeypatch.setenv("CONSOLE_ADMIN_TOKEN", "admin-token-value")
    monkeypatch.setenv("DATABASE_URL", "postgresql://conveyor:p%40ss-word@db.internal:5432/conveyor")

    class OperationalError(Exception):
        pass

    error = OperationalError(
        "connection to postgresql://conveyor:hunter22@db:5432/x failed; password=other-secret sslmode=require;"
        " token admin-token-value; password p@ss-word refused\n[SQL: SELECT :p]\n[parameters: {'p': 'row data'}]"
        "\n(Background on this error at: https://sqlalche.me/e/20/e3q8)")

    described = describe_error(error)

    assert described.startswith("OperationalError: connection to postgresql://conveyor:***@db:5432/x failed")
    for secret in ("hunter22", "other-secret", "admin-token-value", "p@ss-word", "row data", "SELECT", "sqlalche.me"):
        assert secret not in described
    assert len(describe_error(RuntimeError("x" * 10_000))) == 500


def test_a_failure_is_logged_with_its_frames_but_without_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    stream = io.StringIO()
    logger = Logger(service="test", logger_handler=logging.StreamHandler(stream))

    def failing() -> None:
        raise RuntimeError("refused with " + os.environ["AWS_SECRET_ACCESS_KEY"])

    try:
        failing()
    except RuntimeError as exc:
        log_failure(logger, "job failed", exc, run_id="r-1")

    line = json.loads(stream.getvalue())
    assert line["message"] == "job failed" and line["run_id"] == "r-1"
    assert line["error"] == "RuntimeError: refused with ***" and "in failing" in line["stack"]
    assert "aws-secret-value" not in stream.getvalue()
