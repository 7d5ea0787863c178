"""Worker throughput against PostgreSQL, beside a plain-SQL floor measured in the same run.

    python bench/worker_throughput.py [--batches 500] [--warmup 20] [--rounds N] [--history 50000]

Both sides process the same orders, in batches of 10 orders x 3 lines, each into
a fresh database of its own on the same server:

- worker: the real code path, BatchProcessor -> OrderStore -> Database over a
  direct psycopg connection (pool of one), fed real `order.place` messages;
- floor: one psycopg connection running, per batch, a multi-row INSERT of
  orders, a multi-row INSERT of lines, one set-based conditional stock UPDATE,
  a multi-row INSERT of events, then COMMIT.

The two sides take turns batch by batch (--rounds splits the timed batches into
longer turns instead), so that whatever slows the machine for a moment hits both
alike; the reported rates are the medians over rounds and the ratio is the ratio
of those medians. Both databases start with the same --history of earlier
orders and fresh planner statistics, as a database in service has.
Messages and rows are built before any clock starts. The database comes from
DATABASE_URL, or else an embedded PostgreSQL in a temporary folder; either way
the run creates its own databases (bench_<random>_worker / _floor) and drops
them at the end, so it never touches anyone's data.

Progress goes to stderr; stdout gets exactly one JSON line. The exit code is 0
whether or not the target is met: this is a report, not a test. It is non-zero
only when the run could not be trusted (an order not confirmed, stock not
conserved), because a benchmark that measured the wrong thing is worse than none.
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import json
import logging
import os
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import psycopg
from psycopg.types.json import Jsonb
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from conveyor.adapters.database import Database, create_engine_for
from conveyor.adapters.order_store import OrderStore
from conveyor.domain.orders import order_id_for, request_fingerprint
from conveyor_tools.local.database import disposable_server, libpq_url, scratch_database
from conveyor.messages import place_message
from conveyor.schemas import parse_order_request
from conveyor.services.processing import BatchProcessor, QueueRecord

ORDERS_PER_BATCH = 10
LINES_PER_ORDER = 3
TARGET_RATIO = 0.6
SKU_COUNT = 200
# Far more stock than any run can take, so every order confirms.
INITIAL_STOCK = 10_000_000
CURRENCY = "USD"

console = Console(stderr=True)


# --- The orders both sides process -------------------------------------------------


@dataclass(frozen=True)
class SkuItem:
    sku: str
    unit_price: int


@dataclass(frozen=True)
class BenchOrder:
    """One order as the worker receives it (a queue record) and as the floor writes it (rows)."""

    record: QueueRecord
    order_row: tuple
    line_rows: tuple[tuple, ...]
    reservation: dict[str, int]
    event_row: tuple


def make_catalog() -> list[SkuItem]:
    return [SkuItem(f"SKU-{n:04d}", 100 + 25 * n) for n in range(SKU_COUNT)]


def make_order(rng: random.Random, client_id: uuid.UUID, catalog: list[SkuItem], number: int) -> BenchOrder:
    """Build an order message the way OrderService.place_order does, plus the floor's rows."""
    items = rng.sample(catalog, LINES_PER_ORDER)
    quantities = [rng.randint(1, 3) for _ in items]
    request = {
        "currency": CURRENCY,
        "lines": [{"sku": item.sku, "quantity": q} for item, q in zip(items, quantities)],
        "payment": {
            "provider": "stripe",
            "reference": f"pi_{rng.getrandbits(96):024x}",
            "amount": sum(item.unit_price * q for item, q in zip(items, quantities)),
        },
        "customer": {"name": f"Customer {number}", "email": f"customer{number}@example.com"},
        "shipping_address": {"line1": f"{number} Main St", "city": "Springfield", "postal_code": "12345", "country": "US"},
    }
    # Same normalisation, id and fingerprint as the API, so the worker sees real messages.
    order = parse_order_request(json.dumps(request).encode()).model_dump(mode="json", exclude_none=True)
    key = f"bench-{number}"
    order_id = order_id_for(client_id, key)
    fingerprint = request_fingerprint(order)
    accepted_at = datetime.now(UTC)
    message = place_message(order_id=order_id, client_id=client_id, idempotency_key=key,
                            fingerprint=fingerprint, order=order, accepted_at=accepted_at)
    message_id, correlation_id = str(uuid.UUID(int=rng.getrandbits(128))), f"bench-corr-{number}"
    record = QueueRecord(message_id=message_id, body=json.dumps(message), correlation_id=correlation_id)

    reservation = {item.sku: q for item, q in zip(items, quantities)}
    details = {k: order[k] for k in ("customer", "shipping_address")}
    payment = order["payment"]
    order_row = (
        order_id, client_id, "CONFIRMED", key, fingerprint, CURRENCY, payment["amount"],
        payment["provider"], payment["reference"], payment["amount"],
        Jsonb(details), Jsonb(reservation), accepted_at,
    )
    line_rows = tuple(
        (order_id, line_no, item.sku, q, item.unit_price)
        for line_no, (item, q) in enumerate(zip(items, quantities), start=1)
    )
    event_row = (order_id, message_id, correlation_id)
    return BenchOrder(record, order_row, line_rows, reservation, event_row)


def make_batches(count: int, client_id: uuid.UUID, catalog: list[SkuItem], seed: int) -> list[list[BenchOrder]]:
    rng = random.Random(seed)
    orders = [make_order(rng, client_id, catalog, n) for n in range(count * ORDERS_PER_BATCH)]
    return [orders[i : i + ORDERS_PER_BATCH] for i in range(0, len(orders), ORDERS_PER_BATCH)]


# --- Databases ------------------------------------------------------------------------


# Orders already in the database before the run, so that both sides work against tables and
# indexes of a production size, with fresh planner statistics, not against empty ones.
HISTORY_CLIENT_ID = uuid.UUID(int=0xB0B)
SEED_HISTORY = """
INSERT INTO orders (id, client_id, status, idempotency_key, request_fingerprint, currency, total_amount,
    payment_provider, payment_reference, payment_amount, details, reservation, accepted_at, created_at)
SELECT gen_random_uuid(), %(client)s, CASE WHEN n %% 10 = 0 THEN 'REJECTED' ELSE 'CONFIRMED' END,
    'history-' || n, md5(n::text), %(currency)s, 1000, 'stripe', 'pi_history_' || n, 1000,
    '{"customer": {"name": "History"}}', '{}', now() - make_interval(mins => n), now() - make_interval(mins => n)
FROM generate_series(1, %(count)s) AS n;
INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price)
SELECT o.id, l, 'SKU-' || lpad((l * 7)::text, 4, '0'), 1, 100 FROM orders AS o, generate_series(1, 3) AS l;
INSERT INTO order_events (order_id, from_status, to_status, cause)
SELECT id, NULL, status, 'history' FROM orders
"""


def seed(url: str, client_id: uuid.UUID, catalog: list[SkuItem], history: int) -> None:
    """The bench client, the catalog, `history` earlier orders of another client, fresh statistics."""
    with psycopg.connect(libpq_url(url), autocommit=True) as connection:
        with connection.transaction():
            connection.execute(
                "INSERT INTO clients (id, name, api_key_hash) VALUES (%s, 'bench', %s), (%s, 'history', %s)",
                (client_id, uuid.uuid4().hex, HISTORY_CLIENT_ID, uuid.uuid4().hex),
            )
            connection.cursor().executemany(
                "INSERT INTO catalog (sku, name, currency, unit_price, stock_available) VALUES (%s, %s, %s, %s, %s)",
                [(item.sku, item.sku, CURRENCY, item.unit_price, INITIAL_STOCK) for item in catalog],
            )
            if history:
                for statement in SEED_HISTORY.split(";"):
                    connection.execute(statement, {"client": HISTORY_CLIENT_ID, "currency": CURRENCY,
                                                   "count": history})
        connection.execute("VACUUM ANALYZE")


# --- The two sides ----------------------------------------------------------------------


class WorkerSide:
    """The real worker code path, with one pooled connection like a Lambda instance."""

    name = "worker"

    def __init__(self, url: str):
        self.database = Database(create_engine_for(url, pool_size=1))
        logger = logging.getLogger("bench.worker")
        logger.setLevel(logging.WARNING)  # drop the per-message INFO lines: measure processing, not log I/O
        self.processor = BatchProcessor(OrderStore(self.database), logger)
        self.results: list[Any] = []

    def prepare(self, batch: list[BenchOrder]) -> list[QueueRecord]:
        return [order.record for order in batch]

    def run(self, prepared: list[QueueRecord]) -> None:
        self.results.append(self.processor.process(prepared))

    def check_results(self) -> None:
        for result in self.results:
            if result.failed_message_ids or result.outcomes != {"confirmed": ORDERS_PER_BATCH}:
                fail(f"worker batch did not confirm every order: {dict(result.outcomes)}")
        self.results.clear()

    def close(self) -> None:
        self.database.dispose()


@dataclass(frozen=True)
class FloorBatch:
    order_count: int
    orders: list
    lines: list
    stock: list
    stock_rows: int
    events: list


def values_sql(rows: int, columns: int, row_template: str | None = None) -> str:
    """`($1, $2), ($3, $4), ...`: PostgreSQL's own placeholders, numbered row by row.

    Native placeholders (with psycopg's RawCursor) because psycopg re-parses a
    `%s` query on every call once it has over 50 parameters, which would charge
    the floor ~1 ms of client CPU per statement that plain SQL need not pay.
    """
    template = row_template or "(" + ", ".join(["{}"] * columns) + ")"
    return ", ".join(
        template.format(*(f"${row * columns + column + 1}" for column in range(columns)))
        for row in range(rows)
    )


@functools.cache
def floor_statements(order_count: int, stock_rows: int) -> tuple[str, str, str, str]:
    """The floor's four statements for a batch of this shape (cached: batches repeat shapes)."""
    insert_orders = (
        "INSERT INTO orders (id, client_id, status, idempotency_key, request_fingerprint, currency,"
        " total_amount, payment_provider, payment_reference, payment_amount, details, reservation,"
        " accepted_at) VALUES " + values_sql(order_count, 13)
    )
    insert_lines = "INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price) VALUES " + values_sql(
        order_count * LINES_PER_ORDER, 5
    )
    update_stock = (
        "UPDATE catalog SET stock_available = catalog.stock_available - wanted.quantity,"
        " stock_reserved = catalog.stock_reserved + wanted.quantity, updated_at = now()"
        " FROM (VALUES " + values_sql(stock_rows, 2, "({}::text, {}::integer)") + ") AS wanted (sku, quantity)"
        " WHERE catalog.sku = wanted.sku AND catalog.stock_available >= wanted.quantity"
    )
    insert_events = (
        "INSERT INTO order_events (order_id, from_status, to_status, cause, message_id, correlation_id)"
        " VALUES " + values_sql(order_count, 3, "({}, NULL, 'CONFIRMED', 'stock reserved', {}, {})")
    )
    return insert_orders, insert_lines, update_stock, insert_events


class FloorSide:
    """Plain SQL: the same rows written set-based over one connection, one transaction per batch."""

    name = "floor"

    def __init__(self, url: str):
        self.connection = psycopg.connect(libpq_url(url), cursor_factory=psycopg.RawCursor)

    def prepare(self, batch: list[BenchOrder]) -> FloorBatch:
        # Stock moves once per SKU per batch, as the worker's stock_change does.
        wanted: dict[str, int] = {}
        for order in batch:
            for sku, quantity in order.reservation.items():
                wanted[sku] = wanted.get(sku, 0) + quantity
        return FloorBatch(
            order_count=len(batch),
            orders=[value for order in batch for value in order.order_row],
            lines=[value for order in batch for row in order.line_rows for value in row],
            stock=[value for item in sorted(wanted.items()) for value in item],
            stock_rows=len(wanted),
            events=[value for order in batch for value in order.event_row],
        )

    def run(self, batch: FloorBatch) -> None:
        insert_orders, insert_lines, update_stock, insert_events = floor_statements(
            batch.order_count, batch.stock_rows
        )
        cursor = self.connection.cursor()
        cursor.execute(insert_orders, batch.orders)
        cursor.execute(insert_lines, batch.lines)
        cursor.execute(update_stock, batch.stock)
        if cursor.rowcount != batch.stock_rows:
            fail(f"floor stock update moved {cursor.rowcount} of {batch.stock_rows} SKUs")
        cursor.execute(insert_events, batch.events)
        self.connection.commit()

    def check_results(self) -> None:
        pass  # run() checks each batch's stock update as it goes

    def close(self) -> None:
        self.connection.close()


def timed_chunk(side: WorkerSide | FloorSide, prepared: list, profiler: cProfile.Profile | None) -> float:
    """Seconds to process prepared batches; only this loop is on the clock."""
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    for batch in prepared:
        side.run(batch)
    elapsed = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
    side.check_results()
    return elapsed


# --- Verification ------------------------------------------------------------------------


class BenchmarkInvalid(RuntimeError):
    pass


def fail(message: str) -> NoReturn:
    raise BenchmarkInvalid(message)


def verify(url: str, side: str, batches: list[list[BenchOrder]]) -> None:
    """Every order CONFIRMED with its lines and event; stock conserved and reserved exactly as ordered."""
    orders = [order for batch in batches for order in batch]
    expected_reserved: dict[str, int] = {}
    for order in orders:
        for sku, quantity in order.reservation.items():
            expected_reserved[sku] = expected_reserved.get(sku, 0) + quantity
    with psycopg.connect(libpq_url(url)) as connection:
        statuses = dict(connection.execute(
            "SELECT status, count(*) FROM orders WHERE client_id <> %s GROUP BY status", (HISTORY_CLIENT_ID,)
        ).fetchall())
        lines, events = connection.execute(
            "SELECT (SELECT count(*) FROM order_lines JOIN orders ON orders.id = order_id WHERE client_id <> %(h)s),"
            " (SELECT count(*) FROM order_events JOIN orders ON orders.id = order_id WHERE client_id <> %(h)s)",
            {"h": HISTORY_CLIENT_ID},
        ).fetchone()
        stock = connection.execute("SELECT sku, stock_available, stock_reserved FROM catalog").fetchall()
    problems = []
    if statuses != {"CONFIRMED": len(orders)}:
        problems.append(f"orders by status {statuses}, expected {{'CONFIRMED': {len(orders)}}}")
    if lines != len(orders) * LINES_PER_ORDER:
        problems.append(f"{lines} order lines, expected {len(orders) * LINES_PER_ORDER}")
    if events != len(orders):
        problems.append(f"{events} order events, expected {len(orders)}")
    for sku, available, reserved in stock:
        if available + reserved != INITIAL_STOCK or reserved != expected_reserved.get(sku, 0):
            problems.append(f"{sku}: available {available} + reserved {reserved}, expected reserved "
                            f"{expected_reserved.get(sku, 0)} of {INITIAL_STOCK}")
            break
    if problems:
        fail(f"{side} database is not what the orders should have produced: " + "; ".join(problems))


# --- The run -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=500, help="timed batches per side (10 orders each)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed batches per side before measuring")
    parser.add_argument("--rounds", type=int, help="alternating rounds the timed batches are split into"
                        " (default: one batch a round)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--history", type=int, default=50_000,
                        help="orders already in each database before the run (0: start from empty tables)")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the worker's timed batches (slows it)")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = args.batches
    if args.batches < args.rounds or args.rounds < 1 or args.warmup < 0:
        parser.error("need --rounds >= 1, --batches >= --rounds and --warmup >= 0")
    return args


def split(items: list, parts: int) -> list[list]:
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


def measure(
    sides: list[WorkerSide | FloorSide],
    warmup: list[list[BenchOrder]],
    timed: list[list[BenchOrder]],
    rounds: int,
    profiler: cProfile.Profile | None,
) -> dict[str, list[float]]:
    """Orders per second of each side, per round; the sides swap who goes first every round."""
    for side in sides:
        for batch in warmup:
            side.run(side.prepare(batch))
        side.check_results()
    rates: dict[str, list[float]] = {side.name: [] for side in sides}
    with Progress(
        TextColumn("{task.description:>7}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, refresh_per_second=4,  # few redraws: the progress thread shares 2 cores with the run
    ) as progress:
        tasks = {side.name: progress.add_task(side.name, total=len(timed)) for side in sides}
        for number, chunk in enumerate(split(timed, rounds)):
            for side in sides if number % 2 == 0 else reversed(sides):
                prepared = [side.prepare(batch) for batch in chunk]
                elapsed = timed_chunk(side, prepared, profiler if side.name == "worker" else None)
                rates[side.name].append(len(chunk) * ORDERS_PER_BATCH / elapsed)
                progress.advance(tasks[side.name], len(chunk))
    return rates


def spread(values: list[float], fmt: str) -> str:
    """min / quartiles / max: enough to tell a steady run from a noisy one."""
    q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return "  ".join(f"{label} {fmt.format(v)}" for label, v in
                     zip(("min", "q1", "median", "q3", "max"), (min(values), q1, median, q3, max(values))))


def run(args: argparse.Namespace) -> tuple[dict[str, list[float]], str]:
    """Orders per second of each side by round, and where the database came from."""
    catalog = make_catalog()
    client_id = uuid.UUID(int=random.Random(args.seed).getrandbits(128))
    with console.status("building order messages"):
        batches = make_batches(args.warmup + args.batches, client_id, catalog, args.seed)
    warmup, timed = batches[: args.warmup], batches[args.warmup :]
    profiler = cProfile.Profile() if args.profile else None

    source = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded"
    with disposable_server() as server_url:
        console.print(f"database: {source}; migrating a worker and a floor database,"
                      f" each seeded with {args.history:,} earlier orders")
        with scratch_database(server_url, "bench_worker") as worker_url, \
             scratch_database(server_url, "bench_floor") as floor_url:
            for url in (worker_url, floor_url):
                seed(url, client_id, catalog, args.history)
            sides: list[WorkerSide | FloorSide] = [WorkerSide(worker_url), FloorSide(floor_url)]
            try:
                rates = measure(sides, warmup, timed, args.rounds, profiler)
            finally:
                for side in sides:
                    side.close()
            verify(worker_url, "worker", batches)
            verify(floor_url, "floor", batches)

    if profiler is not None:
        profiler.dump_stats(args.profile)
        console.print(f"worker profile written to {args.profile} (python -m pstats {args.profile})")
    return rates, source


def report(rates: dict[str, list[float]], source: str, orders: int, history: int, seconds: float) -> dict[str, Any]:
    """Say on stderr how the run went; return the JSON summary."""
    worker, floor = statistics.median(rates["worker"]), statistics.median(rates["floor"])
    ratio = worker / floor
    for name, values in rates.items():
        console.print(f"{name:>7} orders/s over {len(values)} rounds: " + spread(values, "{:,.0f}"))
    paired = [w / f for w, f in zip(rates["worker"], rates["floor"])]
    console.print("  worker/floor by round: " + spread(paired, "{:.0%}"))
    console.print(f"worker {worker:,.0f} orders/s, floor {floor:,.0f} orders/s: {ratio:.0%} of the floor"
                  f" (target {TARGET_RATIO:.0%}); run took {seconds:.1f} s")
    if ratio < TARGET_RATIO:
        console.print(f"[bold red]TARGET MISSED[/]: the worker reaches {ratio:.0%} of the floor,"
                      f" below the {TARGET_RATIO:.0%} target")
    return {
        "benchmark": "worker_throughput",
        "orders": orders,
        "worker_orders_per_s": round(worker, 1),
        "floor_orders_per_s": round(floor, 1),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "database": source,
        "history_orders": history,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        rates, source = run(args)
    except BenchmarkInvalid as exc:
        console.print(f"[bold red]BENCHMARK INVALID[/]: {exc}")
        return 2
    summary = report(rates, source, args.batches * ORDERS_PER_BATCH, args.history, time.perf_counter() - started)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
