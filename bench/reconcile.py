"""Reconciliation of a Stripe export against orders, beside a PostgreSQL floor measured in the same run.

    python bench/reconcile.py [--rows 1000000] [--small-rows 100000] [--keep-files]

For each size (the small one, then --rows), in a fresh database of its own:

- orders: as many as report rows, Stripe payment references, loaded with COPY;
- report: a Stripe itemized export (17 columns) written to a temporary file: charges
  for most orders, and a known share of every category (amount and currency mismatches,
  duplicates, charges for rejected orders, unknown charges, refunds without order, orders
  missing from the report), plus fee and payout rows;
- engine: `ReconciliationService.submit` + `execute`, the real code path, in a child
  process of its own, so its peak RSS (getrusage) is the reconciliation's alone; the
  processes reading a large report in parallel each count at the largest one's peak;
- floor: PostgreSQL's own COPY of the same file (FORMAT csv, into text columns) plus
  one FULL OUTER JOIN classifying report rows against orders, over one connection;
  the median of three rounds.

Targets: engine wall time at most 5x the floor; peak RSS at most 250 MB; peak RSS at
--rows within 1.5x of peak RSS at --small-rows (memory flat in the row count).

Progress goes to stderr; stdout gets exactly one JSON line. Exit code 0 whether or not
the targets are met; 2 if the engine's counts differ from what the generator put in the
report, because then the measurement cannot be trusted. The database is DATABASE_URL's
server, or an embedded PostgreSQL in a temporary folder; the run drops what it creates.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg
from rich.console import Console

from conveyor_tools.local.database import disposable_server, libpq_url, scratch_database

TARGET_RATIO = 5.0
TARGET_RSS_MB = 250.0
TARGET_FLATNESS = 1.5
FLOOR_ROUNDS = 3  # the floor is short, so noise moves it most: report the median
STRIPE_HEADER = (
    "balance_transaction_id,created_utc,available_on_utc,currency,gross,fee,net,reporting_category,source_id,"
    "description,automatic_payout_id,automatic_payout_effective_at_utc,customer_id,charge_id,payment_intent_id,"
    "payment_method_type,card_brand"
)

console = Console(stderr=True)


# --- Data ---------------------------------------------------------------------------


def order_amount(i: int) -> int:
    return 100 + (i * 7919) % 100_000


def order_currency(i: int) -> str:
    return "JPY" if i % 50 == 7 else "USD"


def order_status(i: int) -> str:
    return "REJECTED" if i % 100 == 4 else "CONFIRMED"


def major(amount: int, currency: str) -> str:
    if currency == "JPY":
        return str(amount)
    sign = "-" if amount < 0 else ""
    return f"{sign}{abs(amount) // 100}.{abs(amount) % 100:02d}"


def write_orders(connection: psycopg.Connection, count: int) -> None:
    client_id = uuid.uuid4()
    connection.execute("INSERT INTO clients (id, name, api_key_hash) VALUES (%s, 'bench', 'bench')", (client_id,))
    with connection.cursor().copy(
        "COPY orders (id, client_id, status, currency, total_amount, payment_provider, payment_reference,"
        " payment_amount, created_at) FROM STDIN"
    ) as copy:
        for i in range(count):
            amount = order_amount(i)
            copy.write_row((uuid.UUID(int=i + 1), client_id, order_status(i), order_currency(i), amount, "stripe",
                            f"pi_{i:08d}", amount, "2026-10-01 00:00:00+00"))
    # As a long-lived table would be: whichever side read the fresh rows first would
    # otherwise also pay for setting their hint bits, and for the checkpoint that writing
    # a million orders brings on (measured: 1-2 s landing inside the engine's run).
    connection.execute("VACUUM ANALYZE orders")
    try:
        connection.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        console.print("[yellow]CHECKPOINT needs superuser or pg_checkpoint: a checkpoint may land in a"
                      " measurement[/yellow]")


def write_report(path: Path, rows: int) -> tuple[int, Counter]:
    """A Stripe export of about `rows` rows for orders 0..rows-1; returns its row count and expected counts."""
    expected: Counter = Counter()
    written = 0
    with path.open("w", newline="") as out:
        out.write(STRIPE_HEADER + "\r\n")

        def row(kind: str, currency: str, gross: int, payment_intent: str, fee: int = 0) -> None:
            nonlocal written
            written += 1
            created = f"2026-10-{1 + written % 28:02d} {written % 24:02d}:00:00"
            out.write(
                f"txn_{written:08d},{created},2026-10-30 00:00:00,{currency.lower()},{major(gross, currency)},"
                f"{major(fee, currency)},{major(gross - fee, currency)},{kind},ch_{written:08d},"
                f'"Order {written}, web",po_1,2026-10-31 00:00:00,cus_{written % 1000},ch_{written:08d},'
                f"{payment_intent},card,visa\r\n"
            )

        i = 0
        while written < rows:
            amount, currency = order_amount(i), order_currency(i)
            fee = amount * 29 // 1000 + (30 if currency == "USD" else 0)
            pattern = i % 100
            if i >= rows:  # past the orders: charges nobody ordered
                row("charge", "USD", 1000, f"pi_x{i:08d}", 59)
                expected["unknown_payment"] += 1
            elif pattern == 1:
                row("charge", currency, amount - 1, f"pi_{i:08d}", fee)
                expected["amount_mismatch"] += 1
            elif pattern == 2:
                expected["missing_in_report"] += 1
            elif pattern == 3:
                row("charge", currency, amount, f"pi_{i:08d}", fee)
                row("charge", currency, amount, f"pi_{i:08d}", fee)
                expected["duplicate_settlement"] += 1
            elif pattern == 4:
                row("charge", currency, amount, f"pi_{i:08d}", fee)
                expected["refund_due"] += 1
            elif pattern == 5:
                row("charge", "EUR" if currency == "USD" else "USD", amount, f"pi_{i:08d}", fee)
                expected["currency_mismatch"] += 1
            elif pattern == 6:
                row("charge", "USD", 1000, f"pi_u{i:08d}", 59)
                row("refund", "USD", -500, f"pi_r{i:08d}")
                expected["unknown_payment"] += 1
                expected["refund_without_order"] += 1
                expected["missing_in_report"] += 1
            elif pattern == 8:
                row("fee", "USD", -150, "")
                row("payout", "USD", -100_000, "")
                expected["missing_in_report"] += 1
            else:
                row("charge", currency, amount, f"pi_{i:08d}", fee)
                expected["matched"] += 1
            i += 1
        # Orders the report ran out before reaching are missing from it too.
        expected["missing_in_report"] += max(0, rows - i) - sum(1 for j in range(i, rows) if order_status(j) != "CONFIRMED")
    return written, expected


# --- Measurements --------------------------------------------------------------------


def floor(url: str, report: Path) -> float:
    columns = ", ".join(f"{name} text" for name in STRIPE_HEADER.split(","))
    with psycopg.connect(url) as connection:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE TEMPORARY TABLE floor_staging ({columns})")
            with cursor.copy("COPY floor_staging FROM STDIN (FORMAT csv, HEADER true)") as copy, report.open("rb") as f:
                while block := f.read(1 << 20):
                    copy.write(block)
            cursor.execute(
                """
                SELECT CASE WHEN s.payment_intent_id IS NULL THEN 'missing'
                            WHEN o.id IS NULL THEN 'unknown'
                            WHEN o.payment_amount = round(s.gross::numeric * 100) THEN 'matched'
                            ELSE 'mismatch' END, count(*)
                FROM floor_staging s
                FULL OUTER JOIN orders o ON o.payment_provider = 'stripe' AND o.payment_reference = s.payment_intent_id
                GROUP BY 1
                """
            )
            cursor.fetchall()
        elapsed = time.perf_counter() - started
        connection.rollback()
    return elapsed


def run_engine(url: str, report: Path) -> dict:
    """The real code path in a fresh child process; returns its wall time, peak RSS and result."""
    completed = subprocess.run([sys.executable, __file__, "--engine", url, str(report)],
                               capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        console.print(completed.stderr[-3000:])
        raise SystemExit(f"the engine's process failed (exit {completed.returncode})")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def engine_child(url: str, report_path: str) -> None:
    from conveyor.adapters.database import Database, create_engine_for
    from conveyor.reconciliation.loading import readers_for
    from conveyor.reconciliation.service import ReconciliationService, direct_connection
    from conveyor.reconciliation.sources import open_source

    database = Database(create_engine_for(url, pool_size=2))
    service = ReconciliationService(database, lambda: direct_connection(database.engine))
    started = time.perf_counter()
    report = open_source(report_path)
    run = service.submit(report)
    run = service.execute(run["id"], report)
    elapsed = time.perf_counter() - started
    # Kilobytes on Linux. Report readers run beside the engine's process: count each at the
    # largest one's peak (an upper bound on what they held at once).
    readers = readers_for(Path(report_path).stat().st_size)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if readers > 1:
        peak_kb += readers * resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"seconds": elapsed, "peak_rss_mb": peak_kb / 1024, "readers": readers, "status": run["status"],
                      "error": run["error"], "counts": run["counts"], "rows_loaded": run["rows_loaded"]}))


# --- Databases -----------------------------------------------------------------------


def measure(server: str, rows: int, workdir: Path) -> dict:
    with scratch_database(server, f"bench_reconcile_{rows}") as migrated_url:
        url = libpq_url(migrated_url)
        console.print(f"[{rows:,}] writing {rows:,} orders and a Stripe export…")
        with psycopg.connect(url, autocommit=True) as connection:
            write_orders(connection, rows)
        report = workdir / f"stripe_{rows}.csv"
        report_rows, expected = write_report(report, rows)
        console.print(f"[{rows:,}] report: {report_rows:,} rows, {report.stat().st_size / 1e6:.0f} MB; floor…")
        floors = sorted(floor(url, report) for _ in range(FLOOR_ROUNDS))
        floor_seconds = floors[len(floors) // 2]
        console.print(f"[{rows:,}] floor {floor_seconds:.2f} s (median of {', '.join(f'{f:.2f}' for f in floors)}); engine…")
        engine = run_engine(url, report)
        console.print(f"[{rows:,}] engine {engine['seconds']:.2f} s, peak RSS {engine['peak_rss_mb']:.0f} MB"
                      f" ({engine['readers']} report reader(s))")
        counts_ok = engine["status"] == "COMPLETED" and all(
            engine["counts"][category] == expected.get(category, 0) for category in engine["counts"])
        if not counts_ok:
            console.print(f"[red]counts differ[/red]: engine {engine['counts']} {engine['error']}, expected {dict(expected)}")
        return {"rows": report_rows, "orders": rows, "seconds": round(engine["seconds"], 3),
                "floor_seconds": round(floor_seconds, 3), "ratio": round(engine["seconds"] / floor_seconds, 2),
                "peak_rss_mb": round(engine["peak_rss_mb"], 1), "counts": engine["counts"], "counts_ok": counts_ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=100_000)
    parser.add_argument("--engine", nargs=2, metavar=("URL", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        engine_child(*args.engine)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-bench-reports-"))
    try:
        with disposable_server() as server:
            small = measure(server, args.small_rows, workdir)
            large = measure(server, args.rows, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    flatness = large["peak_rss_mb"] / small["peak_rss_mb"]
    summary = {
        "benchmark": "reconcile",
        **{key: large[key] for key in ("rows", "orders", "seconds", "floor_seconds", "ratio", "peak_rss_mb", "counts")},
        "small": {key: small[key] for key in ("rows", "seconds", "floor_seconds", "ratio", "peak_rss_mb")},
        "rss_flatness": round(flatness, 2),
        "targets": {"ratio": TARGET_RATIO, "peak_rss_mb": TARGET_RSS_MB, "rss_flatness": TARGET_FLATNESS},
        "met": {"ratio": large["ratio"] <= TARGET_RATIO, "peak_rss_mb": large["peak_rss_mb"] <= TARGET_RSS_MB,
                "rss_flatness": flatness <= TARGET_FLATNESS},
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0 if small["counts_ok"] and large["counts_ok"] else 2


if __name__ == "__main__":
    sys.exit(main())
