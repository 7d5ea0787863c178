"""A direct PostgreSQL connection (psycopg, pooled by SQLAlchemy): the console's, the CLI's and the local stack's.

Every statement Conveyor runs passes only strings, integers, booleans and NULLs
as parameters and casts them in SQL (``CAST(:x AS jsonb)``), and returns JSON
text for anything richer. That keeps results identical whether the statement
travels over a direct PostgreSQL connection or the RDS Data API, whose driver
mistypes UUIDs, dicts and time zones. Driver errors leave as `conveyor.errors`' errors.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
from pydantic_core import from_json
from sqlalchemy.engine import Engine

from conveyor.adapters.sql import compile_statement
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
    except (sa.exc.DBAPIError, psycopg.Error) as error:
        state = sqlstate_of(error)
        message = str(getattr(error, "orig", error))[:1000]
        lost = getattr(error, "connection_invalidated", False)
        if lost or (state is None and isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError,
                                                         psycopg.OperationalError, psycopg.InterfaceError))):
            raise TransientError(f"the database is unreachable: {message}") from error
        raise database_error(message, state) from error
    except (sa.exc.DisconnectionError, OSError) as error:
        raise TransientError(f"the database is unreachable: {error}") from error


class Database:
    """Runs Conveyor's statements; each call is one round trip.

    SQLAlchemy's pool keeps the connections (checkout ping, invalidation, the console's credential
    hook); statements run on the pooled psycopg connection itself, with PostgreSQL's own `$n`
    placeholders. SQLAlchemy's execution layer and psycopg's `%(name)s` conversion (not cached
    above 4 KB) cost about 0.2 ms of client CPU a statement (measured, bench/README.md).
    """

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
            pooled = self.engine.raw_connection()
        self._pinned.connection = pooled
        try:
            yield
        finally:
            self._pinned.connection = None
            pooled.close()  # back to the pool, or discarded if it was invalidated

    @contextmanager
    def _cursor(self) -> Iterator[psycopg.RawCursor[Any]]:
        pinned = getattr(self._pinned, "connection", None)
        with neutral_errors():
            pooled = pinned if pinned is not None else self.engine.raw_connection()
            connection: psycopg.Connection[Any] | None = pooled.driver_connection
            if connection is None:  # invalidated earlier in this pinned block
                raise TransientError("the database connection was lost; the work will be retried")
            try:
                with psycopg.RawCursor(connection) as cursor:
                    yield cursor
            except psycopg.Error:
                if connection.broken or connection.closed:
                    pooled.invalidate()  # never hand a dead session out again; the pool reconnects
                raise
            finally:
                if pinned is None:
                    pooled.close()

    def _run(self, cursor: psycopg.RawCursor[Any], sql: str, params: dict[str, Any] | list[dict[str, Any]] | None) -> None:
        """One statement, with Conveyor's `:name` parameters sent as PostgreSQL's `$n`."""
        statement = compile_statement(sql)
        try:
            if isinstance(params, list):
                cursor.executemany(statement.sql, [statement.values(row) for row in params])
            else:
                cursor.execute(statement.sql, statement.values(params or {}) if statement.names else None)
        except KeyError as missing:
            raise PermanentError(f"no value given for the statement's parameter {missing}") from None

    def fetch_json(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        """Run a statement that returns one row holding one JSON text column."""
        with self._cursor() as cursor:
            self._run(cursor, sql, params)
            rows = cursor.fetchall()
        if len(rows) != 1 or len(rows[0]) != 1:
            raise PermanentError(f"expected one row with one column, got {len(rows)} rows")
        value = rows[0][0]
        return from_json(value) if isinstance(value, str) else value

    def fetch_json_rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Run a statement whose rows each hold one JSON text column."""
        with self._cursor() as cursor:
            self._run(cursor, sql, params)
            return [from_json(value) if isinstance(value, str) else value for value, *_ in cursor.fetchall()]

    def execute(self, sql: str, params: dict[str, Any] | list[dict[str, Any]] | None = None) -> int:
        with self._cursor() as cursor:
            self._run(cursor, sql, params)
            return cursor.rowcount

    def dispose(self) -> None:
        self.engine.dispose()
