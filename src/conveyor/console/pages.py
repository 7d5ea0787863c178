"""The console's pages: each parses the request, calls one service function, and renders the answer."""
from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import login_required

from conveyor.adapters.api_keys import api_key_registry
from conveyor.adapters.dead_letter_queue import QueueError
from conveyor.console import context
from conveyor.console.settings import ConfigurationError
from conveyor.console.web import actor, database
from conveyor.domain.orders import OrderStatus
from conveyor.observability import new_correlation_id
from conveyor.reconciliation.engine import CATEGORIES
from conveyor.reconciliation.service import ReconciliationError
from conveyor.reconciliation.formats import check_timezone
from conveyor.reconciliation.sources import SourceUnreadable, open_offered_source, spool, upload_source
from conveyor.services import audit, clients, dead_letters, order_queries, reconciliation_views, stock
from conveyor.services.access import Role
from conveyor.services.admin import AdminError
from conveyor.services.csv_export import csv_lines

blueprint = Blueprint("pages", __name__)
RUNNING = ("QUEUED", "LOADING", "CLASSIFYING")


@blueprint.before_request
@login_required
def signed_in():
    return None


def _back(endpoint: str, **values):
    return redirect(url_for(endpoint, **values))


def _csv(name: str, header, rows) -> Response:
    response = Response(csv_lines(header, rows), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/")
def dashboard():
    board = reconciliation_views.dashboard(database(), actor())
    queues, queue_error = None, None
    try:
        dlq = context.dead_letter_queue()
        depths = dlq.depths()
        oldest = dead_letters.oldest_age_seconds(dlq.peek(10)) if depths.dead_letters else None
        queues = {"depths": depths, "oldest_dead_letter_seconds": oldest}
    except (ConfigurationError, QueueError) as exc:
        queue_error = str(exc)
    return render_template("dashboard.html", board=board, queues=queues, queue_error=queue_error,
                           statuses=list(OrderStatus.__members__))


def _order_filter() -> order_queries.OrderFilter:
    return order_queries.OrderFilter.parse(request.args.get("q"), request.args.get("status"),
                                           request.args.get("since"), request.args.get("until"))


@blueprint.get("/orders")
def orders():
    try:
        filters = _order_filter()
        rows, next_cursor = order_queries.search(database(), actor(), filters, request.args.get("cursor"))
    except order_queries.OrderQueryError as exc:
        flash(str(exc), "error")
        filters, rows, next_cursor = order_queries.OrderFilter(), [], None
    args = {k: v for k, v in request.args.items() if k != "cursor" and v}
    return render_template("orders.html", rows=rows, filters=filters, args=args, next_cursor=next_cursor,
                           statuses=list(OrderStatus.__members__), first_page="cursor" not in request.args)


@blueprint.get("/orders.csv")
def orders_csv():
    try:
        filters = _order_filter()
    except order_queries.OrderQueryError as exc:
        abort(400, str(exc))
    return _csv("orders.csv", order_queries.EXPORT_COLUMNS, order_queries.export_rows(database(), actor(), filters))


@blueprint.get("/orders/<order_id>")
def order(order_id: str):
    found = order_queries.detail(database(), actor(), order_id)
    if found is None:
        abort(404, f"no order {order_id}")
    return render_template("order.html", order=found, can_cancel=found["status"] in ("PENDING", "CONFIRMED"))


@blueprint.post("/orders/<order_id>/cancel")
def cancel_order(order_id: str):
    try:
        answer = order_queries.cancel(database(), context.order_service(database()), actor(), order_id,
                                      request.form.get("reason"), new_correlation_id())
        flash(f"Cancellation {answer.get('cancellation', 'done')}: the worker applies it in a moment.", "info")
    except (ValueError, ConfigurationError) as exc:
        flash(str(exc), "error")
    return _back("pages.order", order_id=order_id)


@blueprint.get("/stock")
def stock_page():
    return render_template("stock.html", items=stock.catalog(database(), actor(), request.args.get("q")),
                           q=request.args.get("q", ""))


@blueprint.post("/stock/<sku>/adjust")
def adjust_stock(sku: str):
    try:
        delta = int(request.form.get("delta", ""))
    except ValueError:
        flash("The adjustment must be a whole number, e.g. 5 or -3.", "error")
        return _back("pages.stock_page")
    try:
        changed = stock.adjust_stock(database(), actor(), sku, delta, request.form.get("reason"))
        flash(f"{sku}: {changed['available']:,} available now.", "info")
    except ValueError as exc:
        flash(str(exc), "error")
    return _back("pages.stock_page")


@blueprint.post("/stock/import")
def import_stock():
    upload = request.files.get("catalog")
    if upload is None or not upload.filename:
        flash("Choose a CSV file (sku,name,currency,unit_price,stock) to import.", "error")
        return _back("pages.stock_page")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "catalog.csv"
        upload.save(path)
        try:
            count = stock.import_stock_csv(database(), actor(), path, upload.filename, request.form.get("reason"))
            flash(f"Imported {count} catalog item(s).", "info")
        except ValueError as exc:
            flash(str(exc).replace(str(path), upload.filename), "error")
    return _back("pages.stock_page")


@blueprint.route("/clients", methods=["GET", "POST"])
def clients_page():
    created = None
    if request.method == "POST":
        try:
            created = clients.create(database(), actor(), request.form.get("name", ""), registry=api_key_registry())
        except AdminError as exc:
            flash(str(exc), "error")
    return render_template("clients.html", clients=clients.list_clients(database(), actor()), created=created)


@blueprint.post("/clients/<client_id>/<action>")
def client_action(client_id: str, action: str):
    created = None
    try:
        if action == "revoke":
            name = clients.revoke(database(), actor(), client_id, request.form.get("reason"), registry=api_key_registry())
            flash(f"Client {name} revoked: its key stops working within a minute.", "info")
        elif action == "rotate":
            created = clients.rotate(database(), actor(), client_id, request.form.get("reason"), registry=api_key_registry())
        else:
            abort(404)
    except AdminError as exc:
        flash(str(exc), "error")
    if created is None:
        return _back("pages.clients_page")
    return render_template("clients.html", clients=clients.list_clients(database(), actor()), created=created,
                           rotated=True)


def _selected() -> set[str] | None:
    if request.form.get("scope") == "all":
        return None
    return set(request.form.getlist("message_id"))


@blueprint.get("/dead-letters")
def dead_letters_page():
    try:
        messages = dead_letters.list_dead_letters(context.dead_letter_queue(), database(), actor())
    except (ConfigurationError, QueueError) as exc:
        return render_template("dead_letters.html", messages=[], queue_error=str(exc))
    return render_template("dead_letters.html", messages=messages, queue_error=None)


@blueprint.post("/dead-letters/redrive")
def redrive():
    ids = _selected()
    if ids is not None and not ids:
        flash("Select the messages to redrive, or choose all.", "error")
        return _back("pages.dead_letters_page")
    try:
        moved = dead_letters.redrive(context.dead_letter_queue(), database(), actor(), ids, request.form.get("reason"))
        flash(f"Redrove {len(moved)} message(s) to the orders queue.", "info")
    except (ConfigurationError, QueueError) as exc:
        flash(str(exc), "error")
    return _back("pages.dead_letters_page")


@blueprint.post("/dead-letters/delete")
def delete_dead_letters():
    ids = _selected()
    if ids is not None and not ids:
        flash("Select the messages to delete, or choose all.", "error")
        return _back("pages.dead_letters_page")
    if request.form.get("confirmed") != "yes":
        return render_template("confirm_delete.html", ids=sorted(ids) if ids is not None else None)
    try:
        deleted = dead_letters.delete(context.dead_letter_queue(), database(), actor(), ids, request.form.get("reason"))
        flash(f"Deleted {len(deleted)} message(s).", "info")
    except (ValueError, ConfigurationError, QueueError) as exc:
        flash(str(exc), "error")
    return _back("pages.dead_letters_page")


@blueprint.get("/audit")
def audit_page():
    before = request.args.get("before", type=int)
    entries = audit.entries(database(), actor(), target=request.args.get("target"), by=request.args.get("actor"),
                            before_id=before)
    return render_template("audit.html", entries=entries, args=request.args)


@blueprint.get("/reconciliations")
def runs():
    return render_template("runs.html", runs=reconciliation_views.list_runs(database(), actor()))


@blueprint.post("/reconciliations")
def start_run():
    me = actor()
    me.require(Role.OPERATOR, "start reconciliation runs")  # before reading an upload
    upload = request.files.get("report")
    uri = (request.form.get("source") or "").strip()
    runs = current_app.extensions["conveyor"].runs
    try:
        cutoff = datetime.fromisoformat(request.form["cutoff"]) if request.form.get("cutoff") else None
        timezone = check_timezone(request.form.get("timezone") or None)
        if upload is not None and upload.filename:
            report = spool(upload.stream, upload_source(upload.filename))
        elif uri:
            report = open_offered_source(uri, runs.report_dir)  # the same sources the JSON API reads
        else:
            raise ReconciliationError("upload a report file, or give its S3 URI (s3://bucket/key)")
        run = reconciliation_views.start_run(runs, database(), me, report, request.form.get("format") or None,
                                             cutoff, timezone)
    except ValueError as exc:  # SourceRefused, ReconciliationError, SettlementReportError and a bad cutoff
        flash(str(exc) if not str(exc).startswith("Invalid isoformat") else
              "The cutoff must be an ISO 8601 time such as 2026-10-31T23:59:59+00:00.", "error")
        return _back("pages.runs")
    except (FileNotFoundError, SourceUnreadable):
        flash("The report could not be read: check the S3 URI or the path, and that the service may read it.",
              "error")
        return _back("pages.runs")
    return _back("pages.run", run_id=run["id"])


def _run_or_404(run_id: str) -> dict:
    actor().require(Role.VIEWER, "read reconciliation runs")
    run = current_app.extensions["conveyor"].runs.service.get(run_id)
    if run is None:
        abort(404, f"no reconciliation run {run_id}")
    return run


@blueprint.get("/reconciliations/<run_id>")
def run(run_id: str):
    found = _run_or_404(run_id)
    category, q = request.args.get("category") or None, request.args.get("q") or None
    unresolved = request.args.get("unresolved") == "1"
    after = request.args.get("after", 0, type=int)
    try:
        rows = reconciliation_views.discrepancies(database(), actor(), run_id, category, q, unresolved, after)
    except reconciliation_views.RunViewError as exc:
        flash(str(exc), "error")
        rows = []
    args = {k: v for k, v in request.args.items() if k != "after" and v}
    return render_template("run.html", run=found, rows=rows, categories=CATEGORIES, args=args,
                           running=found["status"] in RUNNING,
                           next_after=rows[-1]["id"] if len(rows) == reconciliation_views.PAGE_SIZE else None)


@blueprint.get("/reconciliations/<run_id>/progress")
def run_progress(run_id: str):
    found = _run_or_404(run_id)
    response = Response(render_template("run_progress.html", run=found, running=found["status"] in RUNNING))
    if found["status"] not in RUNNING:
        response.headers["HX-Refresh"] = "true"  # done: htmx reloads the page with the summary
    return response


@blueprint.get("/reconciliations/<run_id>/discrepancies.csv")
def discrepancies_csv(run_id: str):
    _run_or_404(run_id)
    rows = reconciliation_views.export_discrepancies(
        database(), actor(), run_id, request.args.get("category") or None, request.args.get("q") or None,
        request.args.get("unresolved") == "1")
    return _csv(f"discrepancies-{run_id}.csv", reconciliation_views.DISCREPANCY_COLUMNS, rows)


@blueprint.post("/reconciliations/<run_id>/discrepancies/<int:discrepancy_id>/resolve")
def resolve(run_id: str, discrepancy_id: int):
    try:
        reconciliation_views.resolve(database(), actor(), run_id, discrepancy_id, request.form.get("note"))
        flash(f"Discrepancy {discrepancy_id} resolved.", "info")
    except ValueError as exc:
        flash(str(exc), "error")
    return redirect(url_for("pages.run", run_id=run_id) + f"#d{discrepancy_id}")


