"""Catalog, clients, orders, order lines and the audit trail.

Revision ID: 0001_orders
Revises:
Create Date: 2026-11-22
"""
from alembic import op

revision = "0001_orders"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One statement per execute: the RDS Data API runs a single statement per call.
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)


UPGRADE = [
    """
    CREATE TABLE clients (
        id uuid PRIMARY KEY,
        name text NOT NULL UNIQUE,
        api_key_hash text NOT NULL UNIQUE,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE catalog (
        sku text PRIMARY KEY CHECK (sku <> '' AND length(sku) <= 64),
        name text NOT NULL,
        currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
        unit_price bigint NOT NULL CHECK (unit_price >= 0),
        -- The worker relies on this check to catch a concurrent worker that took the stock first.
        stock_available integer NOT NULL CHECK (stock_available >= 0),
        stock_reserved integer NOT NULL DEFAULT 0 CHECK (stock_reserved >= 0),
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE orders (
        id uuid PRIMARY KEY,
        client_id uuid NOT NULL REFERENCES clients (id),
        status text NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'REJECTED', 'CANCELLED')),
        -- NULL until the order itself arrives: a cancel may come first.
        idempotency_key text,
        request_fingerprint text,
        currency char(3),
        total_amount bigint CHECK (total_amount >= 0),
        payment_provider text,
        payment_reference text,
        payment_amount bigint CHECK (payment_amount >= 0),
        details jsonb NOT NULL DEFAULT '{}'::jsonb,
        rejection_reason text,
        -- sku -> quantity held while CONFIRMED; kept after a cancel as the record of what was released.
        reservation jsonb NOT NULL DEFAULT '{}'::jsonb,
        accepted_at timestamptz,
        cancel_requested_at timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CHECK ((idempotency_key IS NULL) = (request_fingerprint IS NULL))
    )
    """,
    "CREATE INDEX orders_client_listing ON orders (client_id, created_at DESC, id DESC)",
    "CREATE INDEX orders_client_status_listing ON orders (client_id, status, created_at DESC, id DESC)",
    """
    CREATE TABLE order_lines (
        order_id uuid NOT NULL REFERENCES orders (id),
        line_no integer NOT NULL CHECK (line_no >= 1),
        sku text NOT NULL,
        quantity integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
        unit_price bigint CHECK (unit_price >= 0),
        PRIMARY KEY (order_id, line_no)
    )
    """,
    """
    CREATE TABLE order_events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        order_id uuid NOT NULL REFERENCES orders (id),
        from_status text,
        to_status text NOT NULL,
        cause text NOT NULL,
        message_id text,
        correlation_id text,
        occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        -- A transition is recorded once however often its message is delivered.
        CONSTRAINT order_events_once UNIQUE NULLS NOT DISTINCT (order_id, from_status, to_status)
    )
    """,
    """
    CREATE FUNCTION order_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'order_events is append-only: % is not allowed', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    """
    CREATE TRIGGER order_events_append_only
        BEFORE UPDATE OR DELETE ON order_events
        FOR EACH ROW EXECUTE FUNCTION order_events_append_only()
    """,
]

DOWNGRADE = [
    "DROP TABLE order_events",
    "DROP FUNCTION order_events_append_only()",
    "DROP TABLE order_lines",
    "DROP TABLE orders",
    "DROP TABLE catalog",
    "DROP TABLE clients",
]
