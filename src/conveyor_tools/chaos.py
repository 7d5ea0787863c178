"""`conveyor chaos`: the real worker code under everything at-least-once delivery can do.

The parent process plays SQS. It redelivers messages, shuffles them so a cancel can
overtake its order, lets visibility timeouts expire while a slow worker still runs,
and moves messages that keep failing to a DLQ. Worker processes run the real
BatchProcessor against PostgreSQL, and are told per batch to crash before or after
their write, to meet a transient database fault, or to find the cluster paused.
At the end the database is checked against invariants that hold only if every
effect happened exactly once.
"""
from __future__ import annotations

import heapq
import itertools
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection, wait
from typing import Any
from collections.abc import Callable

from sqlalchemy.engine import make_url

from conveyor.adapters.database import Database, create_engine_for
from conveyor.adapters.order_store import OrderStore, apply_batch_plan_statement
from conveyor.domain.orders import order_id_for, request_fingerprint
from conveyor.errors import TransientError
from conveyor.messages import cancel_message, place_message
from conveyor.services.admin import create_client, import_catalog

MAX_RECEIVE_COUNT = 5
FAULTS = ("crash_before_commit", "crash_after_commit", "database_fault", "cluster_paused", "slow")


@dataclass(frozen=True)
class ChaosSettings:
    orders: int = 18_500
    workers: int = 4
    cancel_share: float = 0.1
    poison_share: float = 0.002
    fault_rate: float = 0.05
    visibility_timeout: float = 0.5
    seed: int = 1
    naive: bool = False  # swap in a non-idempotent store: the harness must then fail
    data_api: bool = False  # workers reach PostgreSQL through a local Data API endpoint, as on Lambda


@dataclass(eq=False)
class QueuedMessage:
    message_id: str
    body: str
    deliveries_left: int  # extra copies still to deliver after a successful delete
    receive_count: int = 0
    generation: int = 0  # bumped whenever the message's visibility changes
    deleted: bool = False
    last_failure: str | None = None


class SimulatedQueue:
    """SQS semantics that matter here: at-least-once, no order, visibility timeout, redrive.

    Every change of a message's visibility bumps its generation; a ready or waiting
    entry of an older generation is stale and skipped, so a message is handed out
    at most once per visibility period.
    """

    def __init__(self, visibility_timeout: float, rng: random.Random):
        self.visibility_timeout = visibility_timeout
        self.rng = rng
        self.ready: list[tuple[int, QueuedMessage]] = []  # (generation, message)
        self.waiting: list[tuple[float, int, int, QueuedMessage]] = []  # (visible at, seq, generation, message)
        self.sequence = itertools.count()
        self.remaining = 0
        self.dlq: dict[str, str] = {}  # message id -> reason
        self.counts: Counter = Counter()

    def add(self, message: QueuedMessage) -> None:
        self.ready.append((message.generation, message))
        self.remaining += 1
        self.counts["messages"] += 1

    def _hide_until(self, message: QueuedMessage, visible_at: float) -> None:
        message.generation += 1
        heapq.heappush(self.waiting, (visible_at, next(self.sequence), message.generation, message))

    @staticmethod
    def _current(generation: int, message: QueuedMessage) -> bool:
        return generation == message.generation and not message.deleted

    def _finish(self, message: QueuedMessage) -> None:
        message.deleted = True
        message.generation += 1
        self.remaining -= 1

    def receive(self, now: float, limit: int = 10) -> list[QueuedMessage]:
        while self.waiting and self.waiting[0][0] <= now:
            _, _, generation, message = heapq.heappop(self.waiting)
            if self._current(generation, message):
                self.ready.append((generation, message))
        batch: list[QueuedMessage] = []
        while self.ready and len(batch) < limit:
            # Take a random visible message: SQS promises no order.
            index = self.rng.randrange(len(self.ready))
            self.ready[index], self.ready[-1] = self.ready[-1], self.ready[index]
            generation, message = self.ready.pop()
            if not self._current(generation, message):
                continue
            if message.receive_count >= MAX_RECEIVE_COUNT:
                self.dlq[message.message_id] = message.last_failure or "no reason recorded"
                self._finish(message)
                continue
            message.receive_count += 1
            self._hide_until(message, now + self.visibility_timeout)
            batch.append(message)
        return batch

    def delete(self, message: QueuedMessage, now: float) -> None:
        if message.deleted:
            return
        if message.deliveries_left > 0:
            # At-least-once: a copy of the same message comes back later, in no particular order.
            message.deliveries_left -= 1
            message.receive_count = 0
            self._hide_until(message, now + self.rng.uniform(0, self.visibility_timeout))
            self.counts["duplicates"] += 1
            return
        self._finish(message)

    @property
    def drained(self) -> bool:
        return self.remaining == 0


def build_workload(database: Database, settings: ChaosSettings, rng: random.Random) -> tuple[list[QueuedMessage], dict]:
    """Clients, a scarce catalog and the messages the API would have sent for them."""
    clients = [create_client(database, f"chaos-{uuid.uuid4().hex[:8]}") for _ in range(3)]
    catalog = {f"CHAOS-{n}-{uuid.uuid4().hex[:4]}": rng.randint(settings.orders // 20, settings.orders // 4)
               for n in range(8)}
    import_catalog(database, [{"sku": sku, "name": sku, "currency": "USD", "unit_price": 100, "stock": stock}
                              for sku, stock in catalog.items()])
    messages: list[QueuedMessage] = []
    placed: dict[str, str] = {}  # message id -> order id
    cancelled: dict[str, str] = {}
    poison: list[str] = []

    def queued(body: str) -> QueuedMessage:
        return QueuedMessage(str(uuid.uuid4()), body, deliveries_left=rng.randint(0, 2))

    for number in range(settings.orders):
        client = rng.choice(clients)
        key = f"chaos-{number}"
        lines = [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in rng.sample(sorted(catalog), k=rng.randint(1, 3))]
        order = {"currency": "USD", "lines": lines,
                 "payment": {"provider": "stripe", "reference": f"pi_{number}",
                             "amount": 100 * sum(line["quantity"] for line in lines)}}
        order_id = order_id_for(client.id, key)
        now = datetime.now(UTC)
        messages.append(queued(json.dumps(place_message(
            order_id=order_id, client_id=client.id, idempotency_key=key,
            fingerprint=request_fingerprint(order), order=order, accepted_at=now))))
        placed[messages[-1].message_id] = str(order_id)
        if rng.random() < settings.cancel_share:
            messages.append(queued(json.dumps(cancel_message(order_id=order_id, client_id=client.id, requested_at=now))))
            cancelled[messages[-1].message_id] = str(order_id)
        if rng.random() < settings.poison_share:
            messages.append(queued(rng.choice(['{"schema_version": 99, "type": "order.place"}', "\x00garbage", "{"])))
            poison.append(messages[-1].message_id)
    rng.shuffle(messages)  # a cancel may now come before its order
    return messages, {"catalog": catalog, "placed": placed, "cancelled": cancelled, "poison": poison}


# --- worker processes ---------------------------------------------------------------------


class InjectedFault(TransientError):
    """A transient failure the harness asked for; the worker treats it like a lost connection."""


class FaultyStore(OrderStore):
    """The real store, told per batch where to fail."""

    fault: str | None = None

    def read_batch_state(self, order_ids, skus, payments):
        if self.fault == "database_fault":
            raise InjectedFault("connection reset by peer (injected)")
        if self.fault == "cluster_paused":
            raise InjectedFault("DatabaseResumingException: the cluster is resuming (injected)")
        return super().read_batch_state(order_ids, skus, payments)

    def apply(self, plan):
        if self.fault == "crash_before_commit":
            os._exit(17)
        if self.fault == "slow":
            time.sleep(ChaosWorker.slow_seconds)
        summary = super().apply(plan)
        if self.fault == "crash_after_commit":
            os._exit(18)
        return summary


class NaiveStore(FaultyStore):
    """The classic bug: effects not tied to the idempotent claim. The harness must catch it."""

    def __init__(self, database: Database):
        super().__init__(database, apply_statement=NAIVE_APPLY_BATCH_PLAN)

    def read_batch_state(self, order_ids, skus, payments):
        catalog, _, payment_holders = super().read_batch_state(order_ids, skus, payments)
        return catalog, {}, payment_holders  # never asks whether a message was already processed


# Reserves stock for every planned confirmation, whether or not this delivery inserted the order.
NAIVE_APPLY_BATCH_PLAN = apply_batch_plan_statement(
    reserve_for="SELECT reservation, 1 AS direction FROM placement WHERE status = 'CONFIRMED'")


class ChaosWorker:
    slow_seconds = 0.0


def _worker_main(connection: Connection, database_url: str, naive: bool, slow_seconds: float,
                 data_api_url: str | None) -> None:
    import logging

    from conveyor.services.processing import BatchProcessor, QueueRecord

    logging.disable(logging.CRITICAL)  # thousands of injected faults would drown the terminal
    ChaosWorker.slow_seconds = slow_seconds
    if data_api_url:
        from conveyor.dataapi.client import DataApiDatabase
        from conveyor_tools.local.stack import LOCAL_CLUSTER_ARN, LOCAL_SECRET_ARN

        os.environ.update(AWS_ENDPOINT_URL_RDS_DATA=data_api_url, AWS_DEFAULT_REGION="us-east-1",
                          AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
        database = DataApiDatabase(LOCAL_CLUSTER_ARN, LOCAL_SECRET_ARN, make_url(database_url).database)
    else:
        database = Database(create_engine_for(database_url, pool_size=1))
    store = (NaiveStore if naive else FaultyStore)(database)
    processor = BatchProcessor(store, logging.getLogger("chaos-worker"), sleep=lambda _: None)
    while True:
        request = connection.recv()
        if request is None:
            return
        batch_id, records, fault = request
        store.fault = fault
        result = processor.process([QueueRecord(*record) for record in records])
        connection.send((batch_id, result.failure_reasons))


@dataclass
class WorkerHandle:
    process: Any
    connection: Connection
    in_flight: tuple[int, list[QueuedMessage]] | None = None


class ChaosRun:
    def __init__(self, settings: ChaosSettings, database_url: str, progress: Callable[[int, int], None] | None = None):
        self.settings = settings
        self.database_url = database_url
        self.progress = progress or (lambda done, total: None)
        self.rng = random.Random(settings.seed)
        self.queue = SimulatedQueue(settings.visibility_timeout, self.rng)
        self.context = multiprocessing.get_context("spawn")
        self.faults: Counter = Counter()
        self.data_api_url: str | None = None

    def _start_worker(self) -> WorkerHandle:
        parent, child = self.context.Pipe()
        process = self.context.Process(
            target=_worker_main,
            args=(child, self.database_url, self.settings.naive, self.settings.visibility_timeout * 1.5,
                  self.data_api_url),
            daemon=True,
        )
        process.start()
        child.close()
        return WorkerHandle(process, parent)

    def run(self) -> dict:
        database = Database(create_engine_for(self.database_url, pool_size=1))
        messages, workload = build_workload(database, self.settings, self.rng)
        for message in messages:
            self.queue.add(message)
        total = len(messages)
        data_api = _DataApiProcess(self.database_url) if self.settings.data_api else None
        self.data_api_url = data_api.url if data_api else None
        workers = [self._start_worker() for _ in range(self.settings.workers)]
        batch_ids = iter(range(1, 10**9))
        started = time.monotonic()
        try:
            while not self.queue.drained or any(w.in_flight for w in workers):
                now = time.monotonic()
                for worker in workers:
                    if worker.in_flight is None:
                        batch = self.queue.receive(now)
                        if batch:
                            fault = self._choose_fault()
                            batch_id = next(batch_ids)
                            worker.in_flight = (batch_id, batch)
                            records = [(m.message_id, m.body, None, m.receive_count) for m in batch]
                            worker.connection.send((batch_id, records, fault))
                busy = [w.connection for w in workers if w.in_flight]
                if not busy:
                    time.sleep(0.01)  # everything left is waiting out a visibility timeout
                    continue
                for ready in wait(busy, timeout=0.05):
                    worker = next(w for w in workers if w.connection is ready)
                    self._collect(worker, workers)
                self.progress(total - self.queue.remaining, total)
        finally:
            for worker in workers:
                try:
                    worker.connection.send(None)
                except OSError:
                    pass
                worker.process.join(timeout=5)
            if data_api:
                data_api.stop()
        self.progress(total, total)
        elapsed = time.monotonic() - started
        invariants = check_invariants(database, workload, self.queue.dlq)
        database.dispose()
        return {
            "messages": self.queue.counts["messages"],
            "duplicates": self.queue.counts["duplicates"],
            "crashes": self.faults["crash_before_commit"] + self.faults["crash_after_commit"],
            "faults": sum(self.faults.values()),
            "fault_kinds": dict(self.faults),
            "dlq": len(self.queue.dlq),
            "dlq_reasons": dict(Counter(reason.split(":")[0][:80] for reason in self.queue.dlq.values()).most_common(5)),
            "seconds": round(elapsed, 1),
            "naive": self.settings.naive,
            "path": "data_api" if self.settings.data_api else "direct",
            "invariants": invariants,
        }

    def _choose_fault(self) -> str | None:
        if self.rng.random() >= self.settings.fault_rate:
            return None
        fault = self.rng.choice(FAULTS)
        self.faults[fault] += 1
        return fault

    def _collect(self, worker: WorkerHandle, workers: list[WorkerHandle]) -> None:
        batch_id, batch = worker.in_flight  # type: ignore[misc]
        worker.in_flight = None
        try:
            answered_id, failures = worker.connection.recv()
        except (EOFError, OSError):
            # The worker died mid-batch: nothing is deleted; the visibility timeout brings it all back.
            for message in batch:
                message.last_failure = "worker crashed"
            worker.process.join()
            workers[workers.index(worker)] = self._start_worker()
            return
        assert answered_id == batch_id
        now = time.monotonic()
        for message in batch:
            if message.message_id in failures:
                message.last_failure = failures[message.message_id]
            else:
                self.queue.delete(message, now)


class _DataApiProcess:
    """`conveyor dataapi` in a process of its own, so its HTTP work does not slow the queue loop."""

    def __init__(self, database_url: str, startup_timeout: float = 30.0):
        from conveyor_tools.local.sqs import free_port

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "conveyor_tools.cli", "dataapi", "--port", str(port), "--database-url", database_url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        "the local Data API endpoint did not start; run `conveyor dataapi` to see why") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def check_invariants(database: Database, workload: dict, dlq: dict[str, str]) -> dict[str, bool]:
    catalog = workload["catalog"]
    state = database.fetch_json(
        """
        SELECT json_build_object(
            'orders', (SELECT COALESCE(json_object_agg(id, json_build_array(status, request_fingerprint IS NOT NULL)), '{}')
                       FROM orders WHERE id = ANY (ARRAY(
                           SELECT CAST(jsonb_array_elements_text(CAST(:ids AS jsonb)) AS uuid)))),
            'stock', (SELECT json_object_agg(sku, json_build_array(stock_available, stock_reserved))
                      FROM catalog WHERE sku = ANY (ARRAY(SELECT jsonb_object_keys(CAST(:catalog AS jsonb))))),
            'held', (SELECT COALESCE(json_object_agg(sku, held), '{}') FROM (
                SELECT key AS sku, sum(CAST(value AS integer)) AS held
                FROM orders, jsonb_each_text(reservation)
                WHERE status = 'CONFIRMED' AND key = ANY (ARRAY(SELECT jsonb_object_keys(CAST(:catalog AS jsonb))))
                GROUP BY key) h),
            'duplicate_transitions', (SELECT count(*) FROM (SELECT 1 FROM order_events
                GROUP BY order_id, from_status, to_status HAVING count(*) > 1) d)
        )::text
        """,
        {"ids": json.dumps(sorted(set(workload["placed"].values()))), "catalog": json.dumps(catalog)},
    )
    orders = state["orders"]  # order id -> [status, placed]
    placed_ok = all(
        orders.get(order_id, [None, False])[1] or message_id in dlq
        for message_id, order_id in workload["placed"].items()
    )
    cancels_ok = all(order_id in orders or message_id in dlq for message_id, order_id in workload["cancelled"].items())
    return {
        "every_order_exactly_one_row": len(orders) == len(set(workload["placed"].values())),
        "stock_never_negative": all(available >= 0 for available, _ in state["stock"].values()),
        "stock_conserved": all(
            available + reserved == catalog[sku] and reserved == state["held"].get(sku, 0)
            for sku, (available, reserved) in state["stock"].items()
        ),
        "every_message_in_database_or_dlq_with_reason": placed_ok and cancels_ok
        and all(message_id in dlq for message_id in workload["poison"]) and all(dlq.values()),
        "no_order_confirmed_after_its_cancel": all(
            orders.get(order_id, ["CANCELLED"])[0] != "CONFIRMED" or message_id in dlq
            for message_id, order_id in workload["cancelled"].items()
        ),
        "no_duplicate_transitions": state["duplicate_transitions"] == 0,
    }
