"""What the API does: accept, look up, list and cancel a client's orders.

The services take typed commands (parsed by the entrypoint, see conveyor.api_requests) and raise
the errors below; which HTTP answer each one gets is the entrypoint's business.
"""
from __future__ import annotations

import hashlib
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from collections.abc import Callable

from conveyor.domain.orders import OrderStatus, belongs_to, order_id_for, request_fingerprint
from conveyor.messages import cancel_message, place_message
from conveyor.ports import MessageQueue, OrderStore
from conveyor.schemas import OrderRequest


class NotFound(LookupError):
    pass


class Conflict(Exception):
    """The request contradicts what is already known; `field` names what contradicts it."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class Unauthorized(Exception):
    pass


@dataclass(frozen=True)
class Client:
    id: uuid.UUID
    name: str


@dataclass(frozen=True)
class NewOrder:
    """Place an order: a retry with the same idempotency key and order gets the same answer."""

    idempotency_key: str
    order: OrderRequest


@dataclass(frozen=True)
class OrdersQuery:
    """A page of a client's orders, newest first, after the keyset (created_at, order id) if given."""

    status: OrderStatus | None
    limit: int
    after: tuple[str, str] | None = None


@dataclass(frozen=True)
class OrdersPage:
    orders: list[dict[str, Any]]
    next_after: tuple[str, str] | None  # the keyset of the next page; None on the last page


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class Authenticator:
    """Maps an API key to its client, caching hits briefly: a warm Lambda skips the lookup."""

    def __init__(self, store: OrderStore, ttl_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._cache: dict[str, tuple[float, Client]] = {}
        self._lock = threading.Lock()

    def client_for(self, api_key: str | None) -> Client:
        if not api_key:
            raise Unauthorized("missing X-Api-Key header")
        key_hash = hash_api_key(api_key)
        now = self.clock()
        with self._lock:
            cached = self._cache.get(key_hash)
        if cached and now - cached[0] < self.ttl_seconds:
            return cached[1]
        row = self.store.find_client(key_hash)
        if row is None:
            raise Unauthorized("unknown API key")
        client = Client(id=uuid.UUID(row["id"]), name=row["name"])
        with self._lock:
            self._cache[key_hash] = (now, client)
        return client


class OrderService:
    def __init__(self, store: OrderStore, queue: MessageQueue, now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.store = store
        self.queue = queue
        self.now = now

    def place_order(self, client: Client, command: NewOrder, correlation_id: str) -> dict[str, Any]:
        """Enqueue an order; a retry with the same key and order gets the same answer."""
        key = command.idempotency_key
        order = command.order.model_dump(mode="json", exclude_none=True)
        order_id = order_id_for(client.id, key)
        fingerprint = request_fingerprint(order)
        known = self.store.get_order_summary(client.id, order_id)
        if known is not None and known["fingerprint"] is not None:
            if known["fingerprint"] != fingerprint:
                raise Conflict(
                    f"Idempotency-Key {key!r} was already used for a different order ({order_id});"
                    " use a new key for a new order",
                    field="Idempotency-Key",
                )
            return {"order_id": str(order_id), "status": known["status"]}
        message = place_message(
            order_id=order_id, client_id=client.id, idempotency_key=key, fingerprint=fingerprint,
            order=order, accepted_at=self.now(),
        )
        self.queue.send(message, correlation_id)
        return {"order_id": str(order_id), "status": OrderStatus.PENDING.value}

    def request_cancel(self, client: Client, order_id: uuid.UUID, correlation_id: str) -> dict[str, Any]:
        """Queue a cancel. An order not seen yet is cancelled when it arrives."""
        _own(client, order_id)
        known = self.store.get_order_summary(client.id, order_id)
        if known is not None:
            if known["status"] == OrderStatus.REJECTED:
                raise Conflict(f"order {order_id} was rejected and cannot be cancelled", field="order_id")
            if known["status"] == OrderStatus.CANCELLED:
                return {"order_id": str(order_id), "status": OrderStatus.CANCELLED.value}
        self.queue.send(cancel_message(order_id=order_id, client_id=client.id, requested_at=self.now()),
                        correlation_id)
        return {
            "order_id": str(order_id),
            "status": known["status"] if known else OrderStatus.PENDING.value,
            "cancellation": "queued",
        }

    def get_order(self, client: Client, order_id: uuid.UUID) -> dict[str, Any]:
        _own(client, order_id)
        order = self.store.get_order(client.id, order_id)
        if order is None:
            raise NotFound(f"order {order_id} not found")
        return order

    def list_orders(self, client: Client, query: OrdersQuery) -> OrdersPage:
        orders = self.store.list_orders(
            client.id, status=query.status.value if query.status else None, limit=query.limit, after=query.after
        )
        last = orders[-1] if len(orders) == query.limit else None
        return OrdersPage(orders, (last["created_at"], last["order_id"]) if last else None)


def _own(client: Client, order_id: uuid.UUID) -> None:
    """Another client's order id is not found, without a lookup."""
    if not belongs_to(order_id, client.id):
        raise NotFound(f"order {order_id} not found")
