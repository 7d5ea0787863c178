"""What the API does: accept, look up, list and cancel a client's orders."""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Callable

from conveyor.adapters.order_store import OrderStore
from conveyor.adapters.queue import OrdersQueue
from conveyor.domain.orders import OrderStatus, belongs_to, order_id_for, request_fingerprint
from conveyor.messages import cancel_message, place_message
from conveyor.schemas import FieldError, InvalidRequest, parse_order_request

MAX_IDEMPOTENCY_KEY = 255
DEFAULT_PAGE = 50
MAX_PAGE = 200


class NotFound(LookupError):
    pass


class Conflict(Exception):
    """The request contradicts what is already known (409)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class Unauthorized(Exception):
    pass


@dataclass(frozen=True)
class Client:
    id: uuid.UUID
    name: str


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
    def __init__(self, store: OrderStore, queue: OrdersQueue, now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.store = store
        self.queue = queue
        self.now = now

    def place_order(
        self, client: Client, idempotency_key: str | None, raw_body: bytes | None, correlation_id: str
    ) -> dict[str, Any]:
        """Validate and enqueue an order; a retry with the same key and body gets the same answer."""
        key = _idempotency_key(idempotency_key)
        order = parse_order_request(raw_body).model_dump(mode="json", exclude_none=True)
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

    def request_cancel(self, client: Client, order_id: str, correlation_id: str) -> dict[str, Any]:
        """Queue a cancel. An order not seen yet is cancelled when it arrives."""
        parsed = _own_order_id(client, order_id)
        known = self.store.get_order_summary(client.id, parsed)
        if known is not None:
            if known["status"] == OrderStatus.REJECTED:
                raise Conflict(f"order {order_id} was rejected and cannot be cancelled", field="order_id")
            if known["status"] == OrderStatus.CANCELLED:
                return {"order_id": order_id, "status": OrderStatus.CANCELLED.value}
        self.queue.send(cancel_message(order_id=parsed, client_id=client.id, requested_at=self.now()), correlation_id)
        return {
            "order_id": order_id,
            "status": known["status"] if known else OrderStatus.PENDING.value,
            "cancellation": "queued",
        }

    def get_order(self, client: Client, order_id: str) -> dict[str, Any]:
        order = self.store.get_order(client.id, _own_order_id(client, order_id))
        if order is None:
            raise NotFound(f"order {order_id} not found")
        return order

    def list_orders(
        self, client: Client, status: str | None, limit: str | None, cursor: str | None
    ) -> dict[str, Any]:
        if status is not None and status not in OrderStatus.__members__:
            raise _invalid("status", f"must be one of {', '.join(OrderStatus.__members__)}")
        page_size = _page_size(limit)
        orders = self.store.list_orders(
            client.id, status=status, limit=page_size, after=_decode_cursor(cursor) if cursor else None
        )
        next_cursor = None
        if len(orders) == page_size:
            last = orders[-1]
            next_cursor = _encode_cursor(last["created_at"], last["order_id"])
        return {"orders": orders, "next_cursor": next_cursor}


def _invalid(field: str, message: str, status: int = 400) -> InvalidRequest:
    return InvalidRequest(status, "invalid_parameter", f"{field} {message}", [FieldError(field=field, message=message)])


def _idempotency_key(value: str | None) -> str:
    if not value:
        raise _invalid("Idempotency-Key", "header is required: send a unique key per order")
    if len(value) > MAX_IDEMPOTENCY_KEY or not value.isprintable():
        raise _invalid("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters")
    return value


def _own_order_id(client: Client, value: str) -> uuid.UUID:
    """The order id, if it can be one of this client's; anything else is not found."""
    try:
        order_id = uuid.UUID(value)
    except ValueError:
        raise NotFound(f"order {value} not found") from None
    if not belongs_to(order_id, client.id):
        raise NotFound(f"order {value} not found")
    return order_id


def _page_size(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_PAGE:
        raise _invalid("limit", f"must be an integer from 1 to {MAX_PAGE}")
    return int(value)


def _encode_cursor(created_at: str, order_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, order_id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        created_at, order_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        datetime.fromisoformat(created_at)
        uuid.UUID(order_id)
    except (ValueError, TypeError, AttributeError, binascii.Error):
        raise _invalid("cursor", "is not a cursor this API returned") from None
    return created_at, order_id
