"""The `conveyor` commands as an operator runs them, against the test database."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from support import OutputLines

from conveyor.reconciliation.service import ReconciliationService, RunClaims, direct_connection
from conveyor.reconciliation.sources import open_source
from conveyor.services.admin import import_catalog
from conveyor.services.ordering import hash_api_key


def conveyor(*args: str, database_url: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "conveyor_tools.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_migrate_is_idempotent(database_url):
    result = conveyor("migrate", database_url=database_url)
    assert result.returncode == 0, result.stderr
    assert "migrations applied" in result.stderr


def test_clients_create_prints_the_key_once_on_the_last_line(database_url, session_database):
    name = f"acme-{uuid.uuid4().hex[:6]}"
    result = conveyor("clients", "create", name, database_url=database_url)

    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    stored = session_database.fetch_json("SELECT to_json(api_key_hash)::text FROM clients WHERE name = :n", {"n": name})
    assert stored == hash_api_key(key) != key

    again = conveyor("clients", "create", name, database_url=database_url)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_catalog_import_upserts_and_reports_bad_rows_by_line(database_url, session_database, tmp_path):
    sku = f"CLI-{uuid.uuid4().hex[:6]}"
    good = tmp_path / "catalog.csv"
    good.write_text(f'\ufeffsku,name,currency,unit_price,stock\r\n{sku},"Mug, large",EUR,1299,40\r\n', encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_text(f"sku,name,currency,unit_price,stock\n{sku},Mug,EURO,12.99,40\n")

    assert conveyor("catalog", "import", str(good), database_url=database_url).returncode == 0
    refused = conveyor("catalog", "import", str(bad), database_url=database_url)

    assert refused.returncode == 2 and "bad.csv:2" in refused.stderr
    row = session_database.fetch_json(
        "SELECT row_to_json(c)::text FROM catalog c WHERE sku = :sku", {"sku": sku})
    assert (row["name"], row["currency"], row["unit_price"], row["stock_available"]) == ("Mug, large", "EUR", 1299, 40)


def test_load_places_orders_and_reports_settle_latency(stack, database_url, session_database):
    import_catalog(session_database, [
        {"sku": f"LOAD-{n}", "name": "load", "currency": "USD", "unit_price": 100 * n, "stock": 100_000} for n in (1, 2, 3)
    ])

    result = conveyor("load", "--orders", "40", "--concurrency", "4", "--duplicates", "0.5",
                      "--api-url", stack.api_url, "--api-key", stack.api_key, database_url=database_url)

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["placed"] == summary["settled"] == 40
    assert summary["confirmed"] + summary["rejected"] == 40
    assert summary["duplicates_suppressed"] == summary["duplicates_sent"] > 0
    assert summary["latency_ms"]["p50"] is not None and summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"]


def add_order(database, provider: str, reference: str, amount: int, currency: str) -> None:
    client_id = str(uuid.uuid4())
    database.execute("INSERT INTO clients (id, name, api_key_hash) VALUES (CAST(:id AS uuid), :id, :id)", {"id": client_id})
    database.execute(
        "INSERT INTO orders (id, client_id, status, currency, total_amount, payment_provider, payment_reference,"
        " payment_amount, created_at) VALUES (gen_random_uuid(), CAST(:client AS uuid), 'CONFIRMED', :currency,"
        " :amount, :provider, :reference, :amount, '2026-10-01T00:00:00Z')",
        {"client": client_id, "currency": currency, "amount": amount, "provider": provider, "reference": reference})


def summary_of(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


CATEGORY_NAMES = ["matched", "amount_mismatch", "currency_mismatch", "missing_in_report", "unknown_payment",
                  "duplicate_settlement", "refund_due", "refund_without_order"]


def test_reconcile_a_stripe_export_and_an_adyen_report_ends_with_the_categories_and_totals(
        database, database_url, tmp_path):
    add_order(database, "stripe", "pi_cli_paid", 1250, "USD")
    add_order(database, "stripe", "pi_cli_never_settled", 990, "USD")
    add_order(database, "adyen", "8816000000000001", 1234, "KWD")
    stripe = tmp_path / "balance_change_from_activity.csv"
    stripe.write_bytes(
        b"\xef\xbb\xbfbalance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,charge_id,"
        b"payment_intent_id\r\n"
        b"txn_1,2026-10-02 09:00:00,usd,12.50,0.66,11.84,charge,ch_1,pi_cli_paid\r\n"
        b"txn_2,2026-10-02 09:05:00,usd,5.00,0.45,4.55,charge,ch_2,pi_cli_stranger\r\n")
    adyen = tmp_path / "settlement_detail_report_batch_7.csv"
    adyen.write_text(
        "Company Account,Merchant Account,Psp Reference,Merchant Reference,Creation Date,TimeZone,Type,"
        "Modification Reference,Gross Currency,Gross Debit (GC),Gross Credit (GC),Net Currency,Net Debit (NC),"
        "Net Credit (NC),Commission (NC),Markup (NC),Scheme Fees (NC),Interchange (NC)\r\n"
        "Acme,AcmeEU,8816000000000001,order-1,2026-10-02 10:00:00,CET,Settled,,KWD,,1.234,KWD,,1.200,0.034,,,\r\n")

    first = summary_of(conveyor("reconcile", str(stripe), database_url=database_url))
    second = summary_of(conveyor("reconcile", str(adyen), database_url=database_url))

    assert list(first)[:8] == CATEGORY_NAMES
    assert (first["format"], first["matched"], first["missing_in_report"], first["unknown_payment"]) == ("stripe", 1, 1, 1)
    assert first["totals"] == {"USD": {"gross": 1750, "fees": 111, "net": 1639, "payouts": 0}}
    assert (second["format"], second["matched"], second["missing_in_report"]) == ("adyen", 1, 0)
    assert second["totals"] == {"KWD": {"gross": 1234, "fees": 34, "net": 1200, "payouts": 0}}
    again = conveyor("reconcile", str(stripe), database_url=database_url)
    assert summary_of(again)["run_id"] == first["run_id"] and "already reconciled" in again.stderr


def test_reconcile_a_generic_report_through_a_column_mapping_and_refuse_a_malformed_one(
        database, database_url, tmp_path):
    add_order(database, "generic", "INV-1", 5000, "JPY")
    bank = tmp_path / "bank.csv"
    bank.write_text("Order Ref,Settled,Ccy\nINV-1,5000,JPY\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("reference,currency,amount,created_at\nINV-1,JPY,50.5,2026-10-02T00:00:00Z\n")

    mapped = summary_of(conveyor("reconcile", str(bank), "--map", "reference=Order Ref", "--map", "amount=Settled",
                                 "--map", "currency=Ccy", "--cutoff", "2026-10-31T00:00:00+00:00",
                                 database_url=database_url))
    unmapped = conveyor("reconcile", str(bank), database_url=database_url)
    refused = conveyor("reconcile", str(bad), database_url=database_url)
    typo = conveyor("reconcile", str(bank), "--map", "reference", database_url=database_url)

    assert (mapped["format"], mapped["matched"]) == ("generic", 1)
    assert unmapped.returncode == 2 and "--map reference=COLUMN" in unmapped.stderr
    assert refused.returncode == 1 and "line 2" in refused.stderr and "50.5" in refused.stderr
    assert typo.returncode == 2 and "FIELD=COLUMN" in typo.stderr


WAITING = "waiting for the process that executes the run"


def reconcile_in_background(report, database_url: str) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.Popen([sys.executable, "-m", "conveyor_tools.cli", "reconcile", str(report)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_reconcile_waits_for_a_run_another_process_holds_and_then_shows_it(database, database_url, tmp_path):
    add_order(database, "generic", "INV-9", 900, "USD")
    report = tmp_path / "generic.csv"
    report.write_text("reference,currency,amount,created_at\nINV-9,USD,9.00,2026-10-02T00:00:00Z\n")
    service = ReconciliationService(database, lambda: direct_connection(database.engine))
    other_process = RunClaims(service.connect)
    run, claimed = service.submit_claimed(open_source(str(report)), None, None, other_process)
    assert claimed

    waiting = reconcile_in_background(report, database_url)
    stderr = OutputLines(waiting.stderr)
    try:
        # It has seen the run claimed and decided to wait, rather than take the run over.
        stderr.wait_for_log(WAITING, run_id=run["id"])
        untouched = service.get(run["id"])
        service.execute(run["id"], open_source(str(report)))
        other_process.close()
        waiting.wait(timeout=30)
        stdout = waiting.stdout.read()
    finally:
        waiting.kill()
    assert waiting.returncode == 0, stderr.finished()
    assert (untouched["status"], untouched["rows_loaded"]) == (run["status"], 0)
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert (summary["run_id"], summary["matched"]) == (run["id"], 1)


def test_reconcile_says_what_to_do_when_the_process_it_waits_for_dies(database, database_url, tmp_path):
    report = tmp_path / "generic.csv"
    report.write_text("reference,currency,amount,created_at\nINV-10,USD,1.00,2026-10-02T00:00:00Z\n")
    service = ReconciliationService(database, lambda: direct_connection(database.engine))
    dying = RunClaims(service.connect)
    run, _ = service.submit_claimed(open_source(str(report)), None, None, dying)

    waiting = reconcile_in_background(report, database_url)
    stderr = OutputLines(waiting.stderr)
    try:
        stderr.wait_for_log(WAITING, run_id=run["id"])  # else it could claim the run itself once it is free
        dying.close()  # what the death of its process does to its claim
        waiting.wait(timeout=30)
    finally:
        waiting.kill()
    said = stderr.finished()
    assert waiting.returncode == 2 and f"the process executing run {run['id']} stopped" in said
    assert "run this command again" in said
    # Run again, it takes the run over and completes it.
    assert summary_of(conveyor("reconcile", str(report), database_url=database_url))["run_id"] == run["id"]


FIXTURES = Path(__file__).parent.parent / "fixtures" / "settlement"


def test_reconcile_reads_a_stripe_report_in_the_time_zone_given_and_shows_what_it_noticed(
        database, database_url, tmp_path):
    add_order(database, "stripe", "ch_1", 1250, "USD")
    add_order(database, "stripe", "py_2", 2000, "USD")
    add_order(database, "stripe", "ch_3", 900, "USD")
    report = tmp_path / "balance_change_from_activity.csv"
    report.write_bytes((FIXTURES / "stripe_itemized_local_times.csv").read_bytes())

    without_zone = conveyor("reconcile", str(report), database_url=database_url)
    unknown_zone = conveyor("reconcile", str(report), "--timezone", "Mars/Olympus", database_url=database_url)
    done = conveyor("reconcile", str(report), "--timezone", "America/New_York", database_url=database_url)

    assert without_zone.returncode == 2
    assert "--timezone" in without_zone.stderr and "--cutoff" in without_zone.stderr
    assert unknown_zone.returncode == 2 and "IANA time zone" in unknown_zone.stderr
    summary = summary_of(done)
    assert (summary["format"], summary["matched"], summary["unknown_payment"]) == ("stripe", 3, 0)
    assert summary["unmapped_types"] == {"gift_card_sale": 1}
    assert summary["inconsistent_rows"]["lines"] == [4] and summary["inconsistent_rows"]["count"] == 1
    assert "gift_card_sale (1 rows)" in done.stderr and "lines 4" in done.stderr
    # 2026-11-01 02:00 EST is 07:00 UTC: the report's latest row.
    assert "cutoff 2026-11-01 07:00:00+00" in done.stderr.replace("T", " ")


def test_reconcile_refuses_another_kind_of_report_and_a_report_that_says_no_time(database_url, tmp_path):
    accounting = tmp_path / "payments_accounting_report_2026_10_01.csv"
    accounting.write_bytes((FIXTURES / "adyen_payment_accounting_report.csv").read_bytes())
    timeless = tmp_path / "generic.csv"
    timeless.write_text("reference,currency,amount\nINV-11,USD,1.00\n")

    detected = conveyor("reconcile", str(accounting), database_url=database_url)
    forced = conveyor("reconcile", str(accounting), "--format", "adyen", database_url=database_url)
    no_time = conveyor("reconcile", str(timeless), database_url=database_url)

    for refused in (detected, forced):
        assert refused.returncode == 2
        assert "Payment accounting report" in refused.stderr and "Settlement details report" in refused.stderr
        assert "Export it again" not in refused.stderr and "8816000000000001" not in refused.stderr
    assert no_time.returncode == 2 and "--cutoff" in no_time.stderr
    assert summary_of(conveyor("reconcile", str(timeless), "--cutoff", "2026-10-31T00:00:00+00:00",
                               database_url=database_url))["unknown_payment"] == 1


def test_reconcile_reads_any_path_its_user_names_whatever_the_console_is_confined_to(
        database, database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVEYOR_REPORT_DIR", str(tmp_path / "console-reports"))  # the console's rule only
    (tmp_path / "generic.csv").write_text(f"reference,currency,amount\nCLI-{uuid.uuid4().hex[:8]},USD,1.00\n")

    relative = conveyor("reconcile", "generic.csv", "--cutoff", "2026-10-31T00:00:00+00:00",
                        database_url=database_url, cwd=tmp_path)

    assert relative.returncode == 0, relative.stderr
    assert summary_of(relative)["unknown_payment"] == 1
    refused = conveyor("reconcile", "s3://Not_A_Bucket/x.csv", database_url=database_url)
    assert refused.returncode == 2 and "s3://bucket/path/to/report.csv" in refused.stderr
    assert "Traceback" not in refused.stderr
