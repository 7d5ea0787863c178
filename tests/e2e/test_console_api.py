"""The console's HTTP API through Flask's test client, against a real PostgreSQL (and moto's S3)."""
from __future__ import annotations

import io
import uuid
from pathlib import Path

import boto3
import psycopg
import pytest
from moto import mock_aws

from conveyor.adapters.database import Database
from conveyor.console.app import Services, create_app
from conveyor.console.settings import DatabaseSettings
from conveyor_tools.local.database import libpq_url
from conveyor.reconciliation import engine
from conveyor.reconciliation.engine import CATEGORIES
from conveyor.reconciliation.service import ReconciliationService, direct_connection
from conveyor.reconciliation.sources import open_source, spool
from support import console_run, eventually

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPORT = (
    "\ufeffbalance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,charge_id,payment_intent_id\r\n"
    "txn_1,2026-10-02 09:00:00,usd,12.50,0.66,11.84,charge,ch_1,pi_console_1\r\n"
    "txn_2,2026-10-02 09:05:00,usd,5.00,0.45,4.55,charge,ch_2,pi_nobody\r\n"
).encode()


@pytest.fixture
def recon_database(database: Database) -> Database:
    client_id = str(uuid.uuid4())
    database.execute("INSERT INTO clients (id, name, api_key_hash) VALUES (CAST(:id AS uuid), :id, :id)", {"id": client_id})
    database.execute(
        "INSERT INTO orders (id, client_id, status, currency, total_amount, payment_provider, payment_reference,"
        " payment_amount, created_at) VALUES (gen_random_uuid(), CAST(:client AS uuid), 'CONFIRMED', 'USD', 1250,"
        " 'stripe', 'pi_console_1', 1250, '2026-10-01T00:00:00Z')",
        {"client": client_id},
    )
    return database


@pytest.fixture
def services(recon_database, database_url, monkeypatch, tmp_path):
    monkeypatch.setenv("CONSOLE_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("CONVEYOR_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("CONVEYOR_REPORT_DIR", str(tmp_path))  # local paths are read only under it
    built = Services(lambda: DatabaseSettings(direct_url=database_url))
    yield built
    built.drain(10)


@pytest.fixture
def client(services):
    return create_app(services).test_client()


def wait_completed(client, location: str) -> dict:
    return console_run(client, location, AUTH)


def test_health_answers_without_a_database_and_readiness_says_what_is_missing():
    client = create_app(Services(lambda: DatabaseSettings(None, None))).test_client()

    assert client.get("/healthz").get_json() == {"status": "ok"}
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert "DATABASE_URL" in not_ready.get_json()["error"]["message"]


def test_readiness_with_a_database(client):
    assert client.get("/readyz").get_json() == {"status": "ready"}


def test_the_api_needs_a_token(client, monkeypatch):
    assert client.get(f"/api/reconciliations/{uuid.uuid4()}").status_code == 401
    assert client.get(f"/api/reconciliations/{uuid.uuid4()}", headers={"Authorization": "Bearer nope"}).status_code == 401
    monkeypatch.delenv("CONSOLE_ADMIN_TOKEN")
    unset = client.get(f"/api/reconciliations/{uuid.uuid4()}", headers=AUTH)
    assert unset.status_code == 401 and "API token" in unset.get_json()["error"]["message"]


def test_an_upload_is_reconciled_in_the_background_and_the_same_upload_gives_the_same_run(client, tmp_path):
    started = client.post("/api/reconciliations", headers=AUTH,
                          data={"report": (io.BytesIO(REPORT), "stripe.csv")}, content_type="multipart/form-data")

    assert started.status_code == 202
    assert started.headers["Location"] == f"/api/reconciliations/{started.get_json()['id']}"
    run = wait_completed(client, started.headers["Location"])
    assert run["status"] == "COMPLETED", run["error"]
    assert (run["rows_loaded"], run["rows_classified"]) == (2, 2)
    assert run["counts"]["matched"] == 1 and run["counts"]["unknown_payment"] == 1
    assert run["totals"] == {"USD": {"gross": 1750, "fees": 111, "net": 1639, "payouts": 0}}
    # The spooled upload goes once its run has finished: the job removes it just after the commit.
    eventually(lambda: list((tmp_path / "spool").iterdir()) == [], what="the spooled upload being removed")

    again = client.post("/api/reconciliations", headers=AUTH,
                        data={"report": (io.BytesIO(REPORT), "renamed.csv")}, content_type="multipart/form-data")
    assert again.status_code == 200 and again.get_json()["id"] == run["id"]

    unknown = client.get(f"{run['links']['discrepancies']}?category=unknown_payment", headers=AUTH).get_json()
    assert [d["payment_reference"] for d in unknown["discrepancies"]] == ["pi_nobody"]


def test_a_local_path_source(client, tmp_path):
    path = tmp_path / "report.csv"
    path.write_bytes(REPORT)

    started = client.post("/api/reconciliations", headers=AUTH, json={"source": str(path), "format": "stripe"})

    assert started.status_code == 202
    assert wait_completed(client, started.headers["Location"])["counts"]["matched"] == 1


def test_an_s3_source(client, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="settlements")
        s3.put_object(Bucket="settlements", Key="stripe/2026-10.csv", Body=REPORT)

        started = client.post("/api/reconciliations", headers=AUTH, json={"source": "s3://settlements/stripe/2026-10.csv"})
        missing = client.post("/api/reconciliations", headers=AUTH, json={"source": "s3://settlements/nope.csv"})

    assert started.status_code == 202, started.get_json()
    run = wait_completed(client, started.headers["Location"])
    assert run["source"] == "s3://settlements/stripe/2026-10.csv" and run["counts"]["matched"] == 1
    assert missing.status_code == 400 and missing.get_json()["error"]["code"] == "source_not_found"


@pytest.mark.parametrize(("body", "code", "words"), [
    ({"nothing": 1}, "invalid_report", "source"),
    ({"source": "MISSING"}, "source_not_found", "no such file"),
    ({"source": "/no/such/report.csv"}, "source_refused", "outside the report folder"),
    ({"source": "PLACEHOLDER", "format": "paypal"}, "invalid_report", "unknown format"),
    ({"source": "PLACEHOLDER", "cutoff": "yesterday"}, "invalid_report", "ISO 8601"),
    ({"source": "PLACEHOLDER", "cutoff": "2026-10-31T00:00:00"}, "invalid_report", "time zone"),
    ({"source": "PLACEHOLDER", "timezone": "Mars/Olympus"}, "invalid_report", "IANA time zone"),
    ({"source": "PLACEHOLDER", "timezone": 5}, "invalid_report", "IANA time zone name"),
])
def test_bad_requests_say_what_to_send(client, tmp_path, body, code, words):
    path = tmp_path / "report.csv"
    path.write_bytes(REPORT)
    named = {"PLACEHOLDER": str(path), "MISSING": str(tmp_path / "missing.csv")}
    body = {key: named.get(value, value) for key, value in body.items()}

    answer = client.post("/api/reconciliations", headers=AUTH, json=body)

    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == code
    assert words in answer.get_json()["error"]["message"]


def test_a_time_zone_places_a_reports_local_times_in_json_and_in_a_form(client, tmp_path):
    local_times = (Path(__file__).parent.parent / "fixtures" / "settlement" / "stripe_itemized_local_times.csv").read_bytes()
    path = tmp_path / "local.csv"
    path.write_bytes(local_times)

    refused = client.post("/api/reconciliations", headers=AUTH, json={"source": str(path)})
    by_path = client.post("/api/reconciliations", headers=AUTH, json={"source": str(path), "timezone": "America/New_York"})
    uploaded = client.post("/api/reconciliations", headers=AUTH, content_type="multipart/form-data",
                           data={"report": (io.BytesIO(local_times), "local.csv"), "timezone": "Europe/Berlin"})

    assert refused.status_code == 400 and "\"timezone\" in the API" in refused.get_json()["error"]["message"]
    in_new_york = wait_completed(client, by_path.headers["Location"])
    in_berlin = wait_completed(client, uploaded.headers["Location"])
    assert in_new_york["timezone"] == "America/New_York" and in_new_york["cutoff"].startswith("2026-11-01T07:00:00")
    assert in_berlin["timezone"] == "Europe/Berlin" and in_berlin["cutoff"].startswith("2026-11-01T01:00:00")
    assert in_new_york["unmapped_types"] == {"gift_card_sale": 1}
    assert in_new_york["inconsistent_rows"]["lines"] == [4]


def test_a_report_of_unknown_layout_is_refused_before_any_run(client):
    answer = client.post("/api/reconciliations", headers=AUTH,
                         data={"report": (io.BytesIO(b"a,b,c\n1,2,3\n"), "x.csv")}, content_type="multipart/form-data")

    assert answer.status_code == 400 and "--format" in answer.get_json()["error"]["message"]


def test_an_unknown_run_is_404(client):
    assert client.get(f"/api/reconciliations/{uuid.uuid4()}", headers=AUTH).status_code == 404
    assert client.get("/api/reconciliations/not-a-uuid", headers=AUTH).status_code == 404


def test_a_draining_service_refuses_new_runs_and_finishes_running_ones(client, services, tmp_path):
    path = tmp_path / "report.csv"
    path.write_bytes(REPORT)
    started = client.post("/api/reconciliations", headers=AUTH, json={"source": str(path)})

    assert services.drain(15) is True
    assert client.get(started.headers["Location"], headers=AUTH).get_json()["status"] == "COMPLETED"
    refused = client.post("/api/reconciliations", headers=AUTH, json={"source": str(path)})
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "shutting_down"


# Runs orphaned by a dead process, the restart route, and a drain that loses nothing.

@pytest.fixture
def runs_lock(database_url):
    """Another run holding the lock every run takes: runs wait behind it until `release()`."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as session:
        session.execute("SELECT pg_advisory_lock(%s, %s)", (engine.LOCK_CLASS, engine.ALL_RUNS_LOCK_KEY))

        class Lock:
            @staticmethod
            def release() -> None:
                session.execute("SELECT pg_advisory_unlock_all()")

        yield Lock


def left_by_a_dead_process(database: Database, report, status: str = "LOADING", seconds_ago: int = 3600) -> str:
    """A run as a process killed mid-run leaves it: unfinished, and held by nobody."""
    run_id = ReconciliationService(database, lambda: direct_connection(database.engine)).submit(report)["id"]
    database.execute("UPDATE reconciliation_runs SET status = :status, updated_at = now() - make_interval(secs => :age)"
                     " WHERE id = CAST(:id AS uuid)", {"id": run_id, "status": status, "age": seconds_ago})
    return run_id



def test_a_run_orphaned_by_a_dead_process_is_recovered_when_the_service_starts(recon_database, services, tmp_path):
    path = tmp_path / "report.csv"
    path.write_bytes(REPORT)
    run_id = left_by_a_dead_process(recon_database, open_source(str(path)))
    assert ReconciliationService(recon_database, lambda: direct_connection(recon_database.engine)).get(run_id)["orphaned"] is True

    services.start().join(10)  # what a gunicorn worker does when it starts
    assert services.runs.recovered.wait(15)

    run = wait_completed(create_app(services).test_client(), f"/api/reconciliations/{run_id}")
    assert run["status"] == "COMPLETED" and run["orphaned"] is False and run["counts"]["matched"] == 1


def test_restart_executes_an_orphaned_run_and_says_why_when_it_cannot(client, services, recon_database, tmp_path):
    assert client.get("/readyz").status_code == 200 and services.runs.recovered.wait(15)  # started, recovered
    path = tmp_path / "report.csv"
    path.write_bytes(REPORT)
    orphaned = left_by_a_dead_process(recon_database, open_source(str(path)))
    assert client.get(f"/api/reconciliations/{orphaned}", headers=AUTH).get_json()["orphaned"] is True

    restarted = client.post(f"/api/reconciliations/{orphaned}/restart", headers=AUTH)

    assert restarted.status_code == 202, restarted.get_json()
    assert restarted.headers["Location"] == f"/api/reconciliations/{orphaned}"
    assert restarted.get_json()["orphaned"] is False
    assert wait_completed(client, restarted.headers["Location"])["status"] == "COMPLETED"
    completed = client.post(f"/api/reconciliations/{orphaned}/restart", headers=AUTH)
    assert completed.status_code == 409 and completed.get_json()["error"]["code"] == "already_completed"

    gone = spool(io.BytesIO(REPORT.replace(b"pi_nobody", b"pi_gone")), "upload:gone.csv")
    lost_upload = left_by_a_dead_process(recon_database, gone)
    gone.discard()  # it was on the disk of a task that is gone
    unavailable = client.post(f"/api/reconciliations/{lost_upload}/restart", headers=AUTH)
    assert unavailable.status_code == 409
    assert unavailable.get_json()["error"]["code"] == "report_unavailable"
    assert "Upload the report again" in unavailable.get_json()["error"]["message"]

    assert client.post(f"/api/reconciliations/{uuid.uuid4()}/restart", headers=AUTH).status_code == 404
    assert client.post("/api/reconciliations/not-a-run/restart", headers=AUTH).status_code == 404
    assert client.post(f"/api/reconciliations/{orphaned}/restart").status_code == 401


def test_restart_of_a_run_queued_in_this_service_is_409(client, runs_lock):
    started = client.post("/api/reconciliations", headers=AUTH,
                          data={"report": (io.BytesIO(REPORT), "stripe.csv")}, content_type="multipart/form-data")

    in_progress = client.post(f"{started.headers['Location']}/restart", headers=AUTH)

    assert in_progress.status_code == 409 and in_progress.get_json()["error"]["code"] == "run_in_progress"
    runs_lock.release()
    assert wait_completed(client, started.headers["Location"])["status"] == "COMPLETED"


def test_a_drained_service_leaves_its_uploads_for_the_next_start_which_executes_them(
        client, services, runs_lock, database_url, tmp_path):
    other_report = REPORT.replace(b"pi_nobody", b"pi_nobody_else")
    locations = [client.post("/api/reconciliations", headers=AUTH, data={"report": (io.BytesIO(content), name)},
                             content_type="multipart/form-data").headers["Location"]
                 for content, name in ((REPORT, "one.csv"), (other_report, "two.csv"))]
    run_ids = [location.rsplit("/", 1)[1] for location in locations]
    service = services.runs.service
    eventually(lambda: service.holders(run_ids[0])["executing"], what="the first run waiting for its turn")

    assert services.drain(0.2) is False  # SIGTERM: one run waits, one never started
    runs_lock.release()
    eventually(lambda: all(service.get(run_id)["orphaned"] for run_id in run_ids), what="both runs let go")
    assert {path.name for path in (tmp_path / "spool").iterdir()} == {f"run-{run_id}.csv" for run_id in run_ids}
    assert [service.get(run_id)["status"] for run_id in run_ids] == ["QUEUED", "QUEUED"]

    next_start = Services(lambda: DatabaseSettings(direct_url=database_url))
    try:
        next_start.start().join(10)
        assert next_start.runs.recovered.wait(15)
        next_client = create_app(next_start).test_client()
        assert [wait_completed(next_client, location)["status"] for location in locations] == ["COMPLETED"] * 2
    finally:
        assert next_start.drain(15) is True
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_run_shows_its_categories_and_totals_in_the_documented_order(client, tmp_path):
    location = client.post("/api/reconciliations", headers=AUTH,
                           data={"report": (io.BytesIO(REPORT), "stripe.csv")}).headers["Location"]
    run = wait_completed(client, location)

    assert list(run["counts"]) == list(CATEGORIES)
    assert all(list(amounts) == ["gross", "fees", "net", "payouts"] for amounts in run["totals"].values())
