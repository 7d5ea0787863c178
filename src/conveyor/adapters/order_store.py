"""The SQL behind orders: one statement per round trip, set-based per batch."""
from __future__ import annotations

import json
import uuid
from contextlib import AbstractContextManager
from typing import Any

from pydantic_core import to_json

from conveyor.domain.orders import (
    BatchPlan,
    CatalogItem,
    KnownOrder,
    OrderStatus,
    PaymentKey,
    Placement,
)
from conveyor.errors import PermanentError, RetryableConflict
from conveyor.ports import Database

READ_BATCH_STATE = """
SELECT json_build_object(
    -- Rows as arrays in CatalogItem's and KnownOrder's field order: half the JSON of objects.
    'catalog', COALESCE((
        SELECT json_agg(json_build_array(sku, currency, unit_price, stock_available))
        FROM catalog
        -- = ANY (ARRAY(...)) rather than IN (SELECT ...): the planner then probes the index
        -- instead of guessing 100 ids and scanning the table.
        WHERE sku = ANY (ARRAY(SELECT jsonb_array_elements_text(CAST(:skus AS jsonb))))), '[]'),
    'orders', COALESCE((
        SELECT json_agg(json_build_array(id, client_id, status, request_fingerprint))
        FROM orders
        WHERE id = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST(:order_ids AS jsonb)) AS uuid)))), '[]'),
    -- Orders holding the batch's payment references (HOLDS_PAYMENT_REFERENCE). Both columns by
    -- = ANY probe the (provider, reference) index; a pair the batch did not ask for is ignored.
    'payment_holders', COALESCE((
        SELECT json_agg(json_build_array(payment_provider, payment_reference, id))
        FROM orders
        WHERE payment_provider = ANY (ARRAY(SELECT jsonb_array_elements_text(CAST(:payment_providers AS jsonb))))
          AND payment_reference = ANY (ARRAY(SELECT jsonb_array_elements_text(CAST(:payment_references AS jsonb))))
          AND status IN ('PENDING', 'CONFIRMED')), '[]')
)::text
"""

# The unique index on held payment references (migration 0004): a concurrent batch took the reference first.
PAYMENT_REFERENCE_HELD_INDEX = "orders_payment_reference_held"

# Stock is reserved only for the placements this statement really inserted (see below).
RESERVE_FOR_CLAIMED_PLACEMENTS = "SELECT reservation, 1 AS direction FROM placed WHERE created AND status = 'CONFIRMED'"


def apply_batch_plan_statement(reserve_for: str = RESERVE_FOR_CLAIMED_PLACEMENTS) -> str:
    """APPLY_BATCH_PLAN; `reserve_for` selects the placements whose reservation moves stock (the chaos
    harness passes a naive one, to show what the claim prevents)."""
    return _APPLY_BATCH_PLAN.replace("{reserve_for}", reserve_for)


# One statement applies a whole batch. Each order row is claimed with
# INSERT .. ON CONFLICT, which sees and locks the latest committed row even when
# a concurrent worker wrote it after this statement's snapshot, so stock moves,
# lines and audit events follow only from rows this statement really changed.
_APPLY_BATCH_PLAN = """
WITH
plan AS (SELECT CAST(:plan AS jsonb) AS body),
placement AS (
    SELECT p.* FROM plan, jsonb_to_recordset(plan.body -> 'placements') AS p(
        id uuid, client_id uuid, idempotency_key text, fingerprint text, status text,
        rejection_reason text, currency text, total_amount bigint, payment_provider text,
        payment_reference text, payment_amount bigint, details jsonb, reservation jsonb,
        accepted_at timestamptz, lines jsonb, cause text, message_id text, correlation_id text)
),
cancellation AS (
    SELECT c.* FROM plan, jsonb_to_recordset(plan.body -> 'cancellations') AS c(
        id uuid, client_id uuid, requested_at timestamptz, message_id text, correlation_id text)
),
placed AS (
    INSERT INTO orders AS o (
        id, client_id, status, idempotency_key, request_fingerprint, currency, total_amount,
        payment_provider, payment_reference, payment_amount, details, rejection_reason,
        reservation, accepted_at)
    SELECT id, client_id, status, idempotency_key, fingerprint, currency, total_amount,
        payment_provider, payment_reference, payment_amount, details, rejection_reason,
        reservation, accepted_at
    FROM placement
    -- A cancel that came first left a placeholder: fill in the order, keep it CANCELLED.
    ON CONFLICT (id) DO UPDATE SET
        idempotency_key = EXCLUDED.idempotency_key,
        request_fingerprint = EXCLUDED.request_fingerprint,
        currency = EXCLUDED.currency,
        total_amount = EXCLUDED.total_amount,
        payment_provider = EXCLUDED.payment_provider,
        payment_reference = EXCLUDED.payment_reference,
        payment_amount = EXCLUDED.payment_amount,
        details = EXCLUDED.details,
        accepted_at = EXCLUDED.accepted_at,
        updated_at = now()
    WHERE o.request_fingerprint IS NULL AND o.client_id = EXCLUDED.client_id
    RETURNING o.id, o.status, o.reservation, (o.xmax = 0) AS created
),
placed_lines AS (
    INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price)
    SELECT placed.id, l.line_no, l.sku, l.quantity, l.unit_price
    FROM placed
    JOIN placement USING (id)
    CROSS JOIN jsonb_to_recordset(placement.lines)
        AS l(line_no integer, sku text, quantity integer, unit_price bigint)
),
cancelled AS (
    INSERT INTO orders AS o (id, client_id, status, cancel_requested_at)
    SELECT id, client_id, 'CANCELLED', requested_at FROM cancellation
    ON CONFLICT (id) DO UPDATE SET
        status = 'CANCELLED',
        cancel_requested_at = EXCLUDED.cancel_requested_at,
        updated_at = now()
    WHERE o.status = 'CONFIRMED' AND o.client_id = EXCLUDED.client_id
    RETURNING o.id, o.reservation, (o.xmax = 0) AS created
),
stock_change AS (
    SELECT held.key AS sku, sum(CAST(held.value AS integer) * change.direction) AS quantity
    FROM (
        {reserve_for}
        UNION ALL
        SELECT reservation, -1 FROM cancelled WHERE NOT created
    ) AS change
    CROSS JOIN jsonb_each_text(change.reservation) AS held
    GROUP BY held.key
),
stock AS (
    UPDATE catalog SET
        stock_available = catalog.stock_available - stock_change.quantity,
        stock_reserved = catalog.stock_reserved + stock_change.quantity,
        updated_at = now()
    FROM stock_change
    WHERE catalog.sku = stock_change.sku AND stock_change.quantity <> 0
    RETURNING catalog.sku
),
events AS (
    INSERT INTO order_events (order_id, from_status, to_status, cause, message_id, correlation_id)
    SELECT placed.id,
        CASE WHEN placed.created THEN NULL ELSE 'CANCELLED' END,
        placed.status,
        CASE WHEN placed.created THEN placement.cause ELSE 'order arrived after its cancel' END,
        placement.message_id, placement.correlation_id
    FROM placed JOIN placement USING (id)
    UNION ALL
    SELECT cancelled.id,
        CASE WHEN cancelled.created THEN NULL ELSE 'CONFIRMED' END,
        'CANCELLED',
        CASE WHEN cancelled.created THEN 'cancel requested before the order arrived'
             ELSE 'cancel requested' END,
        cancellation.message_id, cancellation.correlation_id
    FROM cancelled JOIN cancellation USING (id)
    RETURNING order_id
)
SELECT json_build_object(
    'placed', (SELECT count(*) FROM placed),
    'cancelled', (SELECT count(*) FROM cancelled WHERE NOT created),
    'stock_rows', (SELECT count(*) FROM stock),
    'events', (SELECT count(*) FROM events)
)::text
"""

APPLY_BATCH_PLAN = apply_batch_plan_statement()

ORDER_JSON = """
json_build_object(
    'order_id', o.id,
    'status', o.status,
    'currency', o.currency,
    'total_amount', o.total_amount,
    'payment', CASE WHEN o.payment_provider IS NULL THEN NULL ELSE json_build_object(
        'provider', o.payment_provider, 'reference', o.payment_reference,
        'amount', o.payment_amount) END,
    'rejection_reason', o.rejection_reason,
    'details', o.details,
    'accepted_at', o.accepted_at,
    'cancel_requested_at', o.cancel_requested_at,
    'created_at', o.created_at,
    'updated_at', o.updated_at,
    'lines', COALESCE((
        SELECT json_agg(json_build_object(
            'line_no', l.line_no, 'sku', l.sku, 'quantity', l.quantity,
            'unit_price', l.unit_price, 'line_total', l.unit_price * l.quantity)
            ORDER BY l.line_no)
        FROM order_lines l WHERE l.order_id = o.id), '[]')
)
"""

GET_ORDER = f"""
SELECT COALESCE((
    SELECT {ORDER_JSON}
    FROM orders o
    WHERE o.id = CAST(:order_id AS uuid) AND o.client_id = CAST(:client_id AS uuid)
), 'null')::text
"""

GET_ORDER_SUMMARY = """
SELECT COALESCE((
    SELECT json_build_object('status', status, 'fingerprint', request_fingerprint)
    FROM orders
    WHERE id = CAST(:order_id AS uuid) AND client_id = CAST(:client_id AS uuid)
), 'null')::text
"""

# Keyset pagination, newest first; the cursor is the last row's (created_at, id).
# One row per order: the Data API caps a row at 64 KB, not a page.
LIST_ORDERS = f"""
SELECT {ORDER_JSON}::text
FROM orders o
WHERE o.client_id = CAST(:client_id AS uuid)
  AND (CAST(:status AS text) IS NULL OR o.status = CAST(:status AS text))
  AND (CAST(:after_created_at AS timestamptz) IS NULL
       OR (o.created_at, o.id) < (CAST(:after_created_at AS timestamptz), CAST(:after_id AS uuid)))
ORDER BY o.created_at DESC, o.id DESC
LIMIT :limit
"""

FIND_CLIENT = """
SELECT COALESCE((
    SELECT json_build_object('id', id, 'name', name) FROM clients WHERE api_key_hash = :key_hash
), 'null')::text
"""


class OrderStore:
    def __init__(self, database: Database, apply_statement: str = APPLY_BATCH_PLAN):
        self.database = database
        self.apply_statement = apply_statement

    def pinned(self) -> AbstractContextManager[None]:
        """Keep one connection for a batch's statements."""
        return self.database.pinned()

    def read_batch_state(
        self, order_ids: list[uuid.UUID], skus: list[str], payments: list[PaymentKey]
    ) -> tuple[dict[str, CatalogItem], dict[uuid.UUID, KnownOrder], dict[PaymentKey, uuid.UUID]]:
        wanted = set(payments)
        state = self.database.fetch_json(
            READ_BATCH_STATE,
            {
                "skus": json.dumps(sorted(set(skus))),
                "order_ids": to_json(sorted(set(order_ids))).decode(),
                "payment_providers": json.dumps(sorted({provider for provider, _ in wanted})),
                "payment_references": json.dumps(sorted({reference for _, reference in wanted})),
            },
        )
        catalog = {sku: CatalogItem(sku, currency, unit_price, stock) for sku, currency, unit_price, stock in state["catalog"]}
        known: dict[uuid.UUID, KnownOrder] = {}
        for order_id, client_id, status, fingerprint in state["orders"]:
            known[uuid.UUID(order_id)] = KnownOrder(uuid.UUID(order_id), uuid.UUID(client_id), OrderStatus(status),
                                                    fingerprint)
        holders = {
            (provider, reference): uuid.UUID(order_id)
            for provider, reference, order_id in state["payment_holders"]
            if (provider, reference) in wanted
        }
        return catalog, known, holders

    def apply(self, plan: BatchPlan) -> dict[str, int]:
        try:
            return self.database.fetch_json(self.apply_statement, {"plan": plan_json(plan)})
        except PermanentError as exc:
            if exc.sqlstate == "23505" and PAYMENT_REFERENCE_HELD_INDEX in str(exc):
                # Nothing was applied; the next read sees the other order, and the plan rejects this one.
                raise RetryableConflict(str(exc), "payment reference taken by a concurrent worker",
                                        exc.sqlstate) from exc
            raise

    def get_order(self, client_id: uuid.UUID, order_id: uuid.UUID) -> dict[str, Any] | None:
        return self.database.fetch_json(
            GET_ORDER, {"order_id": str(order_id), "client_id": str(client_id)}
        )

    def get_order_summary(self, client_id: uuid.UUID, order_id: uuid.UUID) -> dict[str, Any] | None:
        return self.database.fetch_json(
            GET_ORDER_SUMMARY, {"order_id": str(order_id), "client_id": str(client_id)}
        )

    def list_orders(
        self,
        client_id: uuid.UUID,
        *,
        status: str | None,
        limit: int,
        after: tuple[str, str] | None,
    ) -> list[dict[str, Any]]:
        return self.database.fetch_json_rows(
            LIST_ORDERS,
            {
                "client_id": str(client_id),
                "status": status,
                "after_created_at": after[0] if after else None,
                "after_id": after[1] if after else None,
                "limit": limit,
            },
        )

    def find_client(self, key_hash: str) -> dict[str, Any] | None:
        return self.database.fetch_json(FIND_CLIENT, {"key_hash": key_hash})


def plan_json(plan: BatchPlan) -> str:
    """The JSON document APPLY_BATCH_PLAN reads.

    pydantic_core writes UUIDs and datetimes itself, in Rust: building it with json.dumps, after
    str() and isoformat() on each, was a tenth of the worker's own CPU per batch (measured).
    """
    return to_json({
        "placements": [_placement_row(p) for p in plan.placements],
        "cancellations": [
            {
                "id": c.command.order_id,
                "client_id": c.command.client_id,
                "requested_at": c.command.requested_at,
                "message_id": c.command.message_id,
                "correlation_id": c.command.correlation_id,
            }
            for c in plan.cancellations
        ],
    }).decode()


def _placement_row(placement: Placement) -> dict[str, Any]:
    command = placement.command
    return {
        "id": command.order_id,
        "client_id": command.client_id,
        "idempotency_key": command.idempotency_key,
        "fingerprint": command.fingerprint,
        "status": placement.status,
        "rejection_reason": placement.rejection_reason,
        "currency": command.currency,
        "total_amount": placement.total_amount,
        "payment_provider": command.payment.provider,
        "payment_reference": command.payment.reference,
        "payment_amount": command.payment.amount,
        "details": command.details,
        "reservation": placement.reservation,
        "accepted_at": command.accepted_at,
        "lines": [
            {"line_no": l.line_no, "sku": l.sku, "quantity": l.quantity, "unit_price": l.unit_price}
            for l in placement.lines
        ],
        "cause": placement.cause,
        "message_id": command.message_id,
        "correlation_id": command.correlation_id,
    }
