"""Orders across all clients, as the console searches, exports and acts on them."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, UTC
from typing import Any

from conveyor.ports import Database
from conveyor.domain.orders import OrderStatus
from conveyor.domain.paging import InvalidCursor, decode_cursor, encode_cursor
from conveyor.services.access import Actor, Role
from conveyor.services.audit import record, require_reason
from conveyor.services.ordering import Client, OrderService

PAGE_SIZE = 50
EXPORT_BATCH = 1000
EXPORT_COLUMNS = ("order_id", "created_at", "status", "client", "currency", "total_amount", "payment_provider",
                  "payment_reference", "payment_amount", "payment_status", "skus", "rejection_reason")

# The search term is matched as an order id, a payment reference, a client name or a SKU.
FILTERS = """
    (CAST(:status AS text) IS NULL OR o.status = CAST(:status AS text))
AND (CAST(:since AS timestamptz) IS NULL OR o.created_at >= CAST(:since AS timestamptz))
AND (CAST(:until AS timestamptz) IS NULL OR o.created_at < CAST(:until AS timestamptz))
AND (CAST(:q AS text) IS NULL
     OR o.id = CAST(:q_uuid AS uuid)
     OR o.payment_reference = CAST(:q AS text)
     OR c.name ILIKE '%' || CAST(:q AS text) || '%'
     OR EXISTS (SELECT 1 FROM order_lines l WHERE l.order_id = o.id AND l.sku = upper(CAST(:q AS text))))
AND (CAST(:after_created_at AS timestamptz) IS NULL
     OR (o.created_at, o.id) < (CAST(:after_created_at AS timestamptz), CAST(:after_id AS uuid)))
"""

SEARCH_ORDERS = f"""
SELECT json_build_object(
    'order_id', o.id, 'created_at', o.created_at, 'status', o.status, 'client', c.name,
    'currency', o.currency, 'total_amount', o.total_amount, 'payment_provider', o.payment_provider,
    'payment_reference', o.payment_reference, 'payment_amount', o.payment_amount,
    'payment_status', ps.payment_status, 'rejection_reason', o.rejection_reason,
    'skus', (SELECT string_agg(l.sku || ' x' || l.quantity, ', ' ORDER BY l.line_no)
             FROM order_lines l WHERE l.order_id = o.id)
)::text
FROM orders o
JOIN clients c ON c.id = o.client_id
LEFT JOIN order_payment_status ps ON ps.order_id = o.id
WHERE {FILTERS}
ORDER BY o.created_at DESC, o.id DESC
LIMIT :limit
"""

ORDER_DETAIL = """
SELECT COALESCE((
    SELECT json_build_object(
        'order_id', o.id, 'status', o.status, 'client_id', c.id, 'client', c.name, 'currency', o.currency,
        'total_amount', o.total_amount, 'payment_provider', o.payment_provider,
        'payment_reference', o.payment_reference, 'payment_amount', o.payment_amount,
        'rejection_reason', o.rejection_reason, 'details', o.details, 'idempotency_key', o.idempotency_key,
        'accepted_at', o.accepted_at, 'cancel_requested_at', o.cancel_requested_at,
        'created_at', o.created_at, 'updated_at', o.updated_at,
        'payment_status', ps.payment_status, 'reconciliation_id', ps.reconciliation_id,
        'reconciled_at', ps.reconciled_at,
        'lines', COALESCE((SELECT json_agg(json_build_object(
                    'line_no', l.line_no, 'sku', l.sku, 'name', cat.name, 'quantity', l.quantity,
                    'unit_price', l.unit_price, 'line_total', l.unit_price * l.quantity) ORDER BY l.line_no)
                 FROM order_lines l LEFT JOIN catalog cat ON cat.sku = l.sku WHERE l.order_id = o.id), '[]'),
        'timeline', COALESCE((SELECT json_agg(entry ORDER BY entry ->> 'at', entry ->> 'kind') FROM (
                SELECT json_build_object('kind', 'event', 'at', e.occurred_at, 'from', e.from_status,
                                         'to', e.to_status, 'cause', e.cause, 'by', 'worker',
                                         'message_id', e.message_id, 'correlation_id', e.correlation_id) AS entry
                FROM order_events e WHERE e.order_id = o.id
                UNION ALL
                SELECT json_build_object('kind', 'admin', 'at', a.occurred_at, 'action', a.action, 'by', a.actor,
                                         'cause', a.reason, 'before', a.before, 'after', a.after)
                FROM admin_audit a WHERE a.target = 'order:' || o.id
            ) AS entries), '[]')
    )
    FROM orders o
    JOIN clients c ON c.id = o.client_id
    LEFT JOIN order_payment_status ps ON ps.order_id = o.id
    WHERE o.id = CAST(:id AS uuid)
), 'null')::text
"""


class OrderQueryError(ValueError):
    pass


@dataclass(frozen=True)
class OrderFilter:
    q: str | None = None
    status: str | None = None
    since: date | None = None  # inclusive, UTC day
    until: date | None = None  # inclusive, UTC day

    @classmethod
    def parse(cls, q: str | None, status: str | None, since: str | None, until: str | None) -> OrderFilter:
        if status and status not in OrderStatus.__members__:
            raise OrderQueryError(f"status must be one of {', '.join(OrderStatus.__members__)}")
        try:
            since_date = date.fromisoformat(since) if since else None
            until_date = date.fromisoformat(until) if until else None
        except ValueError:
            raise OrderQueryError("dates are YYYY-MM-DD, e.g. 2026-11-23") from None
        return cls(q=(q or "").strip()[:200] or None, status=status or None, since=since_date, until=until_date)

    def params(self) -> dict[str, Any]:
        q_uuid = None
        if self.q:
            try:
                q_uuid = str(uuid.UUID(self.q))
            except ValueError:
                pass
        return {
            "q": self.q, "q_uuid": q_uuid, "status": self.status,
            "since": datetime.combine(self.since, time(), UTC).isoformat() if self.since else None,
            "until": datetime.combine(self.until + timedelta(days=1), time(), UTC).isoformat() if self.until else None,
        }


def search(database: Database, actor: Actor, filters: OrderFilter, cursor: str | None = None,
           limit: int = PAGE_SIZE) -> tuple[list[dict[str, Any]], str | None]:
    """A page, newest first, and the cursor of the next page (None on the last)."""
    actor.require(Role.VIEWER, "read orders")
    after = _decode_cursor(cursor) if cursor else None
    rows = _page(database, filters, after, limit)
    next_cursor = encode_cursor((rows[-1]["created_at"], rows[-1]["order_id"])) if len(rows) == limit else None
    return rows, next_cursor


def export_rows(database: Database, actor: Actor, filters: OrderFilter) -> Iterator[list[Any]]:
    """Every matching order, read in keyset batches: memory stays flat however many there are."""
    actor.require(Role.VIEWER, "export orders")
    after = None
    while True:
        rows = _page(database, filters, after, EXPORT_BATCH)
        for row in rows:
            yield [row[column] for column in EXPORT_COLUMNS]
        if len(rows) < EXPORT_BATCH:
            return
        after = (rows[-1]["created_at"], rows[-1]["order_id"])


def detail(database: Database, actor: Actor, order_id: str) -> dict[str, Any] | None:
    actor.require(Role.VIEWER, "read orders")
    try:
        uuid.UUID(order_id)
    except ValueError:
        return None
    found: dict[str, Any] | None = database.fetch_json(ORDER_DETAIL, {"id": order_id})
    return found


def cancel(database: Database, orders: OrderService, actor: Actor, order_id: str, reason: str | None,
           correlation_id: str) -> dict[str, Any]:
    """Cancel through the API's own path: a cancel message the worker applies, audited as the API's are."""
    actor.require(Role.OPERATOR, "cancel orders")
    reason = require_reason(reason, "cancel an order")
    order = detail(database, actor, order_id)
    if order is None:
        raise OrderQueryError(f"no order {order_id}")
    if order["status"] in (OrderStatus.CANCELLED, OrderStatus.REJECTED):
        raise OrderQueryError(f"order {order_id} is already {order['status'].lower()}")
    answer = orders.request_cancel(Client(id=uuid.UUID(order["client_id"]), name=order["client"]), uuid.UUID(order_id),
                                   correlation_id)
    record(database, actor, "order.cancel", f"order:{order_id}", {"status": order["status"]},
           {"status": answer["status"], "cancellation": answer.get("cancellation", "done")}, reason)
    return answer


def _page(database: Database, filters: OrderFilter, after: tuple[str, str] | None, limit: int) -> list[dict[str, Any]]:
    return database.fetch_json_rows(SEARCH_ORDERS, {
        **filters.params(), "after_created_at": after[0] if after else None, "after_id": after[1] if after else None,
        "limit": limit})


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        return decode_cursor(cursor)
    except InvalidCursor:
        raise OrderQueryError("that page link is not valid; start the search again") from None
