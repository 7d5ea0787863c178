"""The console's HTTP entrypoint: parse the request, call one service function, shape the answer.

Routes:
- GET  /healthz                  the process is alive (needs no database)
- GET  /readyz                   the database answers
- POST /api/reconciliations      JSON {"source": "s3://bucket/key" | "/path", "format"?, "cutoff"?, "columns"?},
                                 or a multipart upload (file field "report", form fields format, cutoff,
                                 columns as JSON text); columns maps generic fields to other column names
- GET  /api/reconciliations/ID   a run: status, progress (rows loaded, rows classified) and result, and
                                 `orphaned` (unfinished, and no live process executes it or has it queued)
- POST /api/reconciliations/ID/restart   execute again an orphaned or FAILED run whose report can still be
                                 read: 202; 409 when it is COMPLETED, in progress, or its report is gone
- GET  /api/reconciliations/ID/discrepancies?category=&after=&limit=

When the background runs are built (at a gunicorn worker's start, see `Services.start`),
runs orphaned by a process that died are recovered in the background (`jobs.BackgroundRuns.recover`).

/api/* needs `Authorization: Bearer $CONSOLE_ADMIN_TOKEN`; without that variable the API is closed.
"""
from __future__ import annotations

import functools
import hmac
import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from conveyor.adapters.database import Database, create_engine_for
from conveyor.console import settings
from conveyor.observability import get_logger
from conveyor.reconciliation.engine import CATEGORIES
from conveyor.reconciliation.formats import SettlementReportError
from conveyor.reconciliation.jobs import BackgroundRuns, ShuttingDown
from conveyor.reconciliation.service import (
    DirectConnectionRequired, ReconciliationError, ReconciliationService, RunConflict, direct_connection,
)
from conveyor.reconciliation.sources import open_source, spool

MAX_DISCREPANCIES_PAGE = 1000


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
                    "reconciliation runs are not recovered at startup", extra={"error": f"{type(exc).__name__}: {exc}"})

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
        return BackgroundRuns(ReconciliationService(database, connect))

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
        return error(exc.code or 500, exc.name.lower().replace(" ", "_"), exc.description or exc.name)

    @app.errorhandler(settings.ConfigurationError)
    def not_configured(exc: settings.ConfigurationError):
        return error(503, "not_configured", str(exc))

    @app.errorhandler(ShuttingDown)
    def shutting_down(exc: ShuttingDown):
        return error(503, "shutting_down", str(exc))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        logger.exception("request failed", extra={"path": request.path})
        return error(500, "internal_error", "the request failed unexpectedly; try again, and check the service logs")

    @app.before_request
    def authenticate():
        if not request.path.startswith("/api/"):
            return None
        token = settings.admin_token()
        if token is None:
            return error(503, "not_configured", f"the admin API is closed: set {settings.ADMIN_TOKEN_VARIABLE}")
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return error(401, "unauthorized", "send the admin token as 'Authorization: Bearer TOKEN'")
        return None

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        try:
            services.runs.service.database.fetch_json("SELECT to_json(1)::text")
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
            return error(503, "not_ready", f"the database is not reachable: {type(exc).__name__}: {exc}"[:500])
        return jsonify({"status": "ready"})

    @app.post("/api/reconciliations")
    def start_reconciliation():
        try:
            format, cutoff, columns, report = _report_from_request()
            run = services.runs.start(report, format, cutoff, columns)
        except FileNotFoundError as exc:
            return error(400, "source_not_found", str(exc))
        except (SettlementReportError, ReconciliationError) as exc:
            return error(400, "invalid_report", str(exc))
        run.pop("needs_execution")
        location = f"/api/reconciliations/{run['id']}"
        status = 200 if run["status"] == "COMPLETED" else 202
        return jsonify(_run_view(run)), status, {"Location": location}

    @app.get("/api/reconciliations/<run_id>")
    def get_reconciliation(run_id: str):
        run = services.runs.service.get(run_id)
        if run is None:
            return error(404, "not_found", f"no reconciliation run {run_id}")
        return jsonify(_run_view(run))

    @app.post("/api/reconciliations/<run_id>/restart")
    def restart_reconciliation(run_id: str):
        try:
            run = services.runs.restart(run_id)
        except RunConflict as exc:
            return error(409, exc.code, str(exc))
        except DirectConnectionRequired as exc:
            return error(503, "not_configured", str(exc))
        if run is None:
            return error(404, "not_found", f"no reconciliation run {run_id}")
        return jsonify(_run_view(run)), 202, {"Location": f"/api/reconciliations/{run['id']}"}

    @app.get("/api/reconciliations/<run_id>/discrepancies")
    def list_discrepancies(run_id: str):
        service = services.runs.service
        if service.get(run_id) is None:
            return error(404, "not_found", f"no reconciliation run {run_id}")
        category = request.args.get("category") or None
        if category is not None and category not in CATEGORIES:
            return error(400, "validation_error", f"category must be one of {', '.join(CATEGORIES)}")
        try:
            after = int(request.args.get("after", 0))
            limit = min(int(request.args.get("limit", 100)), MAX_DISCREPANCIES_PAGE)
        except ValueError:
            return error(400, "validation_error", "after and limit must be whole numbers")
        page = service.discrepancies(run_id, category, after=after, limit=max(limit, 1))
        return jsonify({"discrepancies": page, "next_after": page[-1]["id"] if len(page) == limit else None})

    return app


def _report_from_request():
    """(format, cutoff, column mapping, report file) from a JSON body or a multipart upload."""
    if request.files:
        upload = request.files.get("report")
        if upload is None:
            raise ReconciliationError("send the report file in the multipart field 'report'")
        fields: dict[str, Any] = request.form
        report_factory = lambda: spool(upload.stream, f"upload:{upload.filename or 'report.csv'}")  # noqa: E731
    else:
        fields = request.get_json(silent=True) or {}
        if not isinstance(fields, dict) or not isinstance(fields.get("source"), str):
            raise ReconciliationError(
                'send JSON {"source": "s3://bucket/key" or "/path/to/report.csv"}, or upload the file as'
                " multipart field 'report'"
            )
        report_factory = lambda: open_source(fields["source"])  # noqa: E731
    format = fields.get("format") or None
    cutoff = _cutoff(fields.get("cutoff"))
    columns = _columns(fields.get("columns"))
    return format, cutoff, columns, report_factory()


def _columns(value: Any) -> dict[str, str] | None:
    """A generic report's column mapping: a JSON object, or its text in a multipart form field."""
    if not value:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, dict) or not all(isinstance(name, str) for name in value.values()):
        raise ReconciliationError(
            'columns must be a JSON object of field to column name, e.g. {"reference": "Order Ref"}')
    return value


def _cutoff(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise ReconciliationError(
            f"cutoff {value!r} is not an ISO 8601 time such as 2026-10-31T23:59:59+00:00") from None


def _run_view(run: dict[str, Any]) -> dict[str, Any]:
    return {**run, "links": {"self": f"/api/reconciliations/{run['id']}",
                             "discrepancies": f"/api/reconciliations/{run['id']}/discrepancies"}}
