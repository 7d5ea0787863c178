"""The console configured for the RDS Data API only, against the local Data API endpoint.

Its settings come from the environment, as on Fargate. Runs are submitted, executed (one
Data API transaction, records loaded with BatchExecuteStatement) and read through the Data API.
"""
from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from conveyor.adapters.database import Database
from conveyor.console.app import Services, create_app
from conveyor.console.settings import DatabaseSettings
from conveyor.dataapi.client import DataApiDatabase
from conveyor_tools.dataapi.server import LocalDataApi
from conveyor_tools.local.stack import LOCAL_CLUSTER_ARN, LOCAL_SECRET_ARN
from support import console_run

pytestmark = pytest.mark.e2e

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPORT = (
    b"balance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,charge_id,payment_intent_id\r\n"
    b"txn_1,2026-10-02 09:00:00,usd,12.50,0.66,11.84,charge,ch_1,pi_data_api_1\r\n"
    b"txn_2,2026-10-02 09:05:00,usd,5.00,0.45,4.55,charge,ch_2,pi_nobody_1\r\n"
    b"txn_3,2026-10-02 09:10:00,eur,7.00,0.30,6.70,charge,ch_3,pi_nobody_2\r\n"
    b"txn_4,2026-10-02 09:15:00,usd,9.99,0.40,9.59,charge,ch_4,pi_data_api_2\r\n"
)


@pytest.fixture
def recon_database(database: Database) -> Database:
    """Two CONFIRMED Stripe orders: one the report settles exactly, one for a different amount."""
    client_id = str(uuid.uuid4())
    database.execute("INSERT INTO clients (id, name, api_key_hash) VALUES (CAST(:id AS uuid), :id, :id)", {"id": client_id})
    for reference, amount in (("pi_data_api_1", 1250), ("pi_data_api_2", 1000)):
        database.execute(
            "INSERT INTO orders (id, client_id, status, currency, total_amount, payment_provider, payment_reference,"
            " payment_amount, created_at) VALUES (gen_random_uuid(), CAST(:client AS uuid), 'CONFIRMED', 'USD',"
            " :amount, 'stripe', :reference, :amount, '2026-10-01T00:00:00Z')",
            {"client": client_id, "reference": reference, "amount": amount},
        )
    return database


@pytest.fixture
def data_api_environment(data_api_endpoint: LocalDataApi, database_url: str, monkeypatch, tmp_path) -> LocalDataApi:
    """Only the Data API's variables, as the API and the worker get them."""
    data_api_endpoint.resume()
    for name in ("DATABASE_URL", "DATABASE_SECRET_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_API_RESOURCE_ARN", LOCAL_CLUSTER_ARN)
    monkeypatch.setenv("DATA_API_SECRET_ARN", LOCAL_SECRET_ARN)
    monkeypatch.setenv("DATA_API_DATABASE", make_url(database_url).database)
    monkeypatch.setenv("DATA_API_RETRY_BUDGET_SECONDS", "10")
    monkeypatch.setenv("CONSOLE_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("CONVEYOR_SPOOL_DIR", str(tmp_path / "spool"))
    return data_api_endpoint


@pytest.fixture
def services(data_api_environment, recon_database) -> Iterator[Services]:
    built = Services()  # the console's own settings, read from the environment
    yield built
    built.drain(10)


@pytest.fixture
def client(services):
    return create_app(services).test_client()


def upload(client, report: bytes = REPORT):
    return client.post("/api/reconciliations", headers=AUTH, data={"report": (io.BytesIO(report), "stripe.csv")},
                       content_type="multipart/form-data")


def test_the_console_is_ready_through_the_data_api(client, services, data_api_environment):
    before = data_api_environment.calls

    assert client.get("/readyz").get_json() == {"status": "ready"}

    assert isinstance(services.runs.service.database, DataApiDatabase)
    # One autocommitted ExecuteStatement: no BeginTransaction, no Commit or Rollback.
    assert data_api_environment.calls - before == {"ExecuteStatement": 1}


def test_readiness_waits_for_a_paused_cluster_within_the_retry_budget(client, data_api_environment):
    data_api_environment.pause(resume_seconds=1.0)
    try:
        started = time.monotonic()
        assert client.get("/readyz").get_json() == {"status": "ready"}
        assert time.monotonic() - started >= 1.0
    finally:
        data_api_environment.resume()


def test_a_submitted_report_is_committed_and_read_back(client, recon_database):
    submitted = upload(client)

    assert submitted.status_code == 202, submitted.get_json()
    run = submitted.get_json()
    assert run["status"] == "QUEUED" and run["format"] == "stripe" and run["source"] == "upload:stripe.csv"
    read = client.get(submitted.headers["Location"], headers=AUTH)
    assert read.status_code == 200
    assert {key: read.get_json()[key] for key in ("id", "source", "format", "content_sha256", "created_at")} == \
        {key: run[key] for key in ("id", "source", "format", "content_sha256", "created_at")}
    # Committed: another connection, not through the Data API, sees the row.
    assert recon_database.fetch_json(
        "SELECT to_json((SELECT source FROM reconciliation_runs WHERE id = CAST(:id AS uuid)))::text",
        {"id": run["id"]}) == "upload:stripe.csv"
    # The same content maps to the same run.
    assert upload(client).get_json()["id"] == run["id"]


def test_a_report_uploaded_to_a_console_with_only_the_data_api_is_reconciled(client, data_api_environment):
    location = upload(client).headers["Location"]

    run = console_run(client, location, AUTH)

    assert run["status"] == "COMPLETED", run["error"]
    assert (run["counts"]["matched"], run["counts"]["amount_mismatch"], run["counts"]["unknown_payment"]) == (1, 1, 2)
    assert run["totals"]["USD"] == {"gross": 2749, "fees": 151, "net": 2598, "payouts": 0}
    assert data_api_environment.calls["BeginTransaction"] >= 1 and data_api_environment.calls["CommitTransaction"] >= 1
    restart = client.post(f"{location}/restart", headers=AUTH)  # takes a claim, which needs a lasting session
    assert restart.status_code == 503 and "DATABASE_URL" in restart.get_json()["error"]["message"]


def test_a_completed_run_and_its_discrepancies_read_the_same_through_the_data_api(client, database_url):
    direct = Services(lambda: DatabaseSettings(direct_url=database_url))
    try:
        direct_client = create_app(direct).test_client()
        location = upload(direct_client).headers["Location"]
        executed = console_run(direct_client, location, AUTH)
        assert executed["status"] == "COMPLETED", executed["error"]

        run = client.get(location, headers=AUTH).get_json()
        assert run == executed
        assert (run["counts"]["matched"], run["counts"]["amount_mismatch"], run["counts"]["unknown_payment"]) == (1, 1, 2)
        assert run["totals"] == {"EUR": {"gross": 700, "fees": 30, "net": 670, "payouts": 0},
                                 "USD": {"gross": 2749, "fees": 151, "net": 2598, "payouts": 0}}

        discrepancies = f"{location}/discrepancies"
        everything = client.get(discrepancies, headers=AUTH).get_json()
        assert everything == direct_client.get(discrepancies, headers=AUTH).get_json()
        assert sorted(d["payment_reference"] for d in everything["discrepancies"]) == \
            ["pi_data_api_2", "pi_nobody_1", "pi_nobody_2"]
        assert everything["next_after"] is None

        unknown = client.get(f"{discrepancies}?category=unknown_payment", headers=AUTH).get_json()
        assert [d["payment_reference"] for d in unknown["discrepancies"]] == ["pi_nobody_1", "pi_nobody_2"]
        first = client.get(f"{discrepancies}?limit=1", headers=AUTH).get_json()
        second = client.get(f"{discrepancies}?limit=1&after={first['next_after']}", headers=AUTH).get_json()
        assert first["discrepancies"] + second["discrepancies"] == everything["discrepancies"][:2]

        bad_category = client.get(f"{discrepancies}?category=lost", headers=AUTH)
        assert bad_category.status_code == 400 and "matched" in bad_category.get_json()["error"]["message"]
    finally:
        direct.drain(10)


def test_an_unknown_run_is_404_through_the_data_api(client):
    assert client.get(f"/api/reconciliations/{uuid.uuid4()}", headers=AUTH).status_code == 404
    assert client.get(f"/api/reconciliations/{uuid.uuid4()}/discrepancies", headers=AUTH).status_code == 404


def test_a_partial_data_api_configuration_is_not_ready_and_names_what_is_missing(data_api_environment, monkeypatch):
    monkeypatch.delenv("DATA_API_DATABASE")
    client = create_app(Services()).test_client()

    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and "DATA_API_DATABASE not set" in not_ready.get_json()["error"]["message"]
    refused = client.get(f"/api/reconciliations/{uuid.uuid4()}", headers=AUTH)
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "not_configured"


def test_a_page_of_a_thousand_discrepancies_comes_through_the_data_api(client):
    # A page used to be one row, and a Data API row holds at most 64 KB: about 250 discrepancies.
    header = REPORT.split(b"\r\n")[0].decode()
    rows = [f"txn_{n},2026-10-02 09:00:00,usd,1.00,0.00,1.00,charge,ch_{n},pi_stranger_{n:04d}" for n in range(1000)]
    location = upload(client, ("\r\n".join([header, *rows]) + "\r\n").encode()).headers["Location"]
    assert console_run(client, location, AUTH)["status"] == "COMPLETED"

    page = client.get(f"{location}/discrepancies?category=unknown_payment&limit=1000", headers=AUTH)

    assert page.status_code == 200, page.get_json()
    assert [d["payment_reference"] for d in page.get_json()["discrepancies"]] == [
        f"pi_stranger_{n:04d}" for n in range(1000)]
