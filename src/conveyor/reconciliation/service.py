"""Reconciliation use cases: submit a report, execute its run, read a run, find orphaned runs.

The run row is written through `Database` (one autocommitted statement each, so
progress is visible at once, and a Data API connection can read it); the heavy work
runs in `engine.reconcile` in a single transaction: on a direct psycopg connection, or,
when the service has none, through the Data API (sessions.py).

Who holds a run is kept in PostgreSQL advisory locks, which die with their session
however its process dies (kill -9, OOM, a stopped task):
- the engine's run lock (RUN_LOCK_CLASS, hashtext(id)) while a session executes it;
- a claim (CLAIM_LOCK_CLASS, hashtext(run_key)) while a service process has it queued
  or executing (`RunClaims`). It is taken before the run's row is written, so a run
  being submitted is never taken for an orphan.
A QUEUED, LOADING or CLASSIFYING run that holds neither is orphaned: nobody will finish
it. `orphaned_runs` finds them by reading pg_locks (trying the locks instead would, for
that instant, make an executor starting the run give up), and GET shows `orphaned`.
"""
from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy.engine import Engine

from conveyor.adapters.database import Database
from conveyor.dataapi.client import DataApiDatabase
from conveyor.observability import describe_error, get_logger
from conveyor.reconciliation.engine import (
    CATEGORIES, LOCK_CLASS, RUN_LOCK_CLASS, TOTAL_FIELDS, Progress, RunInterrupted, RunPlan, RunSession, reconcile,
)
from conveyor.reconciliation.formats import FORMATS, SettlementReader, SettlementReportError
from conveyor.reconciliation.sessions import DataApiRunSession, DirectRunSession
from conveyor.reconciliation.sources import SettlementFile

RUN_COLUMNS = """
id, status, source, format, column_map, timezone, content_sha256, requested_cutoff, cutoff, rows_loaded,
rows_classified, counts, totals, unmapped_types, inconsistent_rows, error, attempts, created_at, started_at,
finished_at, updated_at
"""

SUBMIT_RUN = f"""
WITH inserted AS (
    INSERT INTO reconciliation_runs (id, run_key, content_sha256, source, format, column_map, timezone,
                                     requested_cutoff, status)
    VALUES (CAST(:id AS uuid), :run_key, :sha256, :source, :format, CAST(:column_map AS jsonb), :timezone,
            CAST(:cutoff AS timestamptz), 'QUEUED')
    ON CONFLICT (run_key) DO NOTHING
    RETURNING {RUN_COLUMNS}
)
SELECT (SELECT row_to_json(r)::text FROM (
    SELECT {RUN_COLUMNS} FROM inserted
    UNION ALL
    SELECT {RUN_COLUMNS} FROM reconciliation_runs WHERE run_key = :run_key
) r LIMIT 1)
"""

# pg_advisory_lock(class, key) on a run: a service process has it queued or executing.
CLAIM_LOCK_CLASS = LOCK_CLASS + 2
LOCK_CLASSES = {"run_lock_class": RUN_LOCK_CLASS, "claim_lock_class": CLAIM_LOCK_CLASS}


def _advisory_lock_held(lock_class: str, key: str) -> str:
    """SQL: whether any session holds (or awaits) the advisory lock (lock_class, hashtext(key))."""
    return f"""EXISTS (
        SELECT 1 FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.objsubid = 2
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid = CAST({lock_class} AS oid) AND l.objid = CAST(hashtext({key}) AS oid))"""


# Over a reconciliation_runs row; needs the parameters LOCK_CLASSES.
EXECUTING = _advisory_lock_held(":run_lock_class", "CAST(id AS text)")
CLAIMED = _advisory_lock_held(":claim_lock_class", "run_key")
ORPHANED = f"(status IN ('QUEUED', 'LOADING', 'CLASSIFYING') AND NOT {EXECUTING} AND NOT {CLAIMED})"

GET_RUN = f"""
SELECT (SELECT row_to_json(r)::text FROM (
    SELECT {RUN_COLUMNS}, {ORPHANED} AS orphaned FROM reconciliation_runs WHERE id = CAST(:id AS uuid)
) r)
"""

ORPHANED_RUNS = f"""
SELECT COALESCE(json_agg(r ORDER BY r.created_at), '[]')::text FROM (
    SELECT {RUN_COLUMNS}, true AS orphaned FROM reconciliation_runs WHERE {ORPHANED}
) r
"""

# What taking a run over needs to know, the run_key included (it is not shown to users).
RUN_HOLDERS = f"""
SELECT (SELECT row_to_json(r)::text FROM (
    SELECT id, run_key, status, source, content_sha256, {EXECUTING} AS executing
    FROM reconciliation_runs WHERE id = CAST(:id AS uuid)
) r)
"""

# Queue a run again for a process that has claimed it, unless some session executes it.
REQUEUE_TAKEN_OVER_RUN = f"""
UPDATE reconciliation_runs
SET status = 'QUEUED', error = NULL, rows_loaded = 0, rows_classified = 0, finished_at = NULL, updated_at = now()
WHERE id = CAST(:id AS uuid)
  AND (status IN ('QUEUED', 'LOADING', 'CLASSIFYING') OR (status = 'FAILED' AND CAST(:allow_failed AS boolean)))
  AND NOT {EXECUTING}
"""

# updated_at is the last sign of life of the run's executor (its progress), or when it was left.
FAIL_ORPHANED_RUN = f"""
UPDATE reconciliation_runs SET status = 'FAILED', error = :error, finished_at = now(), updated_at = now()
WHERE id = CAST(:id AS uuid) AND status IN ('QUEUED', 'LOADING', 'CLASSIFYING') AND NOT {EXECUTING}
  AND updated_at <= now() - make_interval(secs => CAST(:orphaned_for AS integer))
"""

# A run this process stops without finishing: nothing of it was applied, the next start recovers it.
LEAVE_FOR_RECOVERY = """
UPDATE reconciliation_runs
SET status = 'QUEUED', error = :note, rows_loaded = 0, rows_classified = 0, updated_at = now()
WHERE id = CAST(:id AS uuid) AND status IN ('QUEUED', 'LOADING', 'CLASSIFYING')
"""

RUN_STATUSES = """
SELECT COALESCE(json_object_agg(id, status), '{}')::text FROM reconciliation_runs
WHERE id IN (SELECT CAST(value AS uuid) FROM json_array_elements_text(CAST(:ids AS json)))
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

# One row per discrepancy: the Data API caps a row at 64 KB, which a page as one row outgrows.
LIST_DISCREPANCIES = """
SELECT row_to_json(d)::text FROM (
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


class DirectConnectionRequired(ReconciliationError):
    """Taking a run over needs a claim, a lock held by a lasting session: the Data API has none."""

    def __init__(self) -> None:
        super().__init__(
            "restarting a run needs a direct PostgreSQL connection (its claim is a lock held by a lasting"
            " session, which the Data API does not keep): set DATABASE_URL or DATABASE_SECRET_ARN, or submit"
            " the report again"
        )


class RunConflict(RuntimeError):
    """A run cannot be taken over in its present state; `code` says why, the message what to do."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


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


class RunClaims:
    """The runs this process has queued or is executing, as claims every session can see.

    A claim is a session-level advisory lock (CLAIM_LOCK_CLASS, hashtext(run_key)) on one
    dedicated connection: it vanishes with the process, however that ends. Claims are
    re-entrant within a session, so this process also remembers its own.
    """

    def __init__(self, connect: ConnectionFactory):
        self._connect = connect
        self._lock = threading.Lock()
        self._session: ExitStack | None = None
        self._connection: psycopg.Connection | None = None
        self._held: set[str] = set()
        self._closed = False

    def take(self, run_key: str) -> bool:
        """Claim a run; False if this process or another live one holds it already."""
        with self._lock:
            if self._closed or run_key in self._held:
                return False
            for attempt in (1, 2):
                connection = self._open()
                try:
                    taken = connection.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                                               (CLAIM_LOCK_CLASS, run_key)).fetchone()[0]
                    break
                except psycopg.OperationalError:
                    self._drop()  # the session is gone, and every claim with it: open another once
                    if attempt == 2:
                        raise
            if taken:
                self._held.add(run_key)
            return taken

    def release(self, run_key: str) -> None:
        with self._lock:
            if run_key not in self._held:
                return
            self._held.discard(run_key)
            if self._connection is None:
                return
            try:
                self._connection.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (CLAIM_LOCK_CLASS, run_key))
            except psycopg.Error:
                self._drop()  # the next take reopens the session and claims what is still held

    def close(self) -> None:
        """Release every claim; later takes fail."""
        with self._lock:
            self._closed = True
            self._held.clear()
            self._drop()

    def _open(self) -> psycopg.Connection:
        if self._connection is None:
            session = ExitStack()
            self._connection = session.enter_context(self._connect())
            self._session = session
            for run_key in self._held:  # claimed on a session that broke: claim again
                self._connection.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (CLAIM_LOCK_CLASS, run_key))
        return self._connection

    def _drop(self) -> None:
        session, self._session, self._connection = self._session, None, None
        if session is not None:
            # Leaving with an exception makes direct_connection discard the connection rather than pool
            # it: its session ends, and the claims with it.
            closing = ConnectionAbortedError("run claims released")
            session.__exit__(type(closing), closing, None)


class ReconciliationService:
    def __init__(self, database: Database | DataApiDatabase, connect: ConnectionFactory | None, logger: Any = None):
        """`connect` gives a direct psycopg connection; None when only the Data API is reachable
        (then `database` is a DataApiDatabase, and runs execute through it, without COPY)."""
        if connect is None and not isinstance(database, DataApiDatabase):
            raise TypeError("without a direct connection, runs execute through the Data API: pass a DataApiDatabase")
        self.database = database
        self.connect = connect
        self.logger = logger or get_logger("conveyor-reconciliation")

    def submit(self, report: SettlementFile, format: str | None = None, cutoff: datetime | None = None,
               column_map: dict[str, str] | None = None, timezone: str | None = None) -> dict[str, Any]:
        """The run for this report: an existing one for the same content, or a new QUEUED one.

        Its `needs_execution` says whether it still has to be executed (it is not
        COMPLETED; a FAILED run is queued again, so submitting again restarts it).
        `column_map` reads a generic report's fields from other columns ({"reference": "Order Ref"});
        `timezone` (IANA name) places the report's local times, e.g. Stripe's `created`.
        """
        run, _ = self._submit(report, format, cutoff, column_map, timezone, claims=None)
        return run

    def submit_claimed(self, report: SettlementFile, format: str | None, cutoff: datetime | None,
                       claims: RunClaims, column_map: dict[str, str] | None = None, timezone: str | None = None,
                       ) -> tuple[dict[str, Any], str | None]:
        """Submit a report and claim its run for this process before the run's row is written.

        Returns the run and, when this caller is to execute it, the claimed run key (release
        it once done). None, and `needs_execution` false, when the run is COMPLETED or a live
        process (this one included) already has it queued or executing.
        """
        return self._submit(report, format, cutoff, column_map, timezone, claims)

    def _submit(self, report: SettlementFile, format: str | None, cutoff: datetime | None,
                column_map: dict[str, str] | None, timezone: str | None,
                claims: RunClaims | None) -> tuple[dict[str, Any], str | None]:
        if format is not None and format not in FORMATS:
            raise ReconciliationError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
        if cutoff is not None and cutoff.tzinfo is None:
            raise ReconciliationError("the cutoff needs a time zone, e.g. 2026-10-31T23:59:59+00:00")
        with report.open_text() as text:  # refuse an unreadable report now, not later
            reader = SettlementReader(text, format, column_map, timezone=timezone)
        if cutoff is None and reader.timestamp_problem:
            raise SettlementReportError(reader.timestamp_problem)
        format, column_map, timezone = reader.format, reader.column_map, reader.timezone
        requested_cutoff = cutoff.isoformat() if cutoff else None
        # The mapping and the time zone decide what the report says, so they are part of the run
        # (where the reader uses them); without them, keys stay as before.
        mapping = json.dumps(column_map, sort_keys=True) if column_map else None
        identity = f"{report.sha256}\n{format}\n{requested_cutoff or ''}"
        if mapping:
            identity += f"\n{mapping}"
        if timezone:
            identity += f"\ntimezone={timezone}"
        run_key = hashlib.sha256(identity.encode()).hexdigest()
        params = {"id": str(uuid.uuid4()), "run_key": run_key, "sha256": report.sha256, "source": report.source,
                  "format": format, "column_map": mapping, "timezone": timezone, "cutoff": requested_cutoff}
        claimed = claims is not None and claims.take(run_key)
        try:
            run = self.database.fetch_json(SUBMIT_RUN, params)
            if run is None:  # a concurrent submit of the same report committed after our snapshot
                run = self.database.fetch_json(SUBMIT_RUN, params)
            if run["status"] == "FAILED" and (claims is None or claimed):
                self.database.execute(REQUEUE_FAILED_RUN, {"id": run["id"]})
            run = self.get(run["id"])
        except BaseException:
            if claimed:
                claims.release(run_key)
            raise
        if claimed and run["status"] == "COMPLETED":
            claims.release(run_key)
            claimed = False
        run["needs_execution"] = run["status"] != "COMPLETED" and (claims is None or claimed)
        return run, run_key if claimed else None

    def execute(self, run_id: str, report: SettlementFile, on_progress: Callable[[Progress], None] = lambda _: None,
                stop: threading.Event | None = None) -> dict[str, Any]:
        """Execute a submitted run to completion (or failure) and return it."""
        run = self.get(run_id)
        if run is None:
            raise ReconciliationError(f"no reconciliation run {run_id}; submit the report first")
        requested_cutoff = datetime.fromisoformat(run["requested_cutoff"]) if run["requested_cutoff"] else None
        plan = RunPlan(run_id=run_id, format=run["format"], column_map=run["column_map"],
                       timezone=run["timezone"], requested_cutoff=requested_cutoff)
        log = {"run_id": run_id, "source": run["source"], "format": run["format"]}

        started = threading.Event()

        def record(progress: Progress) -> None:
            if progress.stage == "LOADING" and not started.is_set():
                # The engine holds the locks now: until here the run waited, QUEUED, behind another.
                started.set()  # once: an attempt is counted once, however many updates report 0 rows
                self.database.execute(START_RUN, {"id": run_id})
                self.logger.info("reconciliation started", extra=log)
            elif progress.stage != "COMPLETED":  # the engine completes the run in its own transaction
                self.database.execute(RECORD_PROGRESS, {"id": run_id, "stage": progress.stage,
                                                        "rows_loaded": progress.rows_loaded,
                                                        "rows_classified": progress.rows_classified})
            on_progress(progress)

        try:
            with self._run_session() as session:
                result = reconcile(session, plan, report.path, record, stop)
        except SettlementReportError as exc:
            self._fail(run_id, str(exc), log)
        except RunInterrupted:
            # Stopped by a shutdown: the run is not at fault, so it stays unfinished for the next start.
            self.leave_for_recovery(run_id, INTERRUPTED_NOTE)
            self.logger.warning("reconciliation interrupted; left for recovery", extra=log)
        except Exception as exc:
            self._fail(run_id, f"the run stopped on an unexpected error ({describe_error(exc)}); nothing was"
                       " applied. Submit the report again to restart it.", log)
            raise
        else:
            if result is None:
                self.logger.info("reconciliation already executed elsewhere", extra=log)
            else:
                self.logger.info("reconciliation completed", extra={**log, "counts": result.counts,
                                                                      "rows_loaded": result.rows_loaded})
        return self.get(run_id)

    @contextmanager
    def _run_session(self) -> Iterator[RunSession]:
        """A direct connection when there is one (COPY is far faster), else the Data API."""
        if self.connect is not None:
            with self.connect() as connection:
                yield DirectRunSession(connection)
        else:
            yield DataApiRunSession(self.database)

    def _fail(self, run_id: str, error: str, log: dict[str, Any]) -> None:
        self.logger.warning("reconciliation failed", extra={**log, "error": error})
        self.database.execute(FAIL_RUN, {"id": run_id, "error": error})

    def get(self, run_id: str) -> dict[str, Any] | None:
        """A run, with `orphaned`: unfinished, and no live process executes it or has it queued."""
        if not _is_uuid(run_id):
            return None
        return _in_category_order(self.database.fetch_json(GET_RUN, {"id": run_id, **LOCK_CLASSES}))

    def orphaned_runs(self) -> list[dict[str, Any]]:
        """Unfinished runs that nobody executes or has queued, oldest first: their process died."""
        return [_in_category_order(run) for run in self.database.fetch_json(ORPHANED_RUNS, LOCK_CLASSES)]

    def holders(self, run_id: str) -> dict[str, Any] | None:
        """What taking a run over needs: id, run_key, status, source, content_sha256, executing."""
        if not _is_uuid(run_id):
            return None
        return self.database.fetch_json(RUN_HOLDERS, {"id": run_id, **LOCK_CLASSES})

    def requeue_taken_over(self, run_id: str, allow_failed: bool) -> bool:
        """QUEUED again for the process that claimed it; False if it finished or some session executes it."""
        return self.database.execute(REQUEUE_TAKEN_OVER_RUN,
                                     {"id": run_id, "allow_failed": allow_failed, **LOCK_CLASSES}) == 1

    def fail_orphaned(self, run_id: str, error: str, orphaned_for: int = 0) -> bool:
        """FAILED with `error` if unchanged for `orphaned_for` s, unless it finished or some session executes it."""
        failed = self.database.execute(FAIL_ORPHANED_RUN, {"id": run_id, "error": error, "orphaned_for": orphaned_for,
                                                           **LOCK_CLASSES}) == 1
        if failed:
            self.logger.warning("orphaned reconciliation failed", extra={"run_id": run_id, "error": error})
        return failed

    def leave_for_recovery(self, run_id: str, note: str) -> None:
        """QUEUED again with `note` as its error: this process stops without finishing it."""
        self.database.execute(LEAVE_FOR_RECOVERY, {"id": run_id, "note": note})

    def statuses(self, run_ids: list[str]) -> dict[str, str]:
        """Each existing run's status, by id."""
        return self.database.fetch_json(RUN_STATUSES, {"ids": json.dumps([r for r in run_ids if _is_uuid(r)])})

    def discrepancies(self, run_id: str, category: str | None = None, after: int = 0,
                      limit: int = 100) -> list[dict[str, Any]]:
        """A page of a run's discrepancies in id order; pass the last id as `after` for the next."""
        return self.database.fetch_json_rows(LIST_DISCREPANCIES, {"run_id": run_id, "category": category,
                                                             "after": after, "limit": limit})


INTERRUPTED_NOTE = (
    "the service stopped while executing this run; nothing of it was applied. It is executed again when the"
    " service starts, if its report can still be read; otherwise it fails saying what to do"
)
NOT_STARTED_NOTE = (
    "the service stopped before it started this run; nothing of it was applied. It is executed when the"
    " service starts again, if its report can still be read; otherwise it fails saying what to do"
)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def _in_category_order(run: dict[str, Any] | None) -> dict[str, Any] | None:
    # jsonb keeps keys sorted; show them in the documented order (unmapped types: most rows first).
    if run and run["counts"]:
        run["counts"] = {category: run["counts"].get(category, 0) for category in CATEGORIES}
    if run and run["totals"]:
        run["totals"] = {currency: {field: amounts[field] for field in TOTAL_FIELDS}
                         for currency, amounts in run["totals"].items()}
    if run and run["unmapped_types"]:
        run["unmapped_types"] = dict(sorted(run["unmapped_types"].items(), key=lambda item: (-item[1], item[0])))
    return run
