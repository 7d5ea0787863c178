"""The two ways a run reaches PostgreSQL (engine.RunSession): a direct connection, or the RDS Data API.

The direct session is the fast one: it loads with COPY, from several reading processes
for a large report (loading.py). The Data API session is the
fallback for a service that can reach the cluster only through the Data API: one Data
API transaction (BeginTransaction … CommitTransaction) holds the run, and records go
in with BatchExecuteStatement, a chunk per call. It is slower, and each statement must
finish within the Data API's 45 s, so large reports belong on a direct connection.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any

import psycopg

from conveyor.dataapi.client import DataApiDatabase, DataApiTransaction
from conveyor.errors import PermanentError
from conveyor.reconciliation.engine import ValueRefused
from conveyor.reconciliation.formats import STAGING_COLUMNS
from conveyor.reconciliation.loading import LINES_PER_BLOCK, ReportRows

COPY_STAGING = f"COPY settlement_staging ({', '.join(STAGING_COLUMNS)}) FROM STDIN"
COPY_CHUNK_ROWS = 100_000  # records per progress report
# Records per BatchExecuteStatement: well under its request size limit for report rows.
DATA_API_CHUNK_ROWS = 1_000
INSERT_STAGING = (
    f"INSERT INTO settlement_staging ({', '.join(STAGING_COLUMNS)}) VALUES ("
    + ", ".join("CAST(:created_at AS timestamptz)" if column == "created_at" else f":{column}"
                for column in STAGING_COLUMNS)
    + ")"
)


class DirectRunSession:
    """A run over a direct psycopg connection (autocommit; the run opens its own transaction)."""

    def __init__(self, connection: psycopg.Connection):
        self.connection = connection
        self._cursor: psycopg.Cursor | None = None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.connection.transaction(), self.connection.cursor() as cursor:
            self._cursor = cursor
            try:
                yield
            finally:
                self._cursor = None

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._cursor.execute(sql, params)

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self._cursor.execute(sql, params).fetchall()

    def load_staging(self, rows: ReportRows, on_chunk: Callable[[int], None]) -> int:
        """One COPY; progress every COPY_CHUNK_ROWS records."""
        rows_loaded = reported = 0
        try:
            with self._cursor.copy(COPY_STAGING) as copy:
                for text, count in rows.copy_text(min(COPY_CHUNK_ROWS, LINES_PER_BLOCK)):
                    copy.write(text)
                    rows_loaded += count
                    if rows_loaded - reported >= COPY_CHUNK_ROWS:
                        reported = rows_loaded
                        on_chunk(rows_loaded)
        except psycopg.errors.DataError as exc:
            raise ValueRefused(f"{exc.diag.message_primary} ({exc.diag.context or 'no context'})") from None
        if rows_loaded != reported:
            on_chunk(rows_loaded)
        return rows_loaded


class DataApiRunSession:
    """A run through the RDS Data API, in one Data API transaction."""

    def __init__(self, database: DataApiDatabase):
        self.database = database
        self._transaction: DataApiTransaction | None = None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.database.transaction() as transaction:
            self._transaction = transaction
            try:
                yield
            finally:
                self._transaction = None

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._transaction.execute(_named(sql), params)

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self._transaction.rows(_named(sql), params)

    def load_staging(self, rows: ReportRows, on_chunk: Callable[[int], None]) -> int:
        """One BatchExecuteStatement per DATA_API_CHUNK_ROWS records."""
        rows_loaded = 0
        records = rows.records(DATA_API_CHUNK_ROWS)
        while chunk := [dict(zip(STAGING_COLUMNS, record)) for record in islice(records, DATA_API_CHUNK_ROWS)]:
            try:
                self._transaction.execute_batch(INSERT_STAGING, chunk)
            except PermanentError as exc:
                if (exc.sqlstate or "")[:2] != "22":  # not a data exception: not the report's fault
                    raise
                raise ValueRefused(f"{exc} (lines {chunk[0]['line_no']} to {chunk[-1]['line_no']})") from None
            rows_loaded += len(chunk)
            on_chunk(rows_loaded)
        return rows_loaded


_PSYCOPG_PARAMETER = re.compile(r"%\((\w+)\)s")


def _named(sql: str) -> str:
    """psycopg's %(name)s parameters as the Data API's :name."""
    return _PSYCOPG_PARAMETER.sub(r":\1", sql)
