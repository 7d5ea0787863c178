"""Data API round trips per worker batch and per GET, and what they cost at 25 ms a call.

    python bench/dataapi_round_trips.py [--batches 20] [--latency-ms 25]

The real code path (BatchProcessor -> OrderStore -> DataApiDatabase -> boto3) runs
against the local Data API endpoint (conveyor_tools.dataapi.server) in front of PostgreSQL:

- calls: Data API calls for a batch of 10 new orders, for the same 10 messages
  delivered again (duplicates), and for one GET /orders/{id} (OrderStore.get_order),
  counted by the endpoint. The target is at most 3 per batch and 1 per GET;
- latency: the same three operations again with `--latency-ms` added to every call,
  standing in for the network between Lambda and the Data API. Medians and p95 over
  `--batches` batches.

The database comes from DATABASE_URL, or else an embedded PostgreSQL in a temporary
folder; the run creates its own database (bench_dataapi_<random>), migrates it and drops
it at the end. Progress goes to stderr; stdout gets exactly one JSON line. The exit code
is 0 whether or not the target is met; it is 2 only when the run cannot be trusted
(an order not confirmed, a duplicate not recognised).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

from rich.console import Console
from sqlalchemy.engine import make_url

from conveyor.adapters.database import Database, create_engine_for
from conveyor.adapters.order_store import OrderStore
from conveyor.dataapi.client import DataApiDatabase
from conveyor_tools.dataapi.server import LocalDataApi
from conveyor.domain.orders import order_id_for, request_fingerprint
from conveyor_tools.local.database import disposable_server, scratch_database
from conveyor.messages import place_message
from conveyor.services.admin import create_client, import_catalog
from conveyor.services.processing import BatchProcessor, QueueRecord

CLUSTER = "arn:aws:rds:us-east-1:123456789012:cluster:conveyor-bench"
SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:conveyor-bench-AbCdEf"
ORDERS_PER_BATCH = 10
TARGET_CALLS_PER_BATCH = 3
TARGET_CALLS_PER_GET = 1
CATALOG = [{"sku": f"SKU-{n}", "name": f"Item {n}", "currency": "USD", "unit_price": 100 + n, "stock": 10_000_000}
           for n in range(20)]

console = Console(stderr=True)


def fail(message: str) -> NoReturn:
    console.print(f"[red]untrustworthy run:[/red] {message}")
    sys.exit(2)


def make_batch(client_id: uuid.UUID, number: int) -> list[QueueRecord]:
    """Ten order.place messages as the API would queue them, three lines each."""
    records = []
    for index in range(ORDERS_PER_BATCH):
        items = [CATALOG[(number * 7 + index + line) % len(CATALOG)] for line in range(3)]
        order = {
            "currency": "USD",
            "lines": [{"sku": item["sku"], "quantity": 1} for item in items],
            "payment": {"provider": "stripe", "reference": f"pi_{number}_{index}",
                        "amount": sum(item["unit_price"] for item in items)},
        }
        key = f"bench-{number}-{index}"
        message = place_message(
            order_id=order_id_for(client_id, key), client_id=client_id, idempotency_key=key,
            fingerprint=request_fingerprint(order), order=order, accepted_at=datetime.now(UTC),
        )
        records.append(QueueRecord(message_id=str(uuid.uuid4()), body=json.dumps(message)))
    return records


def timed(action: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = action()
    return result, (time.perf_counter() - started) * 1000


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class Run:
    """One pass over `batches` new batches: each processed, processed again, and one order read."""

    def __init__(self, endpoint: LocalDataApi, processor: BatchProcessor, store: OrderStore, client_id: uuid.UUID):
        self.endpoint, self.processor, self.store, self.client_id = endpoint, processor, store, client_id
        self.calls: dict[str, list[int]] = {"new": [], "duplicate": [], "get": []}
        self.ms: dict[str, list[float]] = {"new": [], "duplicate": [], "get": []}

    def batch(self, number: int) -> None:
        records = make_batch(self.client_id, number)
        first = self._measure("new", lambda: self.processor.process(records))
        again = self._measure("duplicate", lambda: self.processor.process(records))
        order_id = json.loads(records[0].body)["order_id"]
        order = self._measure("get", lambda: self.store.get_order(self.client_id, uuid.UUID(order_id)))
        if first.outcomes != {"confirmed": ORDERS_PER_BATCH} or first.failed_message_ids:
            fail(f"batch {number} did not confirm every order: {dict(first.outcomes)}")
        if again.outcomes != {"duplicate": ORDERS_PER_BATCH}:
            fail(f"batch {number} delivered again was not recognised as duplicates: {dict(again.outcomes)}")
        if not order or order["status"] != "CONFIRMED":
            fail(f"order {order_id} cannot be read back through the Data API")

    def _measure(self, kind: str, action: Callable[[], Any]) -> Any:
        self.endpoint.reset_calls()
        result, elapsed = timed(action)
        self.calls[kind].append(sum(self.endpoint.calls.values()))
        self.ms[kind].append(elapsed)
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20, help="batches per pass (default 20)")
    parser.add_argument("--latency-ms", type=float, default=25.0, help="simulated network per call (default 25)")
    args = parser.parse_args(argv)

    logging.getLogger("bench.dataapi").setLevel(logging.WARNING)  # no per-message INFO lines
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    with disposable_server() as server_url, scratch_database(server_url, "bench_dataapi") as url, \
            LocalDataApi(url) as endpoint:
        console.print(f"local Data API on {endpoint.endpoint_url}, database {make_url(url).database}")
        # What a Lambda function has; boto3 reads the endpoint from the environment itself.
        os.environ.update(AWS_ENDPOINT_URL_RDS_DATA=endpoint.endpoint_url, AWS_EC2_METADATA_DISABLED="true")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.setdefault(name, "bench")
        direct = Database(create_engine_for(url, pool_size=1))
        import_catalog(direct, CATALOG)
        client_id = create_client(direct, "bench").id
        direct.dispose()

        data_api = DataApiDatabase(CLUSTER, SECRET, make_url(url).database)
        store = OrderStore(data_api)
        processor = BatchProcessor(store, logging.getLogger("bench.dataapi"))
        processor.process(make_batch(client_id, -1))  # warm connections on both sides

        counted = Run(endpoint, processor, store, client_id)
        for number in range(args.batches):
            counted.batch(number)
        console.print(f"calls: new batch {max(counted.calls['new'])}, duplicates {max(counted.calls['duplicate'])}, "
                      f"GET {max(counted.calls['get'])}")

        endpoint.latency_seconds = args.latency_ms / 1000
        slow = Run(endpoint, processor, store, client_id)
        for number in range(args.batches, 2 * args.batches):
            slow.batch(number)
        data_api.dispose()

    summary = {
        "batches": args.batches,
        "orders_per_batch": ORDERS_PER_BATCH,
        "calls_per_new_batch": max(counted.calls["new"]),
        "calls_per_duplicate_batch": max(counted.calls["duplicate"]),
        "calls_per_get": max(counted.calls["get"]),
        "injected_latency_ms_per_call": args.latency_ms,
        **{f"{kind}_ms_p50": round(statistics.median(slow.ms[kind]), 1) for kind in ("new", "duplicate", "get")},
        **{f"{kind}_ms_p95": round(percentile(slow.ms[kind], 0.95), 1) for kind in ("new", "duplicate", "get")},
        "no_latency_new_ms_p50": round(statistics.median(counted.ms["new"]), 1),
        "target_met": max(counted.calls["new"]) <= TARGET_CALLS_PER_BATCH
        and max(counted.calls["duplicate"]) <= TARGET_CALLS_PER_BATCH
        and max(counted.calls["get"]) <= TARGET_CALLS_PER_GET,
    }
    console.print(f"with {args.latency_ms:g} ms per call: new batch p50 {summary['new_ms_p50']} ms, "
                  f"duplicates p50 {summary['duplicate_ms_p50']} ms, GET p50 {summary['get_ms_p50']} ms")
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
