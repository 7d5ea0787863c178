"""The console reads a report only from an upload, an s3:// URI, or a file under its report folder.

Each refusal is a 4xx that says how to offer a report and quotes nothing of the file it was pointed at.
"""
from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conveyor.reconciliation.sources import SourceUnreadable, open_offered_source
from support import console_run, eventually
from test_console_api import AUTH, REPORT, client, recon_database, runs_lock, services  # noqa: F401 - fixtures

HOW_TO_OFFER = ("multipart field 'report'", "s3://bucket/")
SECRET = f"secret-marker-{uuid.uuid4().hex}"


@pytest.fixture
def reports(services, monkeypatch, tmp_path) -> Path:  # noqa: F811 - the fixture imported above
    """The console's report folder; set before the first request builds the service."""
    folder = tmp_path / "reports"
    folder.mkdir()
    monkeypatch.setenv("CONVEYOR_REPORT_DIR", str(folder))
    return folder


@pytest.fixture
def secret_file(tmp_path) -> Path:
    """A file outside the report folder, as the service's own secrets are (.conveyor/demo-api-key, say)."""
    path = tmp_path / "demo-api-key"
    path.write_text(f"reference,currency,amount\n{SECRET},USD,1.00\n")
    return path


@pytest.fixture
def data_directory(recon_database) -> Path:  # noqa: F811
    """The PostgreSQL server's own data folder."""
    return Path(recon_database.fetch_json("SELECT to_json(current_setting('data_directory'))::text"))


def post_source(client, source: str, **fields):  # noqa: F811
    return client.post("/api/reconciliations", headers=AUTH, json={"source": source, **fields})


def assert_refused(answer, *absent: str) -> dict:
    assert 400 <= answer.status_code < 500, answer.get_data(as_text=True)
    body = answer.get_data(as_text=True)
    for content in absent:
        assert content not in body
    error = answer.get_json()["error"]
    assert error["code"] in ("source_refused", "source_not_found"), error
    assert all(words in error["message"] for words in HOW_TO_OFFER), error["message"]
    return error


def environment_values() -> list[str]:
    """Distinctive values of this process's environment as /proc/self/environ holds it."""
    entries = Path("/proc/self/environ").read_bytes().split(b"\0")
    return [entry.decode(errors="replace") for entry in entries if len(entry) >= 12]


def test_the_service_environment_is_not_read(client, reports):  # noqa: F811
    for source in ("/proc/self/environ", f"{reports}/../../../../../../proc/self/environ", "/proc/1/environ"):
        assert_refused(post_source(client, source), *environment_values())
    # Even as the generic format through a mapping that would accept any header.
    answer = post_source(client, "/proc/self/environ", format="generic", columns={"reference": "PATH"})
    assert_refused(answer, *environment_values())


def test_system_files_and_the_service_secrets_are_not_read(client, reports, secret_file):  # noqa: F811
    assert_refused(post_source(client, "/etc/passwd"), "root:x:0:0")
    assert_refused(post_source(client, str(secret_file)), SECRET)
    assert_refused(post_source(client, f"{reports}/../{secret_file.name}"), SECRET)
    assert_refused(post_source(client, f"{reports}/../../{secret_file.parent.name}/{secret_file.name}"), SECRET)


def test_symlinks_and_hard_links_out_of_the_folder_are_not_followed(client, reports, secret_file):  # noqa: F811
    (reports / "passwd.csv").symlink_to("/etc/passwd")
    (reports / "key.csv").symlink_to(secret_file)
    (reports / "environ.csv").symlink_to("/proc/self/environ")
    (reports / "up").symlink_to(reports.parent, target_is_directory=True)
    os.link(secret_file, reports / "linked.csv")

    assert_refused(post_source(client, str(reports / "passwd.csv")), "root:x:0:0")
    assert_refused(post_source(client, str(reports / "key.csv")), SECRET)
    assert_refused(post_source(client, str(reports / "environ.csv")), *environment_values())
    assert_refused(post_source(client, str(reports / "up" / secret_file.name)), SECRET)
    error = assert_refused(post_source(client, str(reports / "linked.csv")), SECRET)
    assert "hard links" in error["message"]


def test_the_database_files_are_not_read(client, reports, data_directory):  # noqa: F811
    configuration = (data_directory / "postgresql.conf").read_text()
    distinctive = [line for line in configuration.splitlines() if len(line) > 20 and not line.startswith("#")]
    (reports / "pg.conf").symlink_to(data_directory / "postgresql.conf")

    assert_refused(post_source(client, str(data_directory / "postgresql.conf")), *distinctive)
    assert_refused(post_source(client, str(reports / "pg.conf")), *distinctive)
    assert_refused(post_source(client, str(data_directory / "PG_VERSION")))
    assert_refused(post_source(client, str(data_directory / "global" / "pg_control")))


def test_only_regular_files_are_read(client, reports):  # noqa: F811
    (reports / "folder").mkdir()
    os.mkfifo(reports / "fifo.csv")  # opening it must not wait for a writer
    (reports / "zero.csv").symlink_to("/dev/zero")

    for source in (reports, reports / "folder", reports / "fifo.csv", reports / "zero.csv", "/dev/zero"):
        error = assert_refused(post_source(client, str(source)))
        assert error["code"] == "source_refused"
    assert "not a regular file" in assert_refused(post_source(client, str(reports / "fifo.csv")))["message"]


@pytest.mark.parametrize("source", [
    "report.csv",
    "reports/report.csv",
    "./report.csv",
    "~/report.csv",
    "REPORTS/report.csv\x00.txt",
    "REPORTS/" + "a" * 5000,
    "REPORTS/" + "a" * 300 + "/report.csv",
    "file://REPORTS/report.csv",
    "file:///etc/passwd",
    "http://127.0.0.1:1/report.csv",
    "S3://settlements/report.csv",
    "s3://Not_A_Bucket/report.csv",
    "s3://user:password@settlements/report.csv",
])
def test_relative_odd_and_other_scheme_sources_are_refused(client, reports, source):  # noqa: F811
    (reports / "report.csv").write_bytes(REPORT)

    error = assert_refused(post_source(client, source.replace("REPORTS", str(reports))), "pi_console_1")

    assert error["code"] == "source_refused"
    assert "a" * 300 not in error["message"]  # the caller's own path is not echoed back either


def test_without_a_report_folder_no_local_path_is_read(client, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.delenv("CONVEYOR_REPORT_DIR")
    path = tmp_path / "report.csv"
    path.write_bytes(REPORT)

    for source in (str(path), "/etc/passwd", "/proc/self/environ"):
        error = assert_refused(post_source(client, source), "pi_console_1", "root:x:0:0", *environment_values())
        assert error["code"] == "source_refused" and "CONVEYOR_REPORT_DIR" in error["message"]
    uploaded = client.post("/api/reconciliations", headers=AUTH, data={"report": (io.BytesIO(REPORT), "stripe.csv")})
    assert uploaded.status_code == 202


def test_a_report_folder_that_is_not_one_makes_the_api_say_what_to_fix(client, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("CONVEYOR_REPORT_DIR", str(tmp_path / "missing"))

    answer = client.get("/readyz")

    assert answer.status_code == 503 and "CONVEYOR_REPORT_DIR" in answer.get_json()["error"]["message"]


def test_a_file_in_the_folder_is_reconciled_through_any_path_that_stays_inside(client, reports):  # noqa: F811
    (reports / "2026").mkdir()
    (reports / "2026" / "october.csv").write_bytes(REPORT)
    (reports / "latest.csv").symlink_to(reports / "2026" / "october.csv")

    started = post_source(client, str(reports / "2026" / "october.csv"))
    assert started.status_code == 202, started.get_json()
    run = console_run(client, started.headers["Location"], AUTH)
    assert run["status"] == "COMPLETED" and run["counts"]["matched"] == 1
    assert run["source"] == str(reports / "2026" / "october.csv")
    for alias in (reports / "latest.csv", f"{reports}/2026/../2026/october.csv"):
        again = post_source(client, str(alias))
        assert again.status_code == 200 and again.get_json()["id"] == run["id"]

    missing = post_source(client, str(reports / "november.csv"))
    assert missing.status_code == 400 and missing.get_json()["error"]["code"] == "source_not_found"


def test_a_run_reads_the_file_it_checked_even_when_it_is_swapped_for_a_symlink_meanwhile(
        client, reports, secret_file, runs_lock, tmp_path):  # noqa: F811
    path = reports / "october.csv"
    path.write_bytes(REPORT)
    started = post_source(client, str(path))  # queued behind the lock held by another run
    assert started.status_code == 202

    path.unlink()
    path.symlink_to(secret_file)
    runs_lock.release()

    run = console_run(client, started.headers["Location"], AUTH)
    assert run["status"] == "COMPLETED" and run["counts"]["matched"] == 1 and SECRET not in json.dumps(run)
    eventually(lambda: list((tmp_path / "spool").iterdir()) == [], what="the copy being removed after the run")


def test_a_report_of_unknown_layout_in_the_folder_is_refused_without_quoting_it(client, reports):  # noqa: F811
    (reports / "notes.csv").write_text(f"{SECRET},and,more\n1,2,3\n")

    answer = post_source(client, str(reports / "notes.csv"))

    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "invalid_report"
    assert SECRET not in answer.get_data(as_text=True)
    assert "cannot tell the report's format" in answer.get_json()["error"]["message"]


def test_an_upload_name_is_recorded_plainly_and_never_used_as_a_path(client, tmp_path):  # noqa: F811
    hostile = "../../../etc/passwd\tX-Injected: 1\x00\u202e" + "n" * 1000 + ".csv"  # CR LF would break the form

    started = client.post("/api/reconciliations", headers=AUTH, data={"report": (io.BytesIO(REPORT), hostile)})

    assert started.status_code == 202
    source = console_run(client, started.headers["Location"], AUTH)["source"]
    assert source.startswith("upload:passwdX-Injected: 1") and len(source) <= len("upload:") + 255
    assert "/" not in source and source.isprintable()


def test_an_s3_failure_is_said_by_its_code_without_echoing_what_s3_or_the_request_held():
    class RefusingS3:
        def get_object(self, **_):
            raise ClientError({"Error": {"Code": "SignatureDoesNotMatch", "Message": f"StringToSign {SECRET}"}},
                              "GetObject")

    with pytest.raises(SourceUnreadable) as unreadable:
        open_offered_source("s3://settlements/stripe.csv", None, s3_client=RefusingS3())

    assert "SignatureDoesNotMatch" in str(unreadable.value) and SECRET not in str(unreadable.value)


def test_an_unreachable_s3_is_a_4xx_without_the_credentials(client, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")

    answer = post_source(client, "s3://settlements/stripe.csv")

    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "source_unreadable"
    assert SECRET not in answer.get_data(as_text=True) and "AKIAEXAMPLE" not in answer.get_data(as_text=True)


# The console's other inputs: checked for type and size, and not echoed back.

@pytest.mark.parametrize(("fields", "words"), [
    ({"format": ["stripe"]}, "unknown format"),
    ({"format": "x" * 10_000}, "unknown format"),
    ({"cutoff": "y" * 10_000}, "ISO 8601"),
    ({"cutoff": {"year": 2026}}, "ISO 8601"),
    ({"cutoff": 20261031}, "ISO 8601"),
    ({"columns": ["reference"]}, "columns must be"),
    ({"columns": {"reference": 7}}, "columns must be"),
    ({"columns": {"reference": ""}}, "columns must be"),
    ({"columns": {"reference": "c" * 10_000}}, "columns must be"),
    ({"columns": {"reference": "Order\nRef"}}, "columns must be"),
    ({"columns": {f"field{number}": "x" for number in range(1000)}}, "columns must be"),
    ({"columns": "[" * 100_000}, "columns must be"),
])
def test_other_fields_are_checked_for_type_and_size_and_not_echoed(client, reports, fields, words):  # noqa: F811
    (reports / "report.csv").write_bytes(REPORT)

    answer = post_source(client, str(reports / "report.csv"), **fields)

    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "invalid_report"
    assert words in answer.get_json()["error"]["message"]
    assert len(answer.get_data()) < 1000


def test_columns_as_multipart_text_are_checked_like_json(client):  # noqa: F811
    answer = client.post("/api/reconciliations", headers=AUTH, data={
        "report": (io.BytesIO(REPORT), "bank.csv"), "columns": json.dumps({"reference": "c" * 10_000})})

    assert answer.status_code == 400 and "columns must be" in answer.get_json()["error"]["message"]
    assert len(answer.get_data()) < 1000


@pytest.mark.parametrize("run_id", [
    "not-a-run", "../../etc/passwd", "x" * 5000, "{" + str(uuid.uuid4()) + "}",
    f"urn:uuid:{uuid.uuid4()}", uuid.uuid4().hex, "%00",
])
def test_a_run_id_that_is_not_one_is_404_without_echoing_it(client, run_id):  # noqa: F811
    for answer in (client.get(f"/api/reconciliations/{run_id}", headers=AUTH),
                   client.get(f"/api/reconciliations/{run_id}/discrepancies", headers=AUTH),
                   client.post(f"/api/reconciliations/{run_id}/restart", headers=AUTH)):
        assert answer.status_code == 404
        assert run_id not in answer.get_data(as_text=True)


@pytest.mark.parametrize("query", [
    "after=-1", "after=1e3", "after=%20 1", "after=99999999999999999999", "after=9223372036854775808",
    "limit=0", "limit=-5", "limit=abc", "limit=" + "9" * 5000, "limit=1_000",
])
def test_page_parameters_are_whole_numbers_in_range(client, query):  # noqa: F811
    location = client.post("/api/reconciliations", headers=AUTH,
                           data={"report": (io.BytesIO(REPORT), "stripe.csv")}).headers["Location"]
    console_run(client, location, AUTH)

    answer = client.get(f"{location}/discrepancies?{query}", headers=AUTH)

    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "validation_error"
    assert len(answer.get_data()) < 1000
    assert client.get(f"{location}/discrepancies?after=9223372036854775807&limit=5000", headers=AUTH).status_code == 200


def test_an_unexpected_failure_answers_500_and_logs_no_secret(client, services, monkeypatch, caplog):  # noqa: F811
    def failing(*_args, **_kwargs):
        raise RuntimeError(f"driver said: password={SECRET} for postgresql://conveyor:{SECRET}@db/conveyor")

    monkeypatch.setattr(services.runs, "start", failing)

    answer = client.post("/api/reconciliations", headers=AUTH, data={"report": (io.BytesIO(REPORT), "stripe.csv")})

    assert answer.status_code == 500 and SECRET not in answer.get_data(as_text=True)
    [logged] = [record for record in caplog.records if record.getMessage() == "request failed"]
    assert "driver said" in logged.error and "in failing" in logged.stack
    assert SECRET not in repr(vars(logged))
