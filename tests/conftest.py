"""Shared fixtures: a real PostgreSQL (embedded, or DATABASE_URL) and a fresh schema per session."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sqlalchemy.engine import make_url

from conveyor.adapters.database import Database, create_engine_for
from conveyor.dataapi.client import DataApiDatabase
from conveyor_tools.dataapi.server import LocalDataApi
from conveyor_tools.local.database import disposable_server, scratch_database
from conveyor_tools.local.stack import LOCAL_CLUSTER_ARN, LOCAL_SECRET_ARN

TABLES = ("discrepancy_resolutions", "admin_audit", "message_failures", "console_api_tokens", "console_login_failures",
          "console_users", "reconciliation_discrepancies", "reconciliation_runs", "order_payment_status",
          "order_events", "order_lines", "orders", "catalog", "clients")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database made for this test session, migrated to head, dropped at the end."""
    with disposable_server() as server_url, scratch_database(server_url, "conveyor_test") as url:
        yield url


@pytest.fixture(scope="session")
def session_database(database_url: str) -> Iterator[Database]:
    database = Database(create_engine_for(database_url, pool_size=10))
    yield database
    database.dispose()


@pytest.fixture
def database(session_database: Database) -> Database:
    """The session's database, emptied before each test."""
    session_database.execute(f"TRUNCATE {', '.join(TABLES)}")
    return session_database


@pytest.fixture(scope="session")
def data_api_endpoint(database_url: str) -> Iterator[LocalDataApi]:
    """The local RDS Data API in front of the session's database, found by boto3 as on Lambda."""
    with LocalDataApi(database_url) as api, pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL_RDS_DATA", api.endpoint_url)
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_ACCESS_KEY_ID", "test")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield api


@pytest.fixture(params=["direct", "data_api"])
def worker_database(request, database: Database, database_url: str) -> Iterator[Database | DataApiDatabase]:
    """What the worker runs on: a direct connection, or the Data API as on Lambda. Tests run on both."""
    if request.param == "direct":
        yield database
        return
    endpoint = request.getfixturevalue("data_api_endpoint")
    endpoint.resume()
    data_api = DataApiDatabase(LOCAL_CLUSTER_ARN, LOCAL_SECRET_ARN, make_url(database_url).database)
    yield data_api
    data_api.dispose()


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
