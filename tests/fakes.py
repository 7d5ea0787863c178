"""In-memory implementations of conveyor.ports for unit tests: the one model of a batch's effects."""
from __future__ import annotations

import contextlib
import copy
import json
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from conveyor import ports
from conveyor.domain.orders import HOLDS_PAYMENT_REFERENCE, BatchPlan, CatalogItem, KnownOrder, OrderStatus, PaymentKey
from conveyor.errors import RetryableConflict

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
# A cancel's placeholder filled in by its order: recorded, but not a change of status.
FILLED_PLACEHOLDER = (OrderStatus.CANCELLED, OrderStatus.CANCELLED)


class InMemoryOrderStore:
    """conveyor.ports.OrderStore over dicts, with APPLY_BATCH_PLAN's effects (tests/integration checks the
    SQL itself): an order row is claimed once; stock, lines and events follow only from rows a plan really
    changed; a cancel leaves a placeholder its order fills in; a plan is applied whole or not at all, and
    one that would take stock below zero fails like the CHECK constraint, and one that would give a payment
    reference a second active holder fails like the partial unique index (both retryable conflicts)."""

    def __init__(self, prices: dict[str, int] | None = None, stock: dict[str, int] | None = None,
                 currency: str = "USD"):
        self.prices = dict(prices or {})
        self.currency = currency
        self.available = dict(stock or {})
        self.reserved: Counter[str] = Counter()
        self.orders: dict[uuid.UUID, dict[str, Any]] = {}
        self.events: list[tuple[uuid.UUID, OrderStatus | None, OrderStatus]] = []
        self.clients: dict[str, dict[str, str]] = {}
        # What the tests look at and steer.
        self.reads: list[tuple[list[uuid.UUID], list[str]]] = []
        self.attempted: list[BatchPlan] = []
        self.applied: list[BatchPlan] = []
        self.list_calls: list[dict[str, Any]] = []
        self.client_lookups = 0
        self.before_apply: Callable[[BatchPlan], None] = lambda plan: None  # may raise to fail the statement
        self.read_error: BaseException | None = None

    # -- the worker's half ----------------------------------------------------------------------

    def pinned(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def read_batch_state(
        self, order_ids: list[uuid.UUID], skus: list[str], payments: list[PaymentKey]
    ) -> tuple[dict[str, CatalogItem], dict[uuid.UUID, KnownOrder], dict[PaymentKey, uuid.UUID]]:
        self.reads.append((list(order_ids), list(skus)))
        if self.read_error is not None:
            raise self.read_error
        catalog = {sku: CatalogItem(sku, self.currency, self.prices[sku], self.available[sku])
                   for sku in set(skus) if sku in self.prices}
        known = {order_id: KnownOrder(order_id, row["client_id"], row["status"], row["fingerprint"])
                 for order_id in order_ids if (row := self.orders.get(order_id)) is not None}
        wanted = set(payments)
        return catalog, known, {key: order_id for order_id, key in self._holders(self.orders) if key in wanted}

    @staticmethod
    def _holders(orders: dict[uuid.UUID, dict[str, Any]]) -> list[tuple[uuid.UUID, PaymentKey]]:
        return [(order_id, row["payment"]) for order_id, row in orders.items()
                if row["status"] in HOLDS_PAYMENT_REFERENCE and row.get("payment") is not None]

    def apply(self, plan: BatchPlan) -> dict[str, int]:
        self.attempted.append(plan)
        self.before_apply(plan)
        placed_ids = {p.command.order_id for p in plan.placements}
        assert not placed_ids & {c.command.order_id for c in plan.cancellations}, "one statement writes a row once"
        orders, events = copy.deepcopy(self.orders), list(self.events)
        available, reserved = dict(self.available), Counter(self.reserved)
        placed = cancelled = 0
        for placement in plan.placements:
            command = placement.command
            row = orders.get(command.order_id)
            if row is None:
                orders[command.order_id] = {
                    "client_id": command.client_id, "status": placement.status, "fingerprint": command.fingerprint,
                    "reservation": dict(placement.reservation), "created_at": self._created_at(orders),
                    "payment": command.payment.key}
                events.append((command.order_id, None, placement.status))
                for sku, quantity in placement.reservation.items():
                    available[sku] -= quantity
                    reserved[sku] += quantity
                placed += 1
            elif row["fingerprint"] is None and row["client_id"] == command.client_id:
                row["fingerprint"] = command.fingerprint
                row["payment"] = command.payment.key
                events.append((command.order_id, *FILLED_PLACEHOLDER))
                placed += 1
        for cancellation in plan.cancellations:
            cancel = cancellation.command
            row = orders.get(cancel.order_id)
            if row is None:
                orders[cancel.order_id] = {
                    "client_id": cancel.client_id, "status": OrderStatus.CANCELLED, "fingerprint": None,
                    "reservation": {}, "created_at": self._created_at(orders)}
                events.append((cancel.order_id, None, OrderStatus.CANCELLED))
            elif row["status"] is OrderStatus.CONFIRMED and row["client_id"] == cancel.client_id:
                row["status"] = OrderStatus.CANCELLED
                events.append((cancel.order_id, OrderStatus.CONFIRMED, OrderStatus.CANCELLED))
                for sku, quantity in row["reservation"].items():
                    available[sku] += quantity
                    reserved[sku] -= quantity
                cancelled += 1
        if any(quantity < 0 for quantity in available.values()):
            raise RetryableConflict('new row for relation "catalog" violates check constraint',
                                    "stock constraint raced by a concurrent worker", "23514")
        held = [key for _, key in self._holders(orders)]
        if len(held) != len(set(held)):
            raise RetryableConflict('duplicate key value violates unique constraint "orders_payment_reference_held"',
                                    "payment reference taken by a concurrent worker", "23505")
        self.orders, self.events, self.available, self.reserved = orders, events, available, reserved
        self.applied.append(plan)
        return {"placed": placed, "cancelled": cancelled}

    # -- the API's half -------------------------------------------------------------------------

    def add(self, client_id: uuid.UUID, order_id: uuid.UUID, status: str, fingerprint: str | None,
            created_at: datetime = EPOCH) -> None:
        """An order row as if the worker had recorded it."""
        self.orders[order_id] = {"client_id": client_id, "status": OrderStatus(status), "fingerprint": fingerprint,
                                 "reservation": {}, "created_at": created_at}

    def get_order_summary(self, client_id: uuid.UUID, order_id: uuid.UUID) -> dict[str, Any] | None:
        row = self._own_row(client_id, order_id)
        return None if row is None else {"status": row["status"].value, "fingerprint": row["fingerprint"]}

    def get_order(self, client_id: uuid.UUID, order_id: uuid.UUID) -> dict[str, Any] | None:
        row = self._own_row(client_id, order_id)
        return None if row is None else self._view(order_id, row)

    def list_orders(self, client_id: uuid.UUID, *, status: str | None, limit: int,
                    after: tuple[str, str] | None) -> list[dict[str, Any]]:
        self.list_calls.append({"status": status, "limit": limit, "after": after})
        rows = [(row["created_at"], order_id, row) for order_id, row in self.orders.items()
                if row["client_id"] == client_id and (status is None or row["status"].value == status)]
        if after is not None:
            bound = (datetime.fromisoformat(after[0]), uuid.UUID(after[1]))
            rows = [entry for entry in rows if (entry[0], entry[1]) < bound]
        rows.sort(key=lambda entry: (entry[0], entry[1]), reverse=True)
        return [self._view(order_id, row) for _, order_id, row in rows[:limit]]

    def find_client(self, key_hash: str) -> dict[str, Any] | None:
        self.client_lookups += 1
        return self.clients.get(key_hash)

    def _own_row(self, client_id: uuid.UUID, order_id: uuid.UUID) -> dict[str, Any] | None:
        row = self.orders.get(order_id)
        return row if row is not None and row["client_id"] == client_id else None

    @staticmethod
    def _view(order_id: uuid.UUID, row: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": str(order_id), "status": row["status"].value, "created_at": row["created_at"].isoformat()}

    @staticmethod
    def _created_at(orders: dict[uuid.UUID, Any]) -> datetime:
        return datetime.fromtimestamp(EPOCH.timestamp() + len(orders), UTC)


class InMemoryQueue:
    """conveyor.ports.MessageQueue: keeps what was sent, serialised as the real queue would."""

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], str]] = []

    def send(self, message: dict[str, Any], correlation_id: str) -> str:
        json.dumps(message)
        self.sent.append((message, correlation_id))
        return f"msg-{len(self.sent)}"


if TYPE_CHECKING:  # mypy holds the fakes to the ports they stand in for
    _store: ports.OrderStore = InMemoryOrderStore()
    _queue: ports.MessageQueue = InMemoryQueue()
