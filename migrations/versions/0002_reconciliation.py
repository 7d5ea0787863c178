"""Reconciliation runs, their discrepancies, and each order's payment status (order_payment_status).

Revision ID: 0002_reconciliation
Revises: 0001_orders
Create Date: 2026-11-22
"""
from alembic import op

revision = "0002_reconciliation"
down_revision = "0001_orders"
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
    CREATE TABLE reconciliation_runs (
        id uuid PRIMARY KEY,
        -- sha256 of (content sha256, format, requested cutoff): the same report gives the same run.
        run_key text NOT NULL UNIQUE,
        content_sha256 text NOT NULL,
        source text NOT NULL,
        format text NOT NULL CHECK (format IN ('stripe', 'adyen', 'generic')),
        requested_cutoff timestamptz,
        cutoff timestamptz,
        status text NOT NULL CHECK (status IN ('QUEUED', 'LOADING', 'CLASSIFYING', 'COMPLETED', 'FAILED')),
        rows_loaded bigint NOT NULL DEFAULT 0,
        rows_classified bigint NOT NULL DEFAULT 0,
        counts jsonb,
        totals jsonb,
        error text,
        attempts integer NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now(),
        started_at timestamptz,
        finished_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE reconciliation_discrepancies (
        run_id uuid NOT NULL REFERENCES reconciliation_runs (id),
        id bigint GENERATED ALWAYS AS IDENTITY,
        category text NOT NULL CHECK (category IN (
            'amount_mismatch', 'currency_mismatch', 'missing_in_report', 'unknown_payment',
            'duplicate_settlement', 'refund_due', 'refund_without_order')),
        -- No foreign key: a run may write a million rows, and orders are never deleted.
        order_id uuid,
        order_status text,
        payment_reference text,
        expected_currency char(3),
        expected_amount bigint,
        settled_currency char(3),
        settled_amount bigint,
        settlement_rows integer NOT NULL DEFAULT 0,
        -- Line numbers in the report, so finance can find the rows behind a discrepancy.
        report_lines bigint[] NOT NULL DEFAULT '{}',
        PRIMARY KEY (run_id, id)
    )
    """,
    "CREATE INDEX reconciliation_discrepancies_by_category ON reconciliation_discrepancies (run_id, category)",
    # Each order's payment status as of the latest run that classified it. A table of its own,
    # not columns on orders: a run writes up to millions of statuses in one transaction, and
    # on orders each would rewrite a wide row and its four indexes (measured: 80+ s for 1M)
    # and hold the row lock the worker needs to cancel that order until the run commits.
    """
    CREATE TABLE order_payment_status (
        -- No foreign keys: a run may write a million rows, and a check per row would cost more than the write.
        order_id uuid PRIMARY KEY,
        payment_status text NOT NULL CHECK (payment_status IN (
            'matched', 'amount_mismatch', 'currency_mismatch', 'missing_in_report',
            'duplicate_settlement', 'refund_due')),
        reconciliation_id uuid NOT NULL,
        reconciled_at timestamptz NOT NULL DEFAULT now()
    ) WITH (fillfactor = 70)
    """,
    # Settlement rows are matched to orders by (provider, reference).
    """
    CREATE INDEX orders_payment_reference ON orders (payment_provider, payment_reference)
        WHERE payment_reference IS NOT NULL
    """,
]

DOWNGRADE = [
    "DROP INDEX orders_payment_reference",
    "DROP TABLE order_payment_status",
    "DROP TABLE reconciliation_discrepancies",
    "DROP TABLE reconciliation_runs",
]
