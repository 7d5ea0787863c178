"""Builders shared by the integration and end-to-end tests."""
from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO
from datetime import UTC, datetime

import requests
import sqlalchemy as sa
from psycopg.pq import Trace

from conveyor.adapters.database import Database
from conveyor.domain.orders import order_id_for, request_fingerprint
from conveyor.messages import cancel_message, place_message
from conveyor.services.admin import NewClient, create_client, import_catalog
from conveyor.services.processing import QueueRecord


def order_body(lines: list[tuple[str, int]], amount: int, currency: str = "USD", reference: str | None = None) -> dict:
    """An order request; its payment reference is new unless given (one payment settles one order)."""
    return {
        "currency": currency,
        "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines],
        "payment": {"provider": "stripe", "reference": reference or f"pi_{uuid.uuid4().hex}", "amount": amount},
    }


@contextmanager
def statements_sent(engine: sa.Engine) -> Iterator[list[str]]:
    """The statements sent on connections checked out of `engine` in the block, as libpq's protocol
    trace shows them: one entry, the message name, per simple Query or extended-protocol Execute."""
    sent: list[str] = []
    traces: dict[int, IO[bytes]] = {}

    def start(dbapi_connection, *_):
        trace = traces[id(dbapi_connection)] = tempfile.TemporaryFile()
        dbapi_connection.pgconn.trace(trace.fileno())
        dbapi_connection.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)

    def stop(dbapi_connection, *_):
        trace = traces.pop(id(dbapi_connection), None)
        if trace is None:
            return
        dbapi_connection.pgconn.untrace()
        trace.seek(0)
        for line in trace.read().decode(errors="replace").splitlines():
            direction, _, message = line.split("\t", 3)[:3]
            if direction == "F" and message.split(" ")[0] in ("Query", "Execute"):
                sent.append(message.split(" ")[0])
        trace.close()

    sa.event.listen(engine, "checkout", start)
    sa.event.listen(engine, "checkin", stop)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "checkout", start)
        sa.event.remove(engine, "checkin", stop)


class Shop:
    """A client and a catalog in a real database, and queue records as the API would send them."""

    def __init__(self, database: Database, catalog: list[tuple[str, int, int]], currency: str = "USD"):
        self.database = database
        self.currency = currency
        self.prices = {sku: price for sku, price, _ in catalog}
        import_catalog(
            database,
            [{"sku": sku, "name": sku, "currency": currency, "unit_price": price, "stock": stock}
             for sku, price, stock in catalog],
        )
        self.client = self.new_client()

    def new_client(self) -> NewClient:
        return create_client(self.database, f"client-{uuid.uuid4().hex[:8]}")

    def place(self, key: str, lines: list[tuple[str, int]], amount: int | None = None,
              client: NewClient | None = None, message_id: str | None = None,
              reference: str | None = None) -> tuple[QueueRecord, uuid.UUID]:
        client = client or self.client
        if amount is None:
            amount = sum(self.prices.get(sku, 0) * quantity for sku, quantity in lines)
        order = order_body(lines, amount, self.currency, reference=reference or f"pi_{key}")
        order_id = order_id_for(client.id, key)
        message = place_message(
            order_id=order_id, client_id=client.id, idempotency_key=key,
            fingerprint=request_fingerprint(order), order=order, accepted_at=datetime.now(UTC),
        )
        return QueueRecord(message_id=message_id or str(uuid.uuid4()), body=json.dumps(message),
                           correlation_id=f"corr-{key}"), order_id

    def cancel(self, order_id: uuid.UUID, client: NewClient | None = None) -> QueueRecord:
        message = cancel_message(order_id=order_id, client_id=(client or self.client).id, requested_at=datetime.now(UTC))
        return QueueRecord(message_id=str(uuid.uuid4()), body=json.dumps(message), correlation_id="corr-cancel")

    def stock(self) -> dict[str, tuple[int, int]]:
        rows = self.database.fetch_json(
            "SELECT COALESCE(json_object_agg(sku, json_build_array(stock_available, stock_reserved)), '{}')::text FROM catalog"
        )
        return {sku: (available, reserved) for sku, (available, reserved) in rows.items()}

    def status(self, order_id: uuid.UUID) -> str | None:
        return self.database.fetch_json(
            "SELECT to_json((SELECT status FROM orders WHERE id = CAST(:id AS uuid)))::text", {"id": str(order_id)}
        )

    def events(self, order_id: uuid.UUID) -> list[tuple[str | None, str]]:
        return [tuple(pair) for pair in self.database.fetch_json(
            "SELECT COALESCE(json_agg(json_build_array(from_status, to_status) ORDER BY id), '[]')::text"
            " FROM order_events WHERE order_id = CAST(:id AS uuid)", {"id": str(order_id)}
        )]


def eventually(check: Callable[[], object], timeout: float = 15.0, what: str = "the condition") -> object:
    """Poll `check` until it is truthy: for what a background thread or another process does."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)
    return result


class OutputLines:
    """The lines a child process writes to a pipe, read by a thread so a test can wait for one."""

    def __init__(self, stream: IO[str]):
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._lock:
                self._lines.append(line.rstrip("\n"))

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def wait_for_log(self, message: str, timeout: float = 15.0, **fields: object) -> dict:
        """The first JSON log line with this message (and these fields), once the process has written it."""
        def logged() -> dict | None:
            for line in self.lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("message") == message and \
                        all(record.get(name) == value for name, value in fields.items()):
                    return record
            return None
        return eventually(logged, timeout, f"the log line {message!r}")

    def finished(self, timeout: float = 10.0) -> str:
        """All the text, once the process has closed the pipe."""
        self._reader.join(timeout)
        return "\n".join(self.lines)


def finished_run(read: Callable[[], dict], timeout: float = 15.0) -> dict:
    """Poll a reconciliation run (`read` fetches it) until it is COMPLETED or FAILED."""
    return eventually(lambda: (run := read())["status"] in ("COMPLETED", "FAILED") and run, timeout,
                      "the reconciliation run to finish")


def console_run(client, location: str, headers: dict, timeout: float = 15.0) -> dict:
    """A run through a Flask test client of the console, once finished."""
    return finished_run(lambda: client.get(location, headers=headers).get_json(), timeout)


def http_run(base_url: str, location: str, headers: dict, timeout: float = 30.0) -> dict:
    """A run through a console served over HTTP, once finished."""
    return finished_run(lambda: requests.get(base_url + location, headers=headers, timeout=5).json(), timeout)
