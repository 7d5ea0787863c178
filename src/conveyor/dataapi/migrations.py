"""Alembic migrations through the Data API, with the sqlalchemy-aurora-data-api dialect.

Migrations are where that dialect is right: DDL wants the transactions its driver opens,
runs once per deploy, and passes no typed parameters. migrations/env.py and
`conveyor.migrations_runner.upgrade` take its URL unchanged. What the driver lacks is a
wait for an auto-paused cluster, so the cluster is woken first, with retries.
"""
from __future__ import annotations

import sqlalchemy as sa

from conveyor.dataapi.client import DataApiDatabase, RetryPolicy
from conveyor.migrations_runner import upgrade

# A paused Serverless v2 cluster resumes in about 15 s; leave room for a slow one.
WAKE_BUDGET_SECONDS = 60.0


def data_api_migration_url(resource_arn: str, secret_arn: str, database: str) -> str:
    """A SQLAlchemy URL for the aurora-data-api dialect; the driver takes the ARNs from its query."""
    return sa.URL.create(
        "postgresql+auroradataapi",
        database=database,
        query={"aurora_cluster_arn": resource_arn, "secret_arn": secret_arn},
    ).render_as_string(hide_password=False)


def upgrade_through_data_api(resource_arn: str, secret_arn: str, database: str, revision: str = "head") -> None:
    wake = DataApiDatabase(resource_arn, secret_arn, database, retry=RetryPolicy(budget_seconds=WAKE_BUDGET_SECONDS))
    try:
        wake.fetch_json("SELECT '1'")
    finally:
        wake.dispose()
    upgrade(data_api_migration_url(resource_arn, secret_arn, database), revision)
