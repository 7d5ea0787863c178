"""The console's HTTP entrypoint: parse the request, call one service function, shape the answer.

Routes:
- GET  /healthz                  the process is alive (needs no database)
- GET  /readyz                   the database answers
- POST /api/reconciliations      JSON {"source": "s3://bucket/key" | "/path", "format"?, "cutoff"?, "columns"?,
                                 "timezone"?}, or a multipart upload (file field "report", form fields format,
                                 cutoff, timezone, columns as JSON text); columns maps generic fields to other
                                 column names, timezone (IANA) places a report's local times
                                 A path must lead to a regular file under CONVEYOR_REPORT_DIR (unset: no
                                 paths): callers must not make the service read its own files
- GET  /api/reconciliations/ID   a run: status, progress (rows loaded, rows classified) and result, and
                                 `orphaned` (unfinished, and no live process executes it or has it queued)
- POST /api/reconciliations/ID/restart   execute again an orphaned or FAILED run whose report can still be
                                 read: 202; 409 when it is COMPLETED, in progress, or its report is gone
- GET  /api/reconciliations/ID/discrepancies?category=&after=&limit=

When the background runs are built (at a gunicorn worker's start, see `Services.start`),
runs orphaned by a process that died are recovered in the background (`jobs.BackgroundRuns.recover`).

/api/* needs `Authorization: Bearer TOKEN`: a console user's API token (created at /account; a viewer's
token only reads), or $CONSOLE_ADMIN_TOKEN when set. Every other path is a web page (see web.py).
"""
from __future__ import annotations

import functools
import json
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from conveyor.adapters.database import Database, create_engine_for
from conveyor.console import settings, web
from conveyor.observability import describe_error, get_logger, log_failure
from conveyor.reconciliation.engine import CATEGORIES
from conveyor.reconciliation.formats import FORMATS, GENERIC_COLUMNS, SettlementReportError, check_timezone
from conveyor.reconciliation.jobs import BackgroundRuns, ShuttingDown
from conveyor.reconciliation.service import (
    DirectConnectionRequired, ReconciliationError, ReconciliationService, RunConflict, direct_connection,
)
from conveyor.reconciliation.sources import (
    SettlementFile, SourceRefused, SourceUnreadable, open_offered_source, spool, upload_source,
)
from conveyor.services.access import Role

MAX_DISCREPANCIES_PAGE = 1000
MAX_DISCREPANCY_ID = 2**63 - 1  # bigint
MAX_COLUMN_NAME = 200
MAX_CUTOFF_LENGTH = 64


class Services:
    """The database and the background runs, built on first use: /healthz needs neither."""

    def __init__(self, database_settings: Callable[[], settings.DatabaseSettings] = settings.database_settings):
        self._database_settings = database_settings
        self._lock = threading.Lock()
        self._runs: BackgroundRuns | None = None

    @property
    def runs(self) -> BackgroundRuns:
        with self._lock:
            if self._runs is None:
                self._runs = self._build()
                self._runs.recover_in_background()  # runs orphaned by a process that died
            return self._runs

    def start(self) -> threading.Thread:
        """Build the background runs now, in a thread: recovery should not wait for the first request."""

        def build() -> None:
            try:
                self.runs  # noqa: B018 - built on first access
            except Exception as exc:  # noqa: BLE001 - e.g. not configured: the first request says so
                get_logger("conveyor-console").warning(
                    "reconciliation runs are not recovered at startup", extra={"error": describe_error(exc)})

        thread = threading.Thread(target=build, name="console-startup", daemon=True)
        thread.start()
        return thread

    def _build(self) -> BackgroundRuns:
        configured = self._database_settings()
        if configured.direct_url:
            engine = create_engine_for(configured.direct_url)
            if configured.secret is not None:
                configured.secret.keep_current(engine)  # RDS rotates the secret; new connections follow it
            database = Database(engine)
            connect = functools.partial(direct_connection, engine)
        elif configured.data_api is not None:
            # The API's and the worker's client: each statement one autocommitted ExecuteStatement.
            # (The aurora-data-api dialect cannot autocommit: our writes through it were rolled back.)
            database, connect = configured.data_api, None
            get_logger("conveyor-console").warning(
                "database reached through the RDS Data API: reconciliation runs load without COPY, and are"
                " neither recovered nor restartable after a crash; set DATABASE_URL or DATABASE_SECRET_ARN for"
                " large reports and crash recovery")
        else:
            raise settings.ConfigurationError(
                "no database is configured: set DATABASE_URL, DATABASE_SECRET_ARN, or DATA_API_RESOURCE_ARN"
                " with DATA_API_SECRET_ARN and DATA_API_DATABASE"
            )
        return BackgroundRuns(ReconciliationService(database, connect), report_dir=settings.report_dir())

    def begin_drain(self) -> None:
        if self._runs is not None:
            self._runs.begin_drain()

    def drain(self, timeout: float) -> bool:
        return self._runs.drain(timeout) if self._runs is not None else True


def create_app(services: Services | None = None) -> Flask:
    app = Flask("conveyor.console")
    app.json.sort_keys = False  # categories and totals in their documented order
    services = services or Services()
    app.extensions["conveyor"] = services
    logger = get_logger("conveyor-console")

    def error(status: int, code: str, message: str) -> tuple[Response, int]:
        return jsonify({"error": {"code": code, "message": message}}), status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if web.wants_page():
            return web.page_error(exc.code or 500, exc.name, exc.description or exc.name)
        return error(exc.code or 500, exc.name.lower().replace(" ", "_"), exc.description or exc.name)

    @app.errorhandler(settings.ConfigurationError)
    def not_configured(exc: settings.ConfigurationError):
        return error(503, "not_configured", str(exc))

    @app.errorhandler(ShuttingDown)
    def shutting_down(exc: ShuttingDown):
        return error(503, "shutting_down", str(exc))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log_failure(logger, "request failed", exc, path=request.path)
        if web.wants_page():
            return web.page_error(500, "Something went wrong", "The request failed unexpectedly; try again, and"
                                  " check the service logs.")
        return error(500, "internal_error", "the request failed unexpectedly; try again, and check the service logs")

    @app.before_request
    def authenticate():
        if not request.path.startswith("/api/"):
            return None
        actor = web.bearer_actor(request.headers.get("Authorization", ""))
        if actor is None:
            return error(401, "unauthorized", "send your API token (from /account) or the admin token as"
                         " 'Authorization: Bearer TOKEN'")
        if request.method != "GET" and not actor.can(Role.OPERATOR):
            return error(403, "forbidden", f"{actor.name} is a viewer: starting or restarting runs needs the operator role")
        g.api_actor = actor
        return None

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        try:
            services.runs.service.database.fetch_json("SELECT to_json(1)::text")
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
            return error(503, "not_ready", f"the database is not reachable: {describe_error(exc)}")
        return jsonify({"status": "ready"})

    @app.post("/api/reconciliations")
    def start_reconciliation():
        try:
            command = _start_run_command(services.runs.report_dir)
            run = services.runs.start(command.report, command.format, command.cutoff, command.columns, command.timezone)
        except FileNotFoundError as exc:
            return error(400, "source_not_found", str(exc))
        except SourceRefused as exc:
            return error(400, "source_refused", str(exc))
        except SourceUnreadable as exc:
            return error(400, "source_unreadable", str(exc))
        except (SettlementReportError, ReconciliationError) as exc:
            return error(400, "invalid_report", str(exc))
        run.pop("needs_execution")
        location = f"/api/reconciliations/{run['id']}"
        status = 200 if run["status"] == "COMPLETED" else 202
        return jsonify(_run_view(run)), status, {"Location": location}

    def no_such_run(run_id: str | None) -> tuple[Response, int]:
        if run_id is None:
            return error(404, "not_found", "no such reconciliation run: a run id looks like"
                                           " 0b7f3c2e-5d1a-4c8e-9f6b-2a4d8e1c3b5f")
        return error(404, "not_found", f"no reconciliation run {run_id}")

    @app.get("/api/reconciliations/<run_id>")
    def get_reconciliation(run_id: str):
        run_id = _run_id(run_id)
        run = services.runs.service.get(run_id) if run_id else None
        if run is None:
            return no_such_run(run_id)
        return jsonify(_run_view(run))

    @app.post("/api/reconciliations/<run_id>/restart")
    def restart_reconciliation(run_id: str):
        run_id = _run_id(run_id)
        if run_id is None:
            return no_such_run(run_id)
        try:
            run = services.runs.restart(run_id)
        except RunConflict as exc:
            return error(409, exc.code, str(exc))
        except DirectConnectionRequired as exc:
            return error(503, "not_configured", str(exc))
        if run is None:
            return no_such_run(run_id)
        return jsonify(_run_view(run)), 202, {"Location": f"/api/reconciliations/{run['id']}"}

    @app.get("/api/reconciliations/<run_id>/discrepancies")
    def list_discrepancies(run_id: str):
        service = services.runs.service
        run_id = _run_id(run_id)
        if run_id is None or service.get(run_id) is None:
            return no_such_run(run_id)
        category = request.args.get("category") or None
        if category is not None and category not in CATEGORIES:
            return error(400, "validation_error", f"category must be one of {', '.join(CATEGORIES)}")
        after = _whole_number(request.args.get("after"), 0, MAX_DISCREPANCY_ID)
        limit = _whole_number(request.args.get("limit"), 100, None)
        if after is None or limit is None or limit < 1:
            return error(400, "validation_error", "after must be 0 or a discrepancy id, and limit a whole number"
                                                  f" from 1 (a page holds at most {MAX_DISCREPANCIES_PAGE})")
        limit = min(limit, MAX_DISCREPANCIES_PAGE)
        page = service.discrepancies(run_id, category, after=after, limit=limit)
        return jsonify({"discrepancies": page, "next_after": page[-1]["id"] if len(page) == limit else None})

    web.install(app, services)
    return app


class StartRun(NamedTuple):
    format: str | None
    cutoff: datetime | None
    columns: dict[str, str] | None
    timezone: str | None
    report: SettlementFile


def _start_run_command(report_dir: Path | None) -> StartRun:
    """The run to start, from a JSON body naming its source or a multipart upload.

    A path source is read only under `report_dir` (None: no path); an upload's file name is only recorded.
    """
    if request.files:
        upload = request.files.get("report")
        if upload is None:
            raise ReconciliationError("send the report file in the multipart field 'report'")
        fields: dict[str, Any] = request.form
        report_factory = lambda: spool(upload.stream, upload_source(upload.filename))  # noqa: E731
    else:
        fields = request.get_json(silent=True) or {}
        if not isinstance(fields, dict) or not isinstance(fields.get("source"), str):
            raise ReconciliationError(
                'send JSON {"source": "s3://bucket/key" or "/path/to/report.csv" under the report folder}, or upload'
                " the file as multipart field 'report'"
            )
        report_factory = lambda: open_offered_source(fields["source"], report_dir)  # noqa: E731
    format = _format(fields.get("format"))
    cutoff = _cutoff(fields.get("cutoff"))
    columns = _columns(fields.get("columns"))
    timezone = _timezone(fields.get("timezone"))
    return StartRun(format, cutoff, columns, timezone, report_factory())


def _format(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or value not in FORMATS:
        raise ReconciliationError(f"unknown format; choose one of {', '.join(FORMATS)}, or leave it out to detect it")
    return value


def _columns(value: Any) -> dict[str, str] | None:
    """A generic report's column mapping: a JSON object, or its text in a multipart form field."""
    if not value:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            value = None
    if not (isinstance(value, dict) and len(value) <= len(GENERIC_COLUMNS)
            and all(_is_column_name(name) for pair in value.items() for name in pair)):
        raise ReconciliationError(
            f"columns must be a JSON object mapping fields ({', '.join(GENERIC_COLUMNS)}) to column names of 1 to"
            f' {MAX_COLUMN_NAME} printable characters, e.g. {{"reference": "Order Ref"}}')
    return value


def _is_column_name(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name.strip()) and len(name) <= MAX_COLUMN_NAME and name.isprintable()


def _timezone(value: Any) -> str | None:
    """An IANA time zone name, checked before the report is read or spooled."""
    if not value:
        return None
    if not isinstance(value, str):
        raise ReconciliationError('timezone must be an IANA time zone name, e.g. "Europe/Berlin"')
    check_timezone(value)
    return value


def _cutoff(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        if not isinstance(value, str) or len(value) > MAX_CUTOFF_LENGTH:
            raise ValueError
        return datetime.fromisoformat(value)
    except ValueError:
        raise ReconciliationError("cutoff must be an ISO 8601 time such as 2026-10-31T23:59:59+00:00") from None


def _run_id(value: str) -> str | None:
    """A run id in the form PostgreSQL writes it (any case), or None."""
    try:
        return str(uuid.UUID(value)) if len(value) == 36 else None
    except ValueError:
        return None


def _whole_number(text: str | None, default: int, highest: int | None) -> int | None:
    """A query parameter's whole number (digits only), its default when absent, None when invalid."""
    if not text:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        return None
    number = int(text)
    return number if highest is None or number <= highest else None


def _run_view(run: dict[str, Any]) -> dict[str, Any]:
    return {**run, "links": {"self": f"/api/reconciliations/{run['id']}",
                             "discrepancies": f"/api/reconciliations/{run['id']}/discrepancies"}}
