"""Shared fixtures: a real PostgreSQL (embedded, or DATABASE_URL) and a fresh schema per session."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.adapters.database import Database, create_engine_for
from conveyor.local.database import disposable_server, scratch_database

TABLES = ("order_events", "order_lines", "orders", "catalog", "clients")


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


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
