"""The admin console: users, their API tokens, login throttling, the admin audit log,
dead-letter reasons, client revocation and discrepancy resolutions.

Revision ID: 0006_console
Revises: 0005_settlement_reading
Create Date: 2026-11-23
"""
from alembic import op

revision = "0006_console"
down_revision = "0005_settlement_reading"
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
    CREATE TABLE console_users (
        id uuid PRIMARY KEY,
        name text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9._@-]{1,64}$'),
        role text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
        password_hash text NOT NULL,
        disabled_at timestamptz,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE console_api_tokens (
        token_hash text PRIMARY KEY,
        user_id uuid NOT NULL REFERENCES console_users (id),
        label text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz
    )
    """,
    # Failed sign-ins per (name, address): shared by every gunicorn worker and task.
    """
    CREATE TABLE console_login_failures (
        name text NOT NULL,
        address text NOT NULL,
        failed_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX console_login_failures_by_key ON console_login_failures (name, address, failed_at)",
    # The secret that signs session cookies when CONSOLE_SECRET_KEY is not set: one per database,
    # so every worker and task signs alike.
    """
    CREATE TABLE console_settings (
        name text PRIMARY KEY,
        value text NOT NULL
    )
    """,
    """
    CREATE TABLE admin_audit (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        actor text NOT NULL,
        action text NOT NULL,
        target text NOT NULL,
        before jsonb,
        after jsonb,
        reason text,
        occurred_at timestamptz NOT NULL DEFAULT clock_timestamp()
    )
    """,
    "CREATE INDEX admin_audit_by_target ON admin_audit (target, id)",
    """
    CREATE FUNCTION admin_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'admin_audit is append-only: % is not allowed', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    """
    CREATE TRIGGER admin_audit_append_only
        BEFORE UPDATE OR DELETE ON admin_audit
        FOR EACH ROW EXECUTE FUNCTION admin_audit_append_only()
    """,
    # SQS carries no reason into the DLQ: the worker records why it failed each message.
    """
    CREATE TABLE message_failures (
        message_id text PRIMARY KEY,
        reason text NOT NULL,
        receive_count integer NOT NULL,
        failed_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "ALTER TABLE clients ADD COLUMN revoked_at timestamptz",
    """
    -- No foreign key, like the discrepancies' own: resolving checks the discrepancy exists, and a
    -- run's tables stay free to be truncated.
    CREATE TABLE discrepancy_resolutions (
        run_id uuid NOT NULL,
        discrepancy_id bigint NOT NULL,
        note text NOT NULL,
        resolved_by text NOT NULL,
        resolved_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, discrepancy_id)
    )
    """,
    # The console searches orders by time across clients and by payment reference alone.
    "CREATE INDEX orders_by_created ON orders (created_at DESC, id DESC)",
]

DOWNGRADE = [
    "DROP INDEX orders_by_created",
    "DROP TABLE discrepancy_resolutions",
    "ALTER TABLE clients DROP COLUMN revoked_at",
    "DROP TABLE message_failures",
    "DROP TABLE admin_audit",
    "DROP FUNCTION admin_audit_append_only()",
    "DROP TABLE console_settings",
    "DROP TABLE console_login_failures",
    "DROP TABLE console_api_tokens",
    "DROP TABLE console_users",
]
