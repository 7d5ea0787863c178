"""Reconciliation runs and the dashboard, as the console shows and acts on them."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from conveyor.ports import Database
from conveyor.reconciliation.engine import CATEGORIES
from conveyor.services.access import Actor, Role
from conveyor.services.audit import audit_params, record, require_reason

PAGE_SIZE = 100
EXPORT_BATCH = 2000
DISCREPANCY_COLUMNS = ("id", "category", "order_id", "order_status", "payment_reference", "expected_currency",
                       "expected_amount", "settled_currency", "settled_amount", "settlement_rows", "report_lines",
                       "resolved_by", "resolution_note")

LIST_RUNS = """
SELECT json_build_object('id', id, 'source', source, 'format', format, 'status', status, 'cutoff', cutoff,
                         'rows_loaded', rows_loaded, 'counts', counts, 'created_at', created_at,
                         'finished_at', finished_at, 'error', error)::text
FROM reconciliation_runs
WHERE CAST(:before AS timestamptz) IS NULL OR created_at < CAST(:before AS timestamptz)
ORDER BY created_at DESC
LIMIT :limit
"""

DISCREPANCIES = """
SELECT json_build_object(
    'id', d.id, 'category', d.category, 'order_id', d.order_id, 'order_status', d.order_status,
    'payment_reference', d.payment_reference, 'expected_currency', d.expected_currency,
    'expected_amount', d.expected_amount, 'settled_currency', d.settled_currency,
    'settled_amount', d.settled_amount, 'settlement_rows', d.settlement_rows,
    'report_lines', array_to_string(d.report_lines[1:20], ' '),
    'resolved_by', r.resolved_by, 'resolution_note', r.note, 'resolved_at', r.resolved_at)::text
FROM reconciliation_discrepancies d
LEFT JOIN discrepancy_resolutions r ON r.run_id = d.run_id AND r.discrepancy_id = d.id
WHERE d.run_id = CAST(:run_id AS uuid)
  AND (CAST(:category AS text) IS NULL OR d.category = CAST(:category AS text))
  AND (CAST(:q AS text) IS NULL OR d.payment_reference ILIKE '%' || CAST(:q AS text) || '%'
       OR CAST(d.order_id AS text) = lower(CAST(:q AS text)))
  AND (CAST(:unresolved AS boolean) IS NOT TRUE OR r.run_id IS NULL)
  AND d.id > :after
ORDER BY d.id
LIMIT :limit
"""

RESOLVE = """
WITH resolved AS (
    INSERT INTO discrepancy_resolutions (run_id, discrepancy_id, note, resolved_by)
    SELECT run_id, id, :note, :audit_actor FROM reconciliation_discrepancies
    WHERE run_id = CAST(:run_id AS uuid) AND id = :id
    ON CONFLICT (run_id, discrepancy_id) DO UPDATE SET
        note = EXCLUDED.note, resolved_by = EXCLUDED.resolved_by, resolved_at = now()
    RETURNING discrepancy_id
), audited AS (
    INSERT INTO admin_audit (actor, action, target, before, after, reason)
    SELECT :audit_actor, :audit_action, :audit_target, NULL, json_build_object('resolved', true), :audit_reason
    FROM resolved
)
SELECT to_json(count(*))::text FROM resolved
"""

DASHBOARD = """
SELECT json_build_object(
    'today', COALESCE((SELECT json_object_agg(status, n) FROM (
        SELECT status, count(*) AS n FROM orders WHERE created_at >= date_trunc('day', now() AT TIME ZONE 'UTC')
            AT TIME ZONE 'UTC' GROUP BY status) AS s), '{}'),
    'throughput', COALESCE((SELECT json_agg(json_build_object('minute', minute, 'settled', n) ORDER BY minute) FROM (
        SELECT date_trunc('minute', occurred_at) AS minute, count(*) AS n FROM order_events
        WHERE occurred_at >= now() - interval '1 hour' AND from_status IS NULL
        GROUP BY 1) AS t), '[]'),
    'last_run', (SELECT json_build_object('id', id, 'status', status, 'source', source, 'counts', counts,
                                          'totals', totals, 'finished_at', finished_at, 'created_at', created_at)
                 FROM reconciliation_runs ORDER BY created_at DESC LIMIT 1)
)::text
"""


class RunViewError(ValueError):
    pass


def list_runs(database: Database, actor: Actor, before: datetime | None = None,
              limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
    actor.require(Role.VIEWER, "read reconciliation runs")
    return database.fetch_json_rows(LIST_RUNS, {"before": before.isoformat() if before else None, "limit": limit})


def start_run(runs: Any, database: Database, actor: Actor, report: Any, format: str | None,
              cutoff: datetime | None, timezone: str | None = None) -> dict[str, Any]:
    """Queue a run in the background runs (`jobs.BackgroundRuns`), audited."""
    actor.require(Role.OPERATOR, "start reconciliation runs")
    run: dict[str, Any] = runs.start(report, format, cutoff, None, timezone)
    record(database, actor, "reconciliation.start", f"run:{run['id']}", None,
           {"source": run["source"], "format": run["format"], "status": run["status"]}, None)
    return run


def check_category(category: str | None) -> str | None:
    if category and category not in CATEGORIES:
        raise RunViewError(f"category must be one of {', '.join(CATEGORIES)}")
    return category or None


def discrepancies(database: Database, actor: Actor, run_id: str, category: str | None = None, q: str | None = None,
                  unresolved: bool = False, after: int = 0, limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
    actor.require(Role.VIEWER, "read discrepancies")
    return database.fetch_json_rows(DISCREPANCIES, {
        "run_id": run_id, "category": check_category(category), "q": (q or "").strip()[:200] or None,
        "unresolved": unresolved, "after": after, "limit": limit})


def export_discrepancies(database: Database, actor: Actor, run_id: str, category: str | None = None,
                         q: str | None = None, unresolved: bool = False) -> Iterator[list[Any]]:
    after = 0
    while True:
        rows = discrepancies(database, actor, run_id, category, q, unresolved, after, EXPORT_BATCH)
        for row in rows:
            yield [row[column] for column in DISCREPANCY_COLUMNS]
        if len(rows) < EXPORT_BATCH:
            return
        after = rows[-1]["id"]


def resolve(database: Database, actor: Actor, run_id: str, discrepancy_id: int, note: str | None) -> None:
    actor.require(Role.OPERATOR, "resolve discrepancies")
    note = require_reason(note, "resolve a discrepancy")
    done = database.fetch_json(RESOLVE, {
        "run_id": run_id, "id": discrepancy_id, "note": note,
        **audit_params(actor, "discrepancy.resolve", f"run:{run_id}/discrepancy:{discrepancy_id}", None, None, note)})
    if not done:
        raise RunViewError(f"run {run_id} has no discrepancy {discrepancy_id}")


def dashboard(database: Database, actor: Actor) -> dict[str, Any]:
    actor.require(Role.VIEWER, "read the dashboard")
    summary: dict[str, Any] = database.fetch_json(DASHBOARD)
    return summary
