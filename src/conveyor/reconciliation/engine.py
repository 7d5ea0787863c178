"""The set-based reconciliation engine: COPY a report into a staging table, classify with joins, apply.

One run is one PostgreSQL transaction:

1. take the run's advisory lock (one executor per run) and then the global one
   (runs are serialised: each reads the payment statuses the previous one wrote);
2. load the report's records into a staging table, chunk by chunk;
3. match settlement rows to orders, classify, and total per currency, all in SQL;
4. insert the discrepancies, save the orders' payment status, drop the working tables,
   mark the run COMPLETED;
5. COMMIT.

The working tables (staging, matches, outcomes) are unlogged tables created in the run's
transaction, so its database user needs CREATE on the schema, as migrations do. A crash
or an error anywhere before 5 rolls everything back: the working tables were never
committed, and the transaction-level locks vanish with the session. The run can simply be
executed again.
Progress goes out through a callback, which the service writes on another connection.

The engine speaks to PostgreSQL through a `RunSession` (conveyor.reconciliation.sessions):
a direct psycopg connection, which loads with COPY, or an RDS Data API transaction, which
loads with batched INSERTs, for when no direct connection is available.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from conveyor.reconciliation.formats import SettlementReader, SettlementReportError, open_report
from conveyor.reconciliation.loading import ReportRows, RunStopped

# The categories every run reports, in this order, under exactly these names.
CATEGORIES = (
    "matched", "amount_mismatch", "currency_mismatch", "missing_in_report",
    "unknown_payment", "duplicate_settlement", "refund_due", "refund_without_order",
)
# Per currency, in minor units.
TOTAL_FIELDS = ("gross", "fees", "net", "payouts")
# pg_advisory_xact_lock(class, key): 'CNVR' as an int4 namespaces Conveyor's locks.
LOCK_CLASS = 0x434E5652
ALL_RUNS_LOCK_KEY = 0
RUN_LOCK_CLASS = LOCK_CLASS + 1


class RunInterrupted(RuntimeError):
    """The run was asked to stop (e.g. the service is shutting down); nothing was applied."""


class ValueRefused(ValueError):
    """PostgreSQL refused a value of the report while loading it; the message says which and where."""


class RunSession(Protocol):
    """One database session executing a run. Statements use %(name)s parameters of str, int or None."""

    def transaction(self) -> AbstractContextManager[None]:
        """The run's one transaction: committed when the block ends, rolled back if it raises."""

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None: ...

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]: ...

    def load_staging(self, rows: ReportRows, on_chunk: Callable[[int], None]) -> int:
        """Insert the report's rows into settlement_staging; returns how many.

        Calls `on_chunk` with the running total as it goes; raises ValueRefused when
        PostgreSQL refuses a value, and what reading raises (a malformed report, RunStopped)."""


@dataclass
class Progress:
    stage: str  # LOADING, CLASSIFYING or COMPLETED
    rows_loaded: int = 0
    rows_classified: int = 0


@dataclass(frozen=True)
class RunResult:
    counts: dict[str, int]
    totals: dict[str, dict[str, int]]
    cutoff: datetime | None
    rows_loaded: int
    rows_classified: int
    # Warnings, not refusals: each row type nobody mapped (read as `other`) with its row count,
    # and the rows whose gross, fee and net disagree ({"count", "lines", "message"}, or None).
    unmapped_types: dict[str, int] = field(default_factory=dict)
    inconsistent_rows: dict[str, Any] | None = None


CREATE_STAGING = """
CREATE UNLOGGED TABLE settlement_staging (
    line_no bigint NOT NULL,
    record_type text NOT NULL,
    reference text,
    alt_reference text,
    currency text NOT NULL,
    gross bigint NOT NULL,
    fee bigint NOT NULL,
    net_currency text NOT NULL,
    net bigint NOT NULL,
    created_at timestamptz,
    transaction_id text
)
"""

# Payments and their returns, each with the order it settles, by the primary reference
# (Stripe PaymentIntent, Adyen PSP reference), and what classifying needs of that order.
# Each row matches at most one order. First the order holding the reference: the unique index
# orders_payment_reference_held (migration 0004) admits one per (provider, reference), so this
# join cannot fan a row out to two orders.
MATCH_ORDERS = """
CREATE UNLOGGED TABLE settlement_matches AS
SELECT s.line_no, s.record_type, COALESCE(s.reference, s.alt_reference) AS reference, s.alt_reference,
       s.currency, s.gross, o.id AS order_id, o.status AS order_status, o.payment_reference AS order_reference,
       o.currency AS order_currency, COALESCE(o.payment_amount, o.total_amount) AS expected_amount
FROM settlement_staging s
LEFT JOIN orders o ON o.payment_provider = %(provider)s AND o.payment_reference = s.reference
    AND o.status IN ('PENDING', 'CONFIRMED') AND o.payment_reference IS NOT NULL AND NOT o.legacy_duplicate_payment
WHERE s.record_type IN ('payment', 'refund', 'chargeback', 'chargeback_reversal')
"""

# Rows without a holder, usually few, look the order up one row at a time (a second join would
# hash every order once more): by the primary reference, then by the fallback (charge id, merchant
# reference). Among several orders with that reference, one is chosen deterministically: the
# holder, then an order holding it before migration 0004, then the latest turned-down order (a
# client retrying a rejected payment leaves several; the money belongs with the last attempt).
MATCH_ORDERS_WITHOUT_HOLDER = """
UPDATE settlement_matches m
SET (order_id, order_status, order_reference, order_currency, expected_amount) = (
    SELECT o.id, o.status, o.payment_reference, o.currency, COALESCE(o.payment_amount, o.total_amount)
    FROM orders o
    WHERE o.payment_provider = %(provider)s AND o.payment_reference IN (m.reference, m.alt_reference)
    ORDER BY o.payment_reference = m.reference DESC,
             o.status IN ('PENDING', 'CONFIRMED') AND NOT o.legacy_duplicate_payment DESC,
             o.status IN ('PENDING', 'CONFIRMED') DESC,
             o.created_at DESC, o.id DESC
    LIMIT 1)
WHERE m.order_id IS NULL
"""

# One outcome per payment. The category rules are documented in conveyor.reconciliation.
# Settled orders are judged from their matches alone; only those the report does not
# settle are looked for among the orders.
CLASSIFY = """
CREATE UNLOGGED TABLE reconciliation_outcomes AS
WITH settled AS (
    SELECT order_id, order_status, order_reference, order_currency, expected_amount,
           count(*) FILTER (WHERE record_type = 'payment') AS payments,
           min(currency) FILTER (WHERE record_type = 'payment') AS currency,
           max(currency) FILTER (WHERE record_type = 'payment') AS other_currency,
           sum(gross) FILTER (WHERE record_type = 'payment') AS paid,
           sum(gross) AS kept,
           count(*) AS settlement_rows
    FROM settlement_matches
    WHERE order_id IS NOT NULL
    -- the order's columns depend on order_id: grouping by them too carries them along
    GROUP BY order_id, order_status, order_reference, order_currency, expected_amount
)
SELECT CASE
           WHEN order_status IN ('REJECTED', 'CANCELLED') THEN
               CASE WHEN kept > 0 THEN 'refund_due' ELSE 'matched' END
           WHEN payments > 1 THEN 'duplicate_settlement'
           WHEN currency <> order_currency OR other_currency <> currency THEN 'currency_mismatch'
           WHEN paid <> expected_amount THEN 'amount_mismatch'
           ELSE 'matched'
       END AS category,
       order_id, order_status, order_reference AS payment_reference, order_currency AS expected_currency,
       expected_amount, currency AS settled_currency,
       CASE WHEN order_status IN ('REJECTED', 'CANCELLED') THEN kept ELSE paid END AS settled_amount,
       settlement_rows, NULL::bigint[] AS report_lines
FROM settled
WHERE payments > 0  -- only returns: the payment settled in another report
UNION ALL
SELECT 'missing_in_report', o.id, o.status, o.payment_reference, o.currency,
       COALESCE(o.payment_amount, o.total_amount), NULL, NULL, 0, NULL
FROM orders o
WHERE o.payment_provider = %(provider)s AND o.payment_reference IS NOT NULL
  AND o.status = 'CONFIRMED' AND o.created_at <= CAST(%(cutoff)s AS timestamptz)
  AND NOT EXISTS (SELECT FROM settlement_matches m WHERE m.order_id = o.id)
  -- an order settled by an earlier run is not missing from this one
  AND NOT EXISTS (SELECT FROM order_payment_status earlier
                  WHERE earlier.order_id = o.id AND earlier.payment_status <> 'missing_in_report')
UNION ALL
SELECT CASE WHEN record_type = 'payment' THEN 'unknown_payment' ELSE 'refund_without_order' END,
       NULL, NULL, reference, NULL, NULL, min(currency), sum(gross), count(*), array_agg(line_no ORDER BY line_no)
FROM settlement_matches
WHERE order_id IS NULL
GROUP BY reference, record_type = 'payment'
"""

# The run's working tables. Unlogged tables, not temporary ones, so that parallel workers can
# read them (measured: matching and classifying a million rows 1 s faster on two cores). They
# are created and dropped inside the run's transaction, which runs alone (ALL_RUNS_LOCK_KEY):
# a run that fails or dies leaves none behind.
DROP_WORKING_TABLES = "DROP TABLE settlement_staging, settlement_matches, reconciliation_outcomes"

COUNT_OUTCOMES = "SELECT category, count(*) FROM reconciliation_outcomes GROUP BY category"

SAVE_DISCREPANCIES = """
INSERT INTO reconciliation_discrepancies (
    run_id, category, order_id, order_status, payment_reference, expected_currency, expected_amount,
    settled_currency, settled_amount, settlement_rows, report_lines)
SELECT CAST(%(run_id)s AS uuid), o.category, o.order_id, o.order_status, o.payment_reference, o.expected_currency,
       o.expected_amount, o.settled_currency, o.settled_amount, o.settlement_rows,
       COALESCE(o.report_lines, lines.report_lines, '{}')
FROM reconciliation_outcomes o
LEFT JOIN (
    SELECT order_id, array_agg(line_no ORDER BY line_no) AS report_lines
    FROM settlement_matches
    WHERE order_id IN (SELECT order_id FROM reconciliation_outcomes WHERE category <> 'matched')
    GROUP BY order_id
) lines ON lines.order_id = o.order_id
WHERE o.category <> 'matched'
"""

# Only runs write payment statuses, and runs are serialised: a plain UPDATE of the statuses
# that changed and a plain INSERT of the new ones need no ON CONFLICT (its speculative
# insertion cost a third more on a million rows).
UPDATE_PAYMENT_STATUS = """
UPDATE order_payment_status current
SET payment_status = o.category, reconciliation_id = CAST(%(run_id)s AS uuid), reconciled_at = now()
FROM reconciliation_outcomes o
WHERE o.order_id = current.order_id AND current.payment_status <> o.category
"""

INSERT_PAYMENT_STATUS = """
INSERT INTO order_payment_status (order_id, payment_status, reconciliation_id)
SELECT o.order_id, o.category, CAST(%(run_id)s AS uuid)
FROM reconciliation_outcomes o
WHERE o.order_id IS NOT NULL
  AND NOT EXISTS (SELECT FROM order_payment_status earlier WHERE earlier.order_id = o.order_id)
ORDER BY o.order_id  -- index order: each primary key page is visited once, not once per row
"""

# Gross is counted in the currency customers paid in; fees and net in the currency
# settled to the merchant (they differ only when the provider converted). Payouts move
# money to the bank and are totalled on their own.
TOTALS = """
SELECT currency, net_currency,
       sum(gross) FILTER (WHERE record_type <> 'payout'),
       sum(fee) FILTER (WHERE record_type <> 'payout'),
       sum(net) FILTER (WHERE record_type <> 'payout'),
       sum(net) FILTER (WHERE record_type = 'payout')
FROM settlement_staging
GROUP BY currency, net_currency
"""

COMPLETE_RUN = """
UPDATE reconciliation_runs
SET status = 'COMPLETED', counts = CAST(%(counts)s AS jsonb), totals = CAST(%(totals)s AS jsonb),
    cutoff = CAST(%(cutoff)s AS timestamptz), rows_loaded = %(rows_loaded)s, rows_classified = %(rows_classified)s,
    unmapped_types = CAST(%(unmapped_types)s AS jsonb), inconsistent_rows = CAST(%(inconsistent_rows)s AS jsonb),
    error = NULL, finished_at = now(), updated_at = now()
WHERE id = CAST(%(run_id)s AS uuid)
"""

# The Data API sends integers as bigint; these locks take two integers.
TRY_RUN_LOCK = "SELECT pg_try_advisory_xact_lock(CAST(%(run_lock_class)s AS integer), hashtext(%(run_id)s))"
WAIT_FOR_OTHER_RUNS = "SELECT pg_advisory_xact_lock(CAST(%(lock_class)s AS integer), CAST(%(key)s AS integer))"
RUN_STATUS = "SELECT status FROM reconciliation_runs WHERE id = CAST(%(run_id)s AS uuid)"
# As ISO 8601 text: both kinds of session return it alike. NULL when no row has a timestamp.
LATEST_ROW_TIME = """
SELECT to_char(max(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
FROM settlement_staging
"""
NO_ROW_TIMES = (
    "no row of the report has a timestamp, so it does not say up to when it settles orders. Give a --cutoff"
    " (\"cutoff\" in the API): confirmed orders created after it are not expected in the report."
)


@dataclass(frozen=True)
class RunPlan:
    run_id: str
    format: str
    requested_cutoff: datetime | None = None
    column_map: dict[str, str] | None = None  # generic format: field -> header name
    timezone: str | None = None  # IANA name: where the report's local times are


def reconcile(
    session: RunSession,
    plan: RunPlan,
    report: Path,
    on_progress: Callable[[Progress], None] = lambda _: None,
    stop: threading.Event | None = None,
) -> RunResult | None:
    """Execute one run in one transaction; None if another session is already executing it."""
    stop = stop or threading.Event()
    with session.transaction():
        [(locked,)] = session.rows(TRY_RUN_LOCK, {"run_lock_class": RUN_LOCK_CLASS, "run_id": plan.run_id})
        if not locked:
            return None
        session.execute(WAIT_FOR_OTHER_RUNS, {"lock_class": LOCK_CLASS, "key": ALL_RUNS_LOCK_KEY})
        [(status,)] = session.rows(RUN_STATUS, {"run_id": plan.run_id})
        if status == "COMPLETED":  # finished by another session while we waited
            return None
        # Room for the joins' hash tables: a million rows would otherwise spill to disk in batches.
        session.execute("SET LOCAL work_mem = '256MB'")
        # Compiling each statement took longer than it saved (up to 175 ms a statement, measured).
        session.execute("SET LOCAL jit = off")
        # Matching and classifying read a million rows: have the planner use parallel workers.
        session.execute("SET LOCAL parallel_setup_cost = 0")
        session.execute("SET LOCAL parallel_tuple_cost = 0.01")
        session.execute(CREATE_STAGING)
        on_progress(Progress("LOADING"))
        with open_report(report) as text:
            reader = SettlementReader(text, plan.format, plan.column_map, timezone=plan.timezone)
            rows = ReportRows(report, reader, stop)
            try:
                rows_loaded = session.load_staging(rows, lambda loaded: on_progress(Progress("LOADING", loaded)))
            except ValueRefused as exc:
                raise SettlementReportError(
                    f"PostgreSQL refused a value in the report: {exc}. Fix that row and run the reconciliation again."
                ) from None
            except RunStopped:
                raise RunInterrupted("the run was stopped before it finished; nothing was applied") from None
        on_progress(Progress("CLASSIFYING", rows_loaded=rows_loaded))
        session.execute("ANALYZE settlement_staging")

        cutoff = plan.requested_cutoff
        if cutoff is None:
            [(latest,)] = session.rows(LATEST_ROW_TIME)
            if latest is None:  # never the time of the run: that would expect every order so far
                raise SettlementReportError(NO_ROW_TIMES)
            cutoff = datetime.fromisoformat(latest)
        provider = reader.provider
        session.execute(MATCH_ORDERS, {"provider": provider})
        session.execute(MATCH_ORDERS_WITHOUT_HOLDER, {"provider": provider})
        session.execute("ANALYZE settlement_matches")
        # Grouping a million matches by order: sorting took a third of the time of hashing, whose
        # per-group sum and min/max states the planner underestimates (1.9 s and 420 MB vs 0.7 s).
        session.execute("SET LOCAL enable_hashagg = off")
        session.execute(CLASSIFY, {"provider": provider, "cutoff": cutoff.isoformat()})
        session.execute("SET LOCAL enable_hashagg TO DEFAULT")
        counts = dict.fromkeys(CATEGORIES, 0)
        counts.update((category, int(count)) for category, count in session.rows(COUNT_OUTCOMES))
        on_progress(Progress("CLASSIFYING", rows_loaded=rows_loaded, rows_classified=rows_loaded))
        if stop.is_set():
            raise RunInterrupted("the run was stopped before it finished; nothing was applied")

        totals = _totals(session.rows(TOTALS))
        session.execute(SAVE_DISCREPANCIES, {"run_id": plan.run_id})
        session.execute(UPDATE_PAYMENT_STATUS, {"run_id": plan.run_id})
        session.execute(INSERT_PAYMENT_STATUS, {"run_id": plan.run_id})
        result = RunResult(counts=counts, totals=totals, cutoff=cutoff,
                           rows_loaded=rows_loaded, rows_classified=rows_loaded,
                           unmapped_types=reader.notes.unmapped_types_result(),
                           inconsistent_rows=reader.notes.inconsistent_rows_result())
        session.execute(DROP_WORKING_TABLES)
        session.execute(COMPLETE_RUN, {
            "run_id": plan.run_id, "counts": json.dumps(counts), "totals": json.dumps(totals),
            "cutoff": cutoff.isoformat(), "rows_loaded": rows_loaded, "rows_classified": rows_loaded,
            "unmapped_types": json.dumps(result.unmapped_types),
            "inconsistent_rows": json.dumps(result.inconsistent_rows) if result.inconsistent_rows else None,
        })
    on_progress(Progress("COMPLETED", rows_loaded=rows_loaded, rows_classified=rows_loaded))
    return result


def _totals(rows: list[tuple]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}

    def add(currency: str, field: str, amount: int | None) -> None:
        entry = totals.setdefault(currency, dict.fromkeys(TOTAL_FIELDS, 0))
        entry[field] += int(amount or 0)

    for currency, net_currency, gross, fees, net, payouts in rows:
        add(currency, "gross", gross)
        add(net_currency, "fees", fees)
        add(net_currency, "net", net)
        add(net_currency, "payouts", payouts)
    return dict(sorted(totals.items()))
