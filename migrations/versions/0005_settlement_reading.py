"""A run remembers the time zone its report was read in, and what reading it noticed.

- reconciliation_runs.timezone: the IANA zone given for a report's local times (Stripe's
  `created`, Adyen rows whose TimeZone needs it). The same file read in another zone says
  other things, so it is part of run_key, as the column mapping is. NULL: none was needed.
- reconciliation_runs.unmapped_types: each row type nobody mapped, with its row count.
- reconciliation_runs.inconsistent_rows: rows whose gross, fee and net disagree
  ({"count", "lines", "message"}); a warning, the run reconciles them as given.

Revision ID: 0005_settlement_reading
Revises: 0004_payment_reference
Create Date: 2026-11-24
"""
from alembic import op

revision = "0005_settlement_reading"
down_revision = "0004_payment_reference"
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
    "ALTER TABLE reconciliation_runs ADD COLUMN timezone text",
    "ALTER TABLE reconciliation_runs ADD COLUMN unmapped_types jsonb",
    "ALTER TABLE reconciliation_runs ADD COLUMN inconsistent_rows jsonb",
]

DOWNGRADE = [
    "ALTER TABLE reconciliation_runs DROP COLUMN inconsistent_rows",
    "ALTER TABLE reconciliation_runs DROP COLUMN unmapped_types",
    "ALTER TABLE reconciliation_runs DROP COLUMN timezone",
]
