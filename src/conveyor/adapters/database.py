"""A direct PostgreSQL connection (SQLAlchemy over psycopg): the console's, the CLI's and the local stack's.

Every statement Conveyor runs passes only strings, integers, booleans and NULLs
as parameters and casts them in SQL (``CAST(:x AS jsonb)``), and returns JSON
text for anything richer. That keeps results identical whether the statement
travels over a direct PostgreSQL connection or the RDS Data API, whose driver
mistypes UUIDs, dicts and time zones. Driver errors leave as `conveyor.errors`' errors.
"""
from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor.errors import PermanentError, TransientError, database_error


def sqlalchemy_url(database_url: str) -> str:
    """Map a libpq-style URL to SQLAlchemy's psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    return database_url


# A pooled connection idle for longer than this is pinged before use; a busy one is not.
IDLE_PING_SECONDS = 10.0


def create_engine_for(database_url: str, *, autocommit: bool = True, pool_size: int = 5) -> Engine:
    """An engine whose connections autocommit each statement: one round trip per statement."""
    options: dict[str, Any] = {"pool_size": pool_size, "max_overflow": pool_size}
    if not autocommit:
        return sa.create_engine(sqlalchemy_url(database_url), pool_pre_ping=True, **options)
    engine = sa.create_engine(sqlalchemy_url(database_url), isolation_level="AUTOCOMMIT", **options)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Like pool_pre_ping, without a round trip per checkout when the pool is busy."""

    def remember_use(dbapi_connection: Any, record: Any, *_: Any) -> None:
        record.info["last_used"] = time.monotonic()

    def ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if time.monotonic() - record.info.get("last_used", 0.0) < IDLE_PING_SECONDS:
            return
        try:
            dbapi_connection.cursor().execute("SELECT 1")
        except Exception as exc:
            raise sa.exc.DisconnectionError("stale pooled connection") from exc  # the pool reconnects

    sa.event.listen(engine, "connect", remember_use)
    sa.event.listen(engine, "checkin", remember_use)
    sa.event.listen(engine, "checkout", ping_if_idle)


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE behind a driver error."""
    original = getattr(error, "orig", error)
    return getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)


@contextmanager
def neutral_errors() -> Iterator[None]:
    """Driver errors as the project's own: transient, a retryable conflict, or permanent."""
    try:
        yield
    except sa.exc.DBAPIError as error:
        state = sqlstate_of(error)
        message = str(getattr(error, "orig", error))[:1000]
        if error.connection_invalidated or (
                state is None and isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError))):
            raise TransientError(f"the database is unreachable: {message}") from error
        raise database_error(message, state) from error
    except (sa.exc.DisconnectionError, OSError) as error:
        raise TransientError(f"the database is unreachable: {error}") from error
    except (sa.exc.NoResultFound, sa.exc.MultipleResultsFound) as error:
        raise PermanentError(f"expected one row with one column: {error}") from error


@functools.lru_cache(maxsize=256)
def _driver_sql(sql: str, dialect: sa.Dialect) -> str:
    """The statement in the driver's own paramstyle (`%(name)s`), compiled once.

    Executed with exec_driver_sql: SQLAlchemy's per-call compile-cache lookup and bind
    processing of text() were a fifth of the worker's CPU per batch (measured), and these
    statements pass only plain values, cast in SQL.
    """
    return str(sa.text(sql).compile(dialect=dialect))


class Database:
    """Runs Conveyor's statements; each call is one round trip."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._pinned = threading.local()

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Run every statement of the block on one pooled connection: one checkout, one ping."""
        if getattr(self._pinned, "connection", None) is not None:
            yield
            return
        with neutral_errors():
            connection = self.engine.connect()
        with connection:
            self._pinned.connection = connection
            try:
                yield
            finally:
                self._pinned.connection = None

    @contextmanager
    def _connection(self) -> Iterator[sa.Connection]:
        pinned = getattr(self._pinned, "connection", None)
        if pinned is not None:
            yield pinned
        else:
            with self.engine.connect() as connection:
                yield connection

    def fetch_json(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        """Run a statement that returns one row holding one JSON text column."""
        with neutral_errors(), self._connection() as connection:
            value = connection.exec_driver_sql(_driver_sql(sql, connection.dialect), params or {}).scalar_one()
        return json.loads(value) if isinstance(value, str) else value

    def fetch_json_rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Run a statement whose rows each hold one JSON text column."""
        with neutral_errors(), self._connection() as connection:
            rows = connection.exec_driver_sql(_driver_sql(sql, connection.dialect), params or {})
            return [json.loads(value) for value in rows.scalars()]

    def execute(self, sql: str, params: dict[str, Any] | list[dict[str, Any]] | None = None) -> int:
        with neutral_errors(), self._connection() as connection:
            return connection.exec_driver_sql(_driver_sql(sql, connection.dialect), params or {}).rowcount

    def dispose(self) -> None:
        self.engine.dispose()
