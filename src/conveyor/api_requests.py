"""What the orders API's routes read from a request, as the services' typed commands, and the cursor
they hand back. Framework-free, so it is tested without Chalice (api/app.py is the entrypoint).

Refusals are `InvalidRequest`, carrying the HTTP status and the offending fields, or `NotFound` for
a path id that cannot be an order's.
"""
from __future__ import annotations

import uuid

from conveyor.domain.orders import OrderStatus
from conveyor.domain.paging import InvalidCursor, decode_cursor, encode_cursor
from conveyor.schemas import FieldError, InvalidRequest, parse_order_request
from conveyor.services.ordering import NewOrder, NotFound, OrdersQuery

MAX_IDEMPOTENCY_KEY = 255
DEFAULT_PAGE = 50
MAX_PAGE = 200


def new_order(idempotency_key: str | None, raw_body: bytes | None) -> NewOrder:
    """POST /orders: the Idempotency-Key header and the strictly validated body."""
    return NewOrder(idempotency_key=_idempotency_key(idempotency_key), order=parse_order_request(raw_body))


def orders_query(status: str | None, limit: str | None, cursor: str | None) -> OrdersQuery:
    """GET /orders?status=&limit=&cursor=."""
    if status is not None and status not in OrderStatus.__members__:
        raise _invalid("status", f"must be one of {', '.join(OrderStatus.__members__)}")
    return OrdersQuery(
        status=OrderStatus(status) if status is not None else None,
        limit=_page_size(limit),
        after=_decode_cursor(cursor) if cursor else None,
    )


def order_id(value: str) -> uuid.UUID:
    """An order id from the path; anything that is not a UUID is an order that does not exist."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"order {value} not found") from None


def next_cursor(after: tuple[str, str] | None) -> str | None:
    return encode_cursor(after) if after else None


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(400, "invalid_parameter", f"{field} {message}", [FieldError(field=field, message=message)])


def _idempotency_key(value: str | None) -> str:
    if not value:
        raise _invalid("Idempotency-Key", "header is required: send a unique key per order")
    if len(value) > MAX_IDEMPOTENCY_KEY or not value.isprintable():
        raise _invalid("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters")
    return value


def _page_size(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_PAGE:
        raise _invalid("limit", f"must be an integer from 1 to {MAX_PAGE}")
    return int(value)


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        return decode_cursor(cursor)
    except InvalidCursor:
        raise _invalid("cursor", "is not a cursor this API returned") from None
