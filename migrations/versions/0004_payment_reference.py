"""A payment settles at most one order: a unique index on the payment references orders hold.

An order holds its (payment_provider, payment_reference) while PENDING or CONFIRMED
(conveyor.domain.orders.HOLDS_PAYMENT_REFERENCE); a REJECTED or CANCELLED order frees it,
so a client may retry with the same payment. The worker rejects an order whose reference
another order holds; this index catches two concurrent batches that both decided to take it.

Orders recorded before this migration may already share a held reference. They are kept as
they are (their status, stock and audit trail are facts a migration must not rewrite): the
earliest holder of each reference (by created_at, then id) keeps it, and the others are marked
`legacy_duplicate_payment`, which leaves them out of the index. Reconciliation matches a
settlement row to the unmarked holder; a marked order that stays CONFIRMED without a payment of
its own is then reported `missing_in_report`, which is where finance should look. Count them with
`SELECT count(*) FROM orders WHERE legacy_duplicate_payment`. New orders are never marked.

Revision ID: 0004_payment_reference
Revises: 0003_generic_column_map
Create Date: 2026-11-23
"""
from alembic import op

revision = "0004_payment_reference"
down_revision = "0003_generic_column_map"
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
    # A constant default adds the column without rewriting the table.
    "ALTER TABLE orders ADD COLUMN legacy_duplicate_payment boolean NOT NULL DEFAULT false",
    """
    UPDATE orders SET legacy_duplicate_payment = true
    WHERE id IN (
        SELECT id FROM (
            SELECT id, row_number() OVER (
                PARTITION BY payment_provider, payment_reference ORDER BY created_at, id) AS holder_rank
            FROM orders
            WHERE status IN ('PENDING', 'CONFIRMED') AND payment_reference IS NOT NULL
        ) AS holders
        WHERE holder_rank > 1)
    """,
    """
    CREATE UNIQUE INDEX orders_payment_reference_held ON orders (payment_provider, payment_reference)
        WHERE status IN ('PENDING', 'CONFIRMED') AND payment_reference IS NOT NULL
          AND NOT legacy_duplicate_payment
    """,
]

DOWNGRADE = [
    "DROP INDEX orders_payment_reference_held",
    "ALTER TABLE orders DROP COLUMN legacy_duplicate_payment",
]
