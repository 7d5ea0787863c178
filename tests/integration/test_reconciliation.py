"""Reconciliation against a real PostgreSQL: every category, idempotency, crash safety, serialisation."""
from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url
from support import eventually

from conveyor.adapters.database import Database
from conveyor.dataapi.client import DataApiDatabase
from conveyor_tools.local.stack import LOCAL_CLUSTER_ARN, LOCAL_SECRET_ARN
from conveyor.reconciliation import engine, loading, sessions
from conveyor.reconciliation.engine import CATEGORIES
from conveyor.reconciliation.formats import SettlementReportError
from conveyor.reconciliation.service import ReconciliationService, direct_connection
from conveyor.reconciliation.sources import open_source

STRIPE_HEADER = (
    "balance_transaction_id,created_utc,available_on_utc,currency,gross,fee,net,reporting_category,"
    "source_id,description,customer_id,charge_id,payment_intent_id,payment_method_type,card_brand"
)
ADYEN_HEADER = (
    "Company Account,Merchant Account,Psp Reference,Merchant Reference,Payment Method,Creation Date,TimeZone,"
    "Type,Modification Reference,Gross Currency,Gross Debit (GC),Gross Credit (GC),Exchange Rate,Net Currency,"
    "Net Debit (NC),Net Credit (NC),Commission (NC),Markup (NC),Scheme Fees (NC),Interchange (NC),"
    "Payment Method Variant,Modification Merchant Reference,Batch Number"
)
OCTOBER = datetime(2026, 10, 1, tzinfo=UTC)


class Orders:
    """Orders of one client, written straight into the orders table."""

    def __init__(self, database: Database):
        self.database = database
        self.client_id = str(uuid.uuid4())
        database.execute(
            "INSERT INTO clients (id, name, api_key_hash) VALUES (CAST(:id AS uuid), :name, :hash)",
            {"id": self.client_id, "name": f"recon-{self.client_id[:8]}", "hash": self.client_id},
        )

    def add(self, reference: str, amount: int, currency: str = "USD", status: str = "CONFIRMED",
            provider: str = "stripe", created_at: datetime = OCTOBER) -> str:
        order_id = str(uuid.uuid4())
        self.database.execute(
            """
            INSERT INTO orders (id, client_id, status, currency, total_amount, payment_provider,
                                payment_reference, payment_amount, created_at)
            VALUES (CAST(:id AS uuid), CAST(:client AS uuid), :status, :currency, :amount, :provider,
                    :reference, :amount, CAST(:created_at AS timestamptz))
            """,
            {"id": order_id, "client": self.client_id, "status": status, "currency": currency, "amount": amount,
             "provider": provider, "reference": reference, "created_at": created_at.isoformat()},
        )
        return order_id

    def payment_status(self, order_id: str) -> str | None:
        return self.database.fetch_json(
            "SELECT to_json((SELECT payment_status FROM order_payment_status WHERE order_id = CAST(:id AS uuid)))::text",
            {"id": order_id}
        )


@pytest.fixture
def direct_service(database: Database) -> ReconciliationService:
    return ReconciliationService(database, lambda: direct_connection(database.engine))


@pytest.fixture(params=["direct", "data_api"])
def service(request, database: Database, database_url: str) -> Iterator[ReconciliationService]:
    """Runs over a direct connection (COPY), or through the Data API (batched INSERTs): tests run on both."""
    if request.param == "direct":
        yield request.getfixturevalue("direct_service")
        return
    request.getfixturevalue("data_api_endpoint").resume()
    data_api = DataApiDatabase(LOCAL_CLUSTER_ARN, LOCAL_SECRET_ARN, make_url(database_url).database)
    yield ReconciliationService(data_api, None)
    data_api.dispose()


@pytest.fixture
def orders(database: Database) -> Orders:
    return Orders(database)


def write(path: Path, lines: list[str], bom: bool = True) -> Path:
    path.write_bytes(("\ufeff" if bom else "").encode() + "\r\n".join(lines).encode() + b"\r\n")
    return path


def stripe_row(txn: str, category: str, currency: str, gross: str, fee: str = "0.00", net: str | None = None,
               payment_intent: str = "", charge: str = "", created: str = "2026-10-02 09:00:00") -> str:
    net = net if net is not None else gross
    return (f'{txn},{created},2026-10-04 00:00:00,{currency},{gross},{fee},{net},{category},{charge or txn},'
            f'"Order {txn}, web shop",cus_1,{charge},{payment_intent},card,visa')


def reconcile(service: ReconciliationService, path: Path, **options) -> dict:
    report = open_source(str(path))
    run = service.submit(report, **options)
    return service.execute(run["id"], report) if run["needs_execution"] else run


def test_a_stripe_export_yields_every_category(service, orders, tmp_path):
    matched = orders.add("pi_match", 1250)
    underpaid = orders.add("pi_under", 1000)
    other_currency = orders.add("pi_cur", 5000, "JPY")
    missing = orders.add("pi_missing", 800)
    created_after_cutoff = orders.add("pi_later", 900, created_at=datetime(2026, 11, 1, tzinfo=UTC))
    settled_twice = orders.add("pi_twice", 700)
    rejected = orders.add("pi_rejected", 300, status="REJECTED")
    cancelled_and_refunded = orders.add("pi_cancelled", 400, status="CANCELLED")
    by_charge = orders.add("ch_only", 650)
    kuwaiti = orders.add("pi_kwd", 12345, "KWD")
    japanese = orders.add("pi_jpy", 5000, "JPY")
    adyen_order = orders.add("pi_match_adyen", 100, provider="adyen")
    report = write(tmp_path / "stripe.csv", [
        STRIPE_HEADER,
        stripe_row("txn_1", "charge", "usd", "12.50", "0.66", "11.84", "pi_match", "ch_1"),
        stripe_row("txn_2", "charge", "usd", "9.00", "0.56", "8.44", "pi_under", "ch_2"),
        stripe_row("txn_3", "charge", "usd", "50.00", "1.75", "48.25", "pi_cur", "ch_3"),
        stripe_row("txn_4", "charge", "usd", "20.00", "0.88", "19.12", "pi_nobody", "ch_4"),
        stripe_row("txn_5", "charge", "usd", "7.00", "0.50", "6.50", "pi_twice", "ch_5"),
        stripe_row("txn_6", "charge", "usd", "7.00", "0.50", "6.50", "pi_twice", "ch_6"),
        stripe_row("txn_7", "charge", "usd", "3.00", "0.39", "2.61", "pi_rejected", "ch_7"),
        stripe_row("txn_8", "charge", "usd", "4.00", "0.42", "3.58", "pi_cancelled", "ch_8"),
        stripe_row("txn_9", "refund", "usd", "-4.00", "0.00", "-4.00", "pi_cancelled", "ch_8"),
        stripe_row("txn_10", "refund", "usd", "-2.00", "0.00", "-2.00", "pi_gone", "ch_gone"),
        stripe_row("txn_11", "charge", "usd", "6.50", "0.49", "6.01", "", "ch_only"),
        stripe_row("txn_12", "charge", "kwd", "12.345", "0.100", "12.245", "pi_kwd", "ch_12"),
        stripe_row("txn_13", "charge", "jpy", "5000", "180", "4820", "pi_jpy", "ch_13"),
        stripe_row("txn_14", "fee", "usd", "-1.50", "0.00", "-1.50"),
        stripe_row("txn_15", "payout", "usd", "-30.00", "0.00", "-30.00", created="2026-10-20 06:00:00"),
    ])

    run = reconcile(service, report)

    assert run["status"] == "COMPLETED", run["error"]
    assert run["format"] == "stripe"
    assert run["counts"] == {
        "matched": 5, "amount_mismatch": 1, "currency_mismatch": 1, "missing_in_report": 1,
        "unknown_payment": 1, "duplicate_settlement": 1, "refund_due": 1, "refund_without_order": 1,
    }
    assert list(run["counts"]) == list(CATEGORIES)  # in the documented order, though jsonb sorts keys
    assert run["rows_loaded"] == 15
    assert run["cutoff"].startswith("2026-10-20T06:00:00")
    assert run["totals"] == {
        "JPY": {"gross": 5000, "fees": 180, "net": 4820, "payouts": 0},
        "KWD": {"gross": 12345, "fees": 100, "net": 12245, "payouts": 0},
        # gross: charges 12.50+9+50+20+7+7+3+4+6.50 = 119.00, less refunds 6.00
        # fees: those of the charges, plus the 1.50 fee row
        "USD": {"gross": 11300, "fees": 765, "net": 11300 - 765, "payouts": -3000},
    }
    expected_status = {
        matched: "matched", underpaid: "amount_mismatch", other_currency: "currency_mismatch",
        missing: "missing_in_report", created_after_cutoff: None, settled_twice: "duplicate_settlement",
        rejected: "refund_due", cancelled_and_refunded: "matched", by_charge: "matched",
        kuwaiti: "matched", japanese: "matched", adyen_order: None,
    }
    assert {order: orders.payment_status(order) for order in expected_status} == expected_status

    found = {(d["category"], d["payment_reference"]): d for d in service.discrepancies(run["id"])}
    assert set(found) == {
        ("amount_mismatch", "pi_under"), ("currency_mismatch", "pi_cur"), ("missing_in_report", "pi_missing"),
        ("unknown_payment", "pi_nobody"), ("duplicate_settlement", "pi_twice"), ("refund_due", "pi_rejected"),
        ("refund_without_order", "pi_gone"),
    }
    assert found[("amount_mismatch", "pi_under")].items() >= {
        "order_id": underpaid, "expected_currency": "USD", "expected_amount": 1000, "settled_currency": "USD",
        "settled_amount": 900, "report_lines": [3]}.items()
    assert found[("duplicate_settlement", "pi_twice")]["report_lines"] == [6, 7]
    assert found[("unknown_payment", "pi_nobody")]["settled_amount"] == 2000
    assert found[("refund_without_order", "pi_gone")]["settled_amount"] == -200
    assert [d["category"] for d in service.discrepancies(run["id"], category="refund_due")] == ["refund_due"]


def test_an_adyen_report_matches_psp_reference_then_merchant_reference(service, orders, tmp_path):
    by_psp = orders.add("8816000000000001", 10000, "EUR", provider="adyen")
    by_merchant = orders.add("order-2", 2550, "EUR", provider="adyen")
    bahraini = orders.add("8816000000000003", 1500, "BHD", provider="adyen")
    missing = orders.add("8816000000000004", 990, "EUR", provider="adyen")
    stripe_order = orders.add("8816000000000009", 100, "EUR", provider="stripe")
    row = "Acme,AcmeEU,{psp},{merchant},visa,2026-10-02 10:00:00,CET,{type},{modification},{gc},{gd},{gcr},,{nc},{nd},{ncr},{com},,,,visa,,7"
    report = write(tmp_path / "settlement_detail_report_batch_7.csv", [
        ADYEN_HEADER,
        row.format(psp="8816000000000001", merchant='"order-1, gift"', type="Settled", modification="",
                   gc="EUR", gd="", gcr="100.00", nc="EUR", nd="", ncr="97.80", com="2.20"),
        row.format(psp="8816000000000002", merchant="order-2", type="Settled", modification="",
                   gc="EUR", gd="", gcr="25.50", nc="EUR", nd="", ncr="24.90", com="0.60"),
        row.format(psp="8816000000000003", merchant="order-3", type="Settled", modification="",
                   gc="BHD", gd="", gcr="1.500", nc="BHD", nd="", ncr="1.450", com="0.050"),
        row.format(psp="8816000000000005", merchant="order-5", type="Refunded", modification="8826000000000005",
                   gc="EUR", gd="5.00", gcr="", nc="EUR", nd="5.00", ncr="", com=""),
        row.format(psp="8816000000000006", merchant="order-6", type="Chargeback", modification="8836000000000006",
                   gc="EUR", gd="12.00", gcr="", nc="EUR", nd="12.00", ncr="", com=""),
        row.format(psp="", merchant="", type="Fee", modification="fee-1",
                   gc="", gd="", gcr="", nc="EUR", nd="0.50", ncr="", com=""),
        row.format(psp="", merchant="", type="MerchantPayout", modification="payout-1",
                   gc="", gd="", gcr="", nc="EUR", nd="100.00", ncr="", com=""),
        row.format(psp="8816000000000009", merchant="order-9", type="Settled", modification="",
                   gc="EUR", gd="", gcr="1.00", nc="EUR", nd="", ncr="0.90", com="0.10"),
    ])

    run = reconcile(service, report)

    assert run["status"] == "COMPLETED", run["error"]
    assert run["format"] == "adyen"
    assert run["counts"] == {
        "matched": 3, "amount_mismatch": 0, "currency_mismatch": 0, "missing_in_report": 1,
        "unknown_payment": 1, "duplicate_settlement": 0, "refund_due": 0, "refund_without_order": 2,
    }
    # 10:00 CET is 09:00 UTC.
    assert run["cutoff"].startswith("2026-10-02T09:00:00")
    assert run["totals"]["BHD"] == {"gross": 1500, "fees": 50, "net": 1450, "payouts": 0}
    assert run["totals"]["EUR"] == {"gross": 10000 + 2550 - 500 - 1200 + 100, "fees": 220 + 60 + 50 + 10,
                                    "net": 9780 + 2490 - 500 - 1200 - 50 + 90, "payouts": -10000}
    assert [orders.payment_status(o) for o in (by_psp, by_merchant, bahraini, missing, stripe_order)] == [
        "matched", "matched", "matched", "missing_in_report", None]


def test_the_generic_format_and_a_given_cutoff(service, orders, tmp_path):
    orders.add("G-1", 1999, provider="generic")
    early = orders.add("G-2", 500, provider="generic", created_at=datetime(2026, 9, 1, tzinfo=UTC))
    late = orders.add("G-3", 500, provider="generic", created_at=datetime(2026, 10, 15, tzinfo=UTC))
    report = write(tmp_path / "generic.csv", [
        "amount,currency,reference,type,created_at", "19.99,USD,G-1,payment,2026-10-20T10:00:00Z",
    ], bom=False)

    run = reconcile(service, report, cutoff=datetime(2026, 10, 1, tzinfo=UTC))

    assert run["status"] == "COMPLETED", run["error"]
    assert run["counts"]["matched"] == 1 and run["counts"]["missing_in_report"] == 1
    assert orders.payment_status(early) == "missing_in_report"
    assert orders.payment_status(late) is None


def test_a_generic_report_with_its_own_column_names_is_read_through_a_column_mapping(service, orders, tmp_path):
    paid = orders.add("INV-7", 5000, currency="JPY", provider="generic")
    report = write(tmp_path / "bank.csv", [
        "Order Ref,Settled Amount,Ccy,Booked", "INV-7,5000,JPY,2026-10-20T10:00:00Z", "INV-8,1.000,KWD,2026-10-20",
    ], bom=False)
    mapping = {"reference": "Order Ref", "amount": " settled amount ", "currency": "CCY", "created_at": "Booked"}

    run = reconcile(service, report, column_map=mapping)

    assert run["status"] == "COMPLETED", run["error"]
    assert run["format"] == "generic"
    assert run["column_map"] == {"reference": "order ref", "amount": "settled amount", "currency": "ccy",
                                 "created_at": "booked"}
    assert run["counts"]["matched"] == 1 and run["counts"]["unknown_payment"] == 1
    assert run["totals"]["KWD"]["gross"] == 1000
    assert orders.payment_status(paid) == "matched"
    # The mapping is part of what a run reconciles: the same bytes read another way are another run.
    other = service.submit(open_source(str(report)), column_map={**mapping, "reference": "Booked"})
    assert other["id"] != run["id"]
    assert service.submit(open_source(str(report)), column_map=mapping)["id"] == run["id"]


def test_a_column_mapping_is_refused_unless_it_fits_the_report(service, tmp_path):
    report = open_source(str(write(tmp_path / "bank.csv", ["Order Ref,Settled Amount,Ccy", "INV-7,50,USD"], bom=False)))

    with pytest.raises(SettlementReportError, match="map a generic report's columns"):
        service.submit(report)
    with pytest.raises(SettlementReportError, match="no column.*reference"):
        service.submit(report, format="generic")
    with pytest.raises(SettlementReportError, match="no column.*order number"):
        service.submit(report, column_map={"reference": "Order Number", "amount": "Settled Amount", "currency": "Ccy"})
    with pytest.raises(SettlementReportError, match="unknown field.*ref"):
        service.submit(report, column_map={"ref": "Order Ref"})
    with pytest.raises(SettlementReportError, match="generic format only"):
        service.submit(report, format="stripe", column_map={"reference": "Order Ref"})


def test_a_malformed_amount_refuses_the_whole_report(service, orders, tmp_path):
    order = orders.add("pi_ok", 1250)
    report = write(tmp_path / "bad.csv", [
        STRIPE_HEADER,
        stripe_row("txn_1", "charge", "usd", "12.50", "0.66", "11.84", "pi_ok", "ch_1"),
        stripe_row("txn_2", "charge", "usd", "12.505", "0.66", "11.845", "pi_bad", "ch_2"),
    ])

    run = reconcile(service, report)

    assert run["status"] == "FAILED"
    assert "line 3" in run["error"] and "12.505" in run["error"] and "Fix or remove" in run["error"]
    assert orders.payment_status(order) is None
    assert service.discrepancies(run["id"]) == []


def test_the_same_content_gives_the_same_run(service, orders, tmp_path):
    orders.add("pi_1", 1000)
    lines = [STRIPE_HEADER, stripe_row("txn_1", "charge", "usd", "10.00", payment_intent="pi_1")]
    first = reconcile(service, write(tmp_path / "a.csv", lines))
    again = service.submit(open_source(str(write(tmp_path / "copy-of-a.csv", lines))))

    assert again["id"] == first["id"]
    assert again["needs_execution"] is False
    assert again["counts"] == first["counts"]
    assert again["attempts"] == 1
    different = service.submit(open_source(str(write(tmp_path / "b.csv", lines + lines[1:]))))
    assert different["id"] != first["id"]


def test_a_failure_after_every_write_leaves_nothing_applied_and_the_run_restarts(
        service, orders, tmp_path, monkeypatch):
    order = orders.add("pi_1", 1000)
    report = write(tmp_path / "a.csv", [
        STRIPE_HEADER, stripe_row("txn_1", "charge", "usd", "9.00", payment_intent="pi_1"),
        stripe_row("txn_2", "charge", "usd", "1.00", payment_intent="pi_unknown"),
    ])
    # Everything has been written inside the run's transaction when completing it fails.
    monkeypatch.setattr(engine, "COMPLETE_RUN", "SELECT 1 / 0")

    with pytest.raises(Exception) as failed:
        reconcile(service, report)
    assert failed.value.sqlstate == "22012"  # division_by_zero

    assert orders.payment_status(order) is None
    failed = service.submit(open_source(str(report)))
    assert failed["status"] == "QUEUED" and failed["needs_execution"]
    assert service.discrepancies(failed["id"]) == []

    monkeypatch.undo()
    run = service.execute(failed["id"], open_source(str(report)))
    assert run["status"] == "COMPLETED"
    assert run["attempts"] == 2
    assert run["counts"]["amount_mismatch"] == 1 and run["counts"]["unknown_payment"] == 1
    assert orders.payment_status(order) == "amount_mismatch"


def test_a_connection_killed_mid_load_leaves_nothing_applied(direct_service, orders, database, tmp_path,
                                                             monkeypatch):
    service = direct_service
    order = orders.add("pi_0", 100)
    monkeypatch.setattr(sessions, "COPY_CHUNK_ROWS", 10)
    lines = [STRIPE_HEADER] + [stripe_row(f"txn_{i}", "charge", "usd", "1.00", payment_intent=f"pi_{i}")
                               for i in range(50)]
    report = write(tmp_path / "a.csv", lines)
    run = service.submit(open_source(str(report)))

    def kill_the_run_after_the_second_chunk(progress):
        if progress.rows_loaded == 20:
            database.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'COPY settlement_staging%' AND pid <> pg_backend_pid()"
            )

    with pytest.raises(psycopg.OperationalError):
        service.execute(run["id"], open_source(str(report)), on_progress=kill_the_run_after_the_second_chunk)

    assert service.get(run["id"])["status"] == "FAILED"
    assert orders.payment_status(order) is None
    restarted = service.submit(open_source(str(report)))
    done = service.execute(restarted["id"], open_source(str(report)))
    assert done["status"] == "COMPLETED" and done["rows_loaded"] == 50
    assert orders.payment_status(order) == "matched"


def test_runs_are_serialised_by_an_advisory_lock(service, orders, database_url, tmp_path):
    orders.add("pi_1", 100)
    report = write(tmp_path / "a.csv", [STRIPE_HEADER, stripe_row("txn_1", "charge", "usd", "1.00", payment_intent="pi_1")])
    run = service.submit(open_source(str(report)))
    finished: list[dict] = []
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as other_run:
        other_run.execute("SELECT pg_advisory_lock(%s, %s)", (engine.LOCK_CLASS, engine.ALL_RUNS_LOCK_KEY))
        worker = threading.Thread(target=lambda: finished.append(service.execute(run["id"], open_source(str(report)))))
        worker.start()
        # The run has reached the lock and waits there: it neither ran past it nor failed.
        eventually(lambda: other_run.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s AND objsubid = 2",
            [engine.ALL_RUNS_LOCK_KEY]).fetchone()[0] == 1, what="the run to wait for the lock")
        assert worker.is_alive()
        assert service.get(run["id"])["status"] == "QUEUED"
        other_run.execute("SELECT pg_advisory_unlock(%s, %s)", (engine.LOCK_CLASS, engine.ALL_RUNS_LOCK_KEY))
        worker.join(10)
    assert finished and finished[0]["status"] == "COMPLETED"


def test_a_run_already_executing_elsewhere_is_not_executed_twice(service, orders, database_url, tmp_path):
    orders.add("pi_1", 100)
    report = write(tmp_path / "a.csv", [STRIPE_HEADER, stripe_row("txn_1", "charge", "usd", "1.00", payment_intent="pi_1")])
    run = service.submit(open_source(str(report)))
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as executor:
        executor.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (engine.RUN_LOCK_CLASS, run["id"]))
        unchanged = service.execute(run["id"], open_source(str(report)))
    assert unchanged["status"] == "QUEUED" and unchanged["attempts"] == 0


def test_a_report_read_by_several_processes_reconciles_as_one_read_in_one(direct_service, orders, tmp_path,
                                                                         monkeypatch):
    for n in range(300):
        orders.add(f"pi_many_{n}", 1000 + n)
    lines = [STRIPE_HEADER] + [
        stripe_row(f"txn_{n}", "charge", "usd", f"{10 + n // 100}.{n % 100:02d}", payment_intent=f"pi_many_{n}")
        for n in range(0, 300, 2)
    ] + [stripe_row("txn_x", "charge", "usd", "1.00", payment_intent="pi_nobody")]
    one = write(tmp_path / "one.csv", lines)
    several = write(tmp_path / "several.csv", lines + [""])  # other bytes, so another run

    first = reconcile(direct_service, one)
    monkeypatch.setattr(loading, "readers_for", lambda size: 3)
    second = reconcile(direct_service, several)

    assert first["status"] == second["status"] == "COMPLETED"
    assert first["counts"] == second["counts"]
    assert first["counts"]["matched"] == 150 and first["counts"]["unknown_payment"] == 1
    assert first["totals"] == second["totals"] and first["rows_loaded"] == second["rows_loaded"] == 151


FIXTURES = Path(__file__).parent.parent / "fixtures" / "settlement"


def copy_fixture(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes((FIXTURES / name).read_bytes())
    return path


def test_a_stripe_report_in_local_time_is_reconciled_in_the_zone_given(service, orders, tmp_path):
    by_charge = orders.add("ch_1", 1250)
    by_payment = orders.add("py_2", 2000)
    inconsistent = orders.add("ch_3", 900)
    created_late_on_the_last_day = orders.add("ch_late", 700, created_at=datetime(2026, 11, 1, 6, 59, tzinfo=UTC))
    after_the_report = orders.add("ch_after", 700, created_at=datetime(2026, 11, 1, 7, 1, tzinfo=UTC))
    report = copy_fixture(tmp_path, "stripe_itemized_local_times.csv")

    with pytest.raises(SettlementReportError, match="--timezone.*--cutoff"):
        service.submit(open_source(str(report)))
    run = reconcile(service, report, timezone="America/New_York")

    assert run["status"] == "COMPLETED", run["error"]
    assert run["timezone"] == "America/New_York"
    # The latest row, 2026-11-01 02:00 in New York, is EST by then: 07:00 UTC.
    assert run["cutoff"].startswith("2026-11-01T07:00:00")
    assert run["counts"]["matched"] == 3 and run["counts"]["missing_in_report"] == 1
    assert [orders.payment_status(order) for order in (
        by_charge, by_payment, inconsistent, created_late_on_the_last_day, after_the_report)] == [
        "matched", "matched", "matched", "missing_in_report", None]
    assert run["unmapped_types"] == {"gift_card_sale": 1}
    assert run["inconsistent_rows"]["count"] == 1 and run["inconsistent_rows"]["lines"] == [4]
    assert run["totals"]["USD"]["fees"] == 66 + 88 + 56 + 200
    # The zone is part of what the report says: read in another zone, it is another run.
    elsewhere = service.submit(open_source(str(report)), timezone="Europe/Berlin")
    assert elsewhere["id"] != run["id"]
    assert service.submit(open_source(str(report)), timezone="America/New_York")["id"] == run["id"]


def test_a_stripe_report_in_local_time_with_a_cutoff_needs_no_zone(service, orders, tmp_path):
    orders.add("ch_1", 1250)
    report = copy_fixture(tmp_path, "stripe_itemized_local_times.csv")

    run = reconcile(service, report, cutoff=datetime(2026, 10, 15, tzinfo=UTC))

    assert run["status"] == "COMPLETED", run["error"]
    assert run["timezone"] is None and run["cutoff"].startswith("2026-10-15T00:00:00")


def test_every_adyen_line_counts_where_adyen_means_it(service, orders, tmp_path):
    settled = orders.add("8816000000000001", 10000, provider="adyen")
    short_paid = orders.add("8816000000000002", 5000, provider="adyen")
    settled_elsewhere = orders.add("8816000000000005", 4000, provider="adyen")
    report = copy_fixture(tmp_path, "settlement_detail_report_batch_12.csv")

    run = reconcile(service, report)

    assert run["status"] == "COMPLETED", run["error"]
    assert run["counts"]["matched"] == 3
    assert run["counts"]["refund_without_order"] == 3  # Refunded, Chargeback, RefundedExternallyWithInfo
    assert [orders.payment_status(order) for order in (settled, short_paid, settled_elsewhere)] == ["matched"] * 3
    # Fees: the payments' own (2.90 + 1.00 + 2.00 on the chargeback), then Fee 1.50, MiscCosts 0.75,
    # InvoiceDeduction 20.00 and PaymentCost 0.05: every cost Adyen withheld.
    assert run["totals"]["USD"] == {
        "gross": 10000 + 5000 - 1000 - 3000 + 4000 - 500,
        "fees": 290 + 100 + 200 + 150 + 75 + 2000 + 5,
        "net": 9710 + 4800 - 1000 - 3200 - 150 - 75 - 2000 - 5 - 500 + 300 + 25 + 4000 - 500 + 100 + 100,
        "payouts": -15000,
    }
    assert run["unmapped_types"] == {"FutureThing": 2}
    assert run["inconsistent_rows"]["lines"] == [3]
    # The latest row, 2026-10-04 02:00 PDT, is 09:00 UTC.
    assert run["cutoff"].startswith("2026-10-04T09:00:00")


def test_a_report_that_says_no_time_needs_a_cutoff_and_never_takes_the_time_of_the_run(service, orders, tmp_path):
    orders.add("G-1", 100, provider="generic")
    timeless = write(tmp_path / "timeless.csv", ["reference,currency,amount", "G-1,USD,1.00"], bom=False)
    empty_times = write(tmp_path / "empty-times.csv", ["reference,currency,amount,created_at", "G-1,USD,1.00,"],
                        bom=False)

    with pytest.raises(SettlementReportError, match="no created_at column.*--cutoff"):
        service.submit(open_source(str(timeless)))
    failed = reconcile(service, empty_times)
    given = reconcile(service, timeless, cutoff=datetime(2026, 10, 31, tzinfo=UTC))

    assert failed["status"] == "FAILED" and "no row of the report has a timestamp" in failed["error"]
    assert "--cutoff" in failed["error"] and failed["cutoff"] is None
    assert given["status"] == "COMPLETED" and given["counts"]["matched"] == 1


def test_a_payment_accounting_report_is_refused_with_the_report_to_download(service, tmp_path):
    report = open_source(str(copy_fixture(tmp_path, "adyen_payment_accounting_report.csv")))

    for format in (None, "adyen"):
        with pytest.raises(SettlementReportError, match="Payment accounting report.*Settlement details report"):
            service.submit(report, format=format)


def test_notes_of_a_report_read_by_several_processes_are_those_of_one_read_in_one(
        direct_service, orders, tmp_path, monkeypatch):
    rows = [stripe_row(f"txn_{n}", "charge", "usd", "10.00", "0.30", "9.70" if n % 50 else "9.00",
                       payment_intent=f"pi_notes_{n}") for n in range(300)]
    rows += [stripe_row(f"txn_x{n}", "mystery_category", "usd", "1.00") for n in range(3)]
    one = write(tmp_path / "one.csv", [STRIPE_HEADER, *rows])
    several = write(tmp_path / "several.csv", [STRIPE_HEADER, *rows, ""])

    first = reconcile(direct_service, one)
    monkeypatch.setattr(loading, "readers_for", lambda size: 3)
    second = reconcile(direct_service, several)

    assert first["status"] == second["status"] == "COMPLETED"
    assert first["unmapped_types"] == second["unmapped_types"] == {"mystery_category": 3}
    assert first["inconsistent_rows"] == second["inconsistent_rows"]
    assert first["inconsistent_rows"]["count"] == 6 and first["inconsistent_rows"]["lines"] == [2, 52, 102, 152, 202, 252]


def test_a_settlement_row_counts_against_one_order_when_orders_share_its_reference(service, orders, database,
                                                                                    tmp_path):
    """A retried payment leaves turned-down orders beside the one holding it; legacy data may hold it twice."""
    retried = orders.add("pi_retried", 1000, status="REJECTED", created_at=datetime(2026, 9, 1, tzinfo=UTC))
    holder = orders.add("pi_retried", 1000)
    cancelled_first = orders.add("pi_refund", 500, status="CANCELLED", created_at=datetime(2026, 9, 1, tzinfo=UTC))
    rejected_last = orders.add("pi_refund", 500, status="REJECTED", created_at=datetime(2026, 9, 2, tzinfo=UTC))
    by_charge = orders.add("ch_alt", 650, status="REJECTED", created_at=datetime(2026, 9, 1, tzinfo=UTC))
    by_charge_holder = orders.add("ch_alt", 650)
    # Recorded before migration 0004: two CONFIRMED orders with one payment; 0004 marked the later one.
    legacy_first = orders.add("pi_legacy", 700)
    database.execute(
        "INSERT INTO orders (id, client_id, status, currency, total_amount, payment_provider, payment_reference,"
        " payment_amount, created_at, legacy_duplicate_payment) SELECT gen_random_uuid(), client_id, status, currency,"
        " total_amount, payment_provider, payment_reference, payment_amount, created_at + interval '1 hour', true"
        " FROM orders WHERE id = CAST(:id AS uuid)", {"id": legacy_first})
    legacy_second = database.fetch_json(
        "SELECT to_json(id)::text FROM orders WHERE legacy_duplicate_payment AND payment_reference = 'pi_legacy'")
    report = write(tmp_path / "stripe.csv", [
        STRIPE_HEADER,
        stripe_row("txn_1", "charge", "usd", "10.00", "0.59", "9.41", "pi_retried", "ch_1"),
        stripe_row("txn_2", "charge", "usd", "5.00", "0.45", "4.55", "pi_refund", "ch_2"),
        stripe_row("txn_3", "charge", "usd", "6.50", "0.49", "6.01", "", "ch_alt"),
        stripe_row("txn_4", "charge", "usd", "7.00", "0.50", "6.50", "pi_legacy", "ch_4"),
    ])

    run = reconcile(service, report)

    assert run["status"] == "COMPLETED", run["error"]
    # Four payment rows, four classified payments: none counted twice.
    assert run["counts"] == {
        "matched": 3, "amount_mismatch": 0, "currency_mismatch": 0, "missing_in_report": 1,
        "unknown_payment": 0, "duplicate_settlement": 0, "refund_due": 1, "refund_without_order": 0,
    }
    expected_status = {
        retried: None, holder: "matched",  # the order holding the payment, not the rejected attempt
        cancelled_first: None, rejected_last: "refund_due",  # no holder: the latest turned-down order
        by_charge: None, by_charge_holder: "matched",  # the fallback reference prefers the holder too
        legacy_first: "matched", legacy_second: "missing_in_report",  # the earliest kept the payment
    }
    assert {order: orders.payment_status(order) for order in expected_status} == expected_status
    found = {d["category"]: d for d in service.discrepancies(run["id"])}
    assert found["refund_due"]["order_id"] == rejected_last and found["refund_due"]["report_lines"] == [3]
    assert found["missing_in_report"]["order_id"] == legacy_second
