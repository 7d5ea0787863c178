"""Reconciliation use cases: submit a report, execute its run, read a run.

The run row is written through `Database` (one autocommitted statement each, so
progress is visible at once, and a Data API connection can read it); the heavy work
runs in `engine.reconcile` on a direct psycopg connection in a single transaction.
"""
from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy.engine import Engine

from conveyor.adapters.database import Database
from conveyor.observability import get_logger
from conveyor.reconciliation.engine import CATEGORIES, TOTAL_FIELDS, Progress, RunInterrupted, RunPlan, reconcile
from conveyor.reconciliation.formats import FORMATS, SettlementReader, SettlementReportError
from conveyor.reconciliation.sources import SettlementFile

RUN_COLUMNS = """
id, status, source, format, content_sha256, requested_cutoff, cutoff, rows_loaded, rows_classified,
counts, totals, error, attempts, created_at, started_at, finished_at, updated_at
"""

SUBMIT_RUN = f"""
WITH inserted AS (
    INSERT INTO reconciliation_runs (id, run_key, content_sha256, source, format, requested_cutoff, status)
    VALUES (CAST(:id AS uuid), :run_key, :sha256, :source, :format, CAST(:cutoff AS timestamptz), 'QUEUED')
    ON CONFLICT (run_key) DO NOTHING
    RETURNING {RUN_COLUMNS}
)
SELECT (SELECT row_to_json(r)::text FROM (
    SELECT {RUN_COLUMNS} FROM inserted
    UNION ALL
    SELECT {RUN_COLUMNS} FROM reconciliation_runs WHERE run_key = :run_key
) r LIMIT 1)
"""

GET_RUN = f"""
SELECT (SELECT row_to_json(r)::text FROM (
    SELECT {RUN_COLUMNS} FROM reconciliation_runs WHERE id = CAST(:id AS uuid)
) r)
"""

REQUEUE_FAILED_RUN = """
UPDATE reconciliation_runs SET status = 'QUEUED', error = NULL, updated_at = now()
WHERE id = CAST(:id AS uuid) AND status = 'FAILED'
"""

START_RUN = """
UPDATE reconciliation_runs
SET status = 'LOADING', attempts = attempts + 1, started_at = now(), finished_at = NULL,
    rows_loaded = 0, rows_classified = 0, error = NULL, updated_at = now()
WHERE id = CAST(:id AS uuid) AND status <> 'COMPLETED'
"""

RECORD_PROGRESS = """
UPDATE reconciliation_runs
SET status = :stage, rows_loaded = :rows_loaded, rows_classified = :rows_classified, updated_at = now()
WHERE id = CAST(:id AS uuid) AND status <> 'COMPLETED'
"""

FAIL_RUN = """
UPDATE reconciliation_runs SET status = 'FAILED', error = :error, finished_at = now(), updated_at = now()
WHERE id = CAST(:id AS uuid) AND status <> 'COMPLETED'
"""

LIST_DISCREPANCIES = """
SELECT COALESCE(json_agg(d ORDER BY d.id), '[]')::text FROM (
    SELECT id, category, order_id, order_status, payment_reference, expected_currency, expected_amount,
           settled_currency, settled_amount, settlement_rows, report_lines
    FROM reconciliation_discrepancies
    WHERE run_id = CAST(:run_id AS uuid) AND (CAST(:category AS text) IS NULL OR category = :category)
      AND id > :after
    ORDER BY id
    LIMIT :limit
) d
"""

ConnectionFactory = Callable[[], AbstractContextManager[psycopg.Connection]]


class ReconciliationError(ValueError):
    """A request that cannot be served as given; the message says what to do instead."""


@contextmanager
def direct_connection(engine: Engine) -> Iterator[psycopg.Connection]:
    """A pooled psycopg connection from a SQLAlchemy engine, for COPY and explicit transactions."""
    pooled = engine.raw_connection()
    try:
        connection = pooled.driver_connection
        connection.autocommit = True  # transactions are opened explicitly with connection.transaction()
        yield connection
    except BaseException:
        pooled.invalidate()  # the session may be broken or mid-transaction: never hand it out again
        raise
    finally:
        pooled.close()


class ReconciliationService:
    def __init__(self, database: Database, connect: ConnectionFactory | None, logger: Any = None):
        """`connect` gives a direct psycopg connection; None when only the Data API is reachable."""
        self.database = database
        self.connect = connect
        self.logger = logger or get_logger("conveyor-reconciliation")

    def submit(self, report: SettlementFile, format: str | None = None,
               cutoff: datetime | None = None) -> dict[str, Any]:
        """The run for this report: an existing one for the same content, or a new QUEUED one.

        Its `needs_execution` says whether it still has to be executed (it is not
        COMPLETED; a FAILED run is queued again, so submitting again restarts it).
        """
        if format is not None and format not in FORMATS:
            raise ReconciliationError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
        if cutoff is not None and cutoff.tzinfo is None:
            raise ReconciliationError("the cutoff needs a time zone, e.g. 2026-10-31T23:59:59+00:00")
        with report.open_text() as text:
            format = SettlementReader(text, format).format  # refuse an unreadable report now, not later
        requested_cutoff = cutoff.isoformat() if cutoff else None
        run_key = hashlib.sha256(f"{report.sha256}\n{format}\n{requested_cutoff or ''}".encode()).hexdigest()
        params = {"id": str(uuid.uuid4()), "run_key": run_key, "sha256": report.sha256,
                  "source": report.source, "format": format, "cutoff": requested_cutoff}
        run = self.database.fetch_json(SUBMIT_RUN, params)
        if run is None:  # a concurrent submit of the same report committed after our snapshot
            run = self.database.fetch_json(SUBMIT_RUN, params)
        if run["status"] == "FAILED":
            self.database.execute(REQUEUE_FAILED_RUN, {"id": run["id"]})
            run = self.get(run["id"])
        run["needs_execution"] = run["status"] != "COMPLETED"
        return _in_category_order(run)

    def execute(self, run_id: str, report: SettlementFile, on_progress: Callable[[Progress], None] = lambda _: None,
                stop: threading.Event | None = None) -> dict[str, Any]:
        """Execute a submitted run to completion (or failure) and return it."""
        if self.connect is None:
            raise ReconciliationError(
                "reconciliation needs a direct PostgreSQL connection (COPY is not available through the"
                " Data API): set DATABASE_URL or DATABASE_SECRET_ARN"
            )
        run = self.get(run_id)
        if run is None:
            raise ReconciliationError(f"no reconciliation run {run_id}; submit the report first")
        plan = RunPlan(run_id=run_id, format=run["format"],
                       requested_cutoff=datetime.fromisoformat(run["requested_cutoff"]) if run["requested_cutoff"] else None)
        log = {"run_id": run_id, "source": run["source"], "format": run["format"]}

        def record(progress: Progress) -> None:
            if progress.stage == "LOADING" and progress.rows_loaded == 0:
                # The engine holds the locks now: until here the run waited, QUEUED, behind another.
                self.database.execute(START_RUN, {"id": run_id})
                self.logger.info("reconciliation started", extra=log)
            elif progress.stage != "COMPLETED":  # the engine completes the run in its own transaction
                self.database.execute(RECORD_PROGRESS, {"id": run_id, "stage": progress.stage,
                                                        "rows_loaded": progress.rows_loaded,
                                                        "rows_classified": progress.rows_classified})
            on_progress(progress)

        try:
            with self.connect() as connection, report.open_text() as text:
                result = reconcile(connection, plan, text, record, stop)
        except SettlementReportError as exc:
            self._fail(run_id, str(exc), log)
        except RunInterrupted as exc:
            self._fail(run_id, f"{exc}. Submit the report again to restart the run.", log)
        except Exception as exc:
            self._fail(run_id, f"the run stopped on an unexpected error ({type(exc).__name__}: {exc}); nothing was"
                       " applied. Submit the report again to restart it.", log)
            raise
        else:
            if result is None:
                self.logger.info("reconciliation already executed elsewhere", extra=log)
            else:
                self.logger.info("reconciliation completed", extra={**log, "counts": result.counts,
                                                                      "rows_loaded": result.rows_loaded})
        return self.get(run_id)

    def _fail(self, run_id: str, error: str, log: dict[str, Any]) -> None:
        self.logger.warning("reconciliation failed", extra={**log, "error": error})
        self.database.execute(FAIL_RUN, {"id": run_id, "error": error})

    def get(self, run_id: str) -> dict[str, Any] | None:
        try:
            uuid.UUID(run_id)
        except ValueError:
            return None
        return _in_category_order(self.database.fetch_json(GET_RUN, {"id": run_id}))

    def discrepancies(self, run_id: str, category: str | None = None, after: int = 0,
                      limit: int = 100) -> list[dict[str, Any]]:
        """A page of a run's discrepancies in id order; pass the last id as `after` for the next."""
        return self.database.fetch_json(LIST_DISCREPANCIES, {"run_id": run_id, "category": category,
                                                             "after": after, "limit": limit})


def _in_category_order(run: dict[str, Any] | None) -> dict[str, Any] | None:
    # jsonb keeps keys sorted; show them in the documented order.
    if run and run["counts"]:
        run["counts"] = {category: run["counts"].get(category, 0) for category in CATEGORIES}
    if run and run["totals"]:
        run["totals"] = {currency: {field: amounts[field] for field in TOTAL_FIELDS}
                         for currency, amounts in run["totals"].items()}
    return run
