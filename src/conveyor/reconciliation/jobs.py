"""Runs executed in background threads of the service process, never on a request thread.

Each run this process queues is claimed first (`service.RunClaims`): another process,
or a restart request, sees it is taken, and a run is queued once across all processes;
the engine's advisory locks make sure it is executed once. A spooled report is kept as
`run-ID.csv` until its run is COMPLETED or FAILED.

When the process dies, its claims and locks die with it, and its unfinished runs are
orphaned. `recover` takes each over: it queues it again when its report can be read
again byte for byte (the spooled copy, the local file, the S3 object), and marks it
FAILED, saying what to do, when it cannot. It runs in the background when the service
starts, and again every CONVEYOR_RECOVERY_INTERVAL_SECONDS (default 60): a killed
process's session can outlive it while its statement runs, and a sibling task can die
at any time. A report unreadable here may be readable by the process that spooled it
(another task's disk), so such a run is failed only once it has been left alone for
ORPHAN_FAILURE_GRACE_SECONDS. `restart` takes one run over on request, FAILED runs included.

On shutdown, `drain` waits for running work, then stops the rest: a run stopped
mid-way rolls back whole, and it and the runs that never started stay QUEUED with
their spooled reports, for the next start to recover. Nothing is lost or left stuck.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from conveyor.observability import describe_error, log_failure
from conveyor.reconciliation.service import (
    NOT_STARTED_NOTE, DirectConnectionRequired, ReconciliationService, RunClaims, RunConflict,
)
from conveyor.reconciliation.sources import ReportUnavailable, SettlementFile, reopen, sweep_spool

RECOVERY_INTERVAL_VARIABLE = "CONVEYOR_RECOVERY_INTERVAL_SECONDS"
DEFAULT_RECOVERY_INTERVAL_SECONDS = 60.0
# Waits between attempts while the database does not answer (at startup, say).
RECOVERY_RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
# How long an orphaned run whose report cannot be read here is left for a process that may read it.
ORPHAN_FAILURE_GRACE_SECONDS = 300
TERMINAL = ("COMPLETED", "FAILED")


class ShuttingDown(RuntimeError):
    """This process is draining; another instance (or this one, restarted) will take the request."""


@dataclass
class _Job:
    run_id: str
    run_key: str | None  # its claim; None without claims (Data API)
    report: SettlementFile
    stop: threading.Event = field(default_factory=threading.Event)
    future: Future | None = None


class BackgroundRuns:
    def __init__(self, service: ReconciliationService, threads: int = 1, recovery_interval: float | None = None,
                 orphan_failure_grace: int = ORPHAN_FAILURE_GRACE_SECONDS, report_dir: Path | None = None):
        """`report_dir`: the only folder whose local reports a run is recovered from (None: none)."""
        # One thread is enough: the engine serialises runs in the database anyway.
        self.service = service
        self.report_dir = report_dir
        self.recovery_interval = recovery_interval or float(
            os.environ.get(RECOVERY_INTERVAL_VARIABLE) or DEFAULT_RECOVERY_INTERVAL_SECONDS)
        self.orphan_failure_grace = orphan_failure_grace
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reconciliation")
        self._lock = threading.Lock()
        self._running: dict[str, _Job] = {}
        self._draining = False
        self._stopping = threading.Event()
        # Without a direct connection runs are not executed here, so there is nothing to claim or recover.
        self._claims = RunClaims(service.connect) if service.connect is not None else None
        self.recovered = threading.Event()  # set once a recovery pass has completed
        if self._claims is None:
            self.recovered.set()

    def start(self, report: SettlementFile, format: str | None = None, cutoff: datetime | None = None,
              column_map: dict[str, str] | None = None, timezone: str | None = None) -> dict[str, Any]:
        """Submit a report and, unless its run is complete or held elsewhere, execute it in the background."""
        if self._draining:
            report.discard()
            raise ShuttingDown("this service instance is shutting down; send the request again")
        if self._claims is None:
            return self._start_unclaimed(report, format, cutoff, column_map, timezone)
        try:
            run, run_key = self.service.submit_claimed(report, format, cutoff, self._claims, column_map, timezone)
        except BaseException:
            report.discard()
            raise
        if run_key is None:
            report.discard()  # complete, or held by a live process that executes it from its own copy
            return run
        self._queue(_Job(run["id"], run_key, report.kept_for(run["id"])))
        return run

    def _start_unclaimed(self, report: SettlementFile, format: str | None, cutoff: datetime | None,
                         column_map: dict[str, str] | None, timezone: str | None) -> dict[str, Any]:
        # Through the Data API no session outlives a request, so there are no claims: a run is
        # queued once per process, and the engine's run lock still executes it once.
        try:
            run = self.service.submit(report, format, cutoff, column_map, timezone)
        except BaseException:
            report.discard()
            raise
        with self._lock:
            queued = run["id"] in self._running
        if not run["needs_execution"] or queued:
            report.discard()
            return run
        self._queue(_Job(run["id"], None, report.kept_for(run["id"])))
        return run

    def restart(self, run_id: str) -> dict[str, Any] | None:
        """Execute again an unfinished run that nobody executes, or a FAILED one; None if there is no such run.

        Raises RunConflict when the run is COMPLETED, held by a live process, or its report
        cannot be read again here (the run is left as it is: the recovery fails it in time).
        """
        if self._claims is None:
            raise DirectConnectionRequired()
        return self._take_over(run_id, allow_failed=True, fail_unreadable=False)

    def recover(self) -> dict[str, list[str]]:
        """Take over every orphaned run once, then sweep the spool folder.

        Returns the runs requeued, failed (report unreadable, and orphaned for longer than
        the grace), and unreadable_here (report unreadable here, still within the grace).
        """
        outcome: dict[str, list[str]] = {"requeued": [], "failed": [], "unreadable_here": []}
        if self._claims is None:
            return outcome
        for run in self.service.orphaned_runs():
            if self._draining:
                break
            try:
                if self._take_over(run["id"], allow_failed=False, fail_unreadable=True) is not None:
                    outcome["requeued"].append(run["id"])
            except RunConflict as exc:
                if exc.code == "report_unavailable":
                    failed = self.service.get(run["id"])["status"] == "FAILED"
                    outcome["failed" if failed else "unreadable_here"].append(run["id"])
                # otherwise another process took it over first, or it finished meanwhile
            except ShuttingDown:
                break
        removed = sweep_spool(self.service.statuses)
        if any(outcome.values()) or removed:
            self.service.logger.info("recovered orphaned reconciliation runs", extra={
                **outcome, "spool_files_removed": [path.name for path in removed]})
        return outcome

    def recover_in_background(self) -> threading.Thread | None:
        """Recover orphaned runs now and every `recovery_interval` s, in a thread of its own, until drained."""
        if self._claims is None:
            return None
        thread = threading.Thread(target=self._keep_recovering, name="reconciliation-recovery", daemon=True)
        thread.start()
        return thread

    def _keep_recovering(self) -> None:
        retry_delays = iter(RECOVERY_RETRY_DELAYS)
        while not self._draining:
            try:
                self.recover()
                self.recovered.set()
                retry_delays, wait = iter(RECOVERY_RETRY_DELAYS), self.recovery_interval
            except Exception as exc:  # noqa: BLE001 - the database may be starting or failing over: try again
                wait = next(retry_delays, self.recovery_interval)
                self.service.logger.warning("recovery of orphaned reconciliation runs failed; retrying",
                                            extra={"error": describe_error(exc), "retry_in_s": wait})
            if self._stopping.wait(wait):
                return

    def _take_over(self, run_id: str, allow_failed: bool, fail_unreadable: bool) -> dict[str, Any] | None:
        if self._draining:
            raise ShuttingDown("this service instance is shutting down; send the request again")
        run = self.service.holders(run_id)
        if run is None:
            return None
        run_id = run["id"]  # as PostgreSQL writes it: the engine's lock key is this text
        _refuse_unless_restartable(run, allow_failed)
        if not self._claims.take(run["run_key"]):
            raise RunConflict("run_in_progress", f"run {run_id} is queued or executing in a live service process;"
                                                 " follow its status until it is COMPLETED or FAILED")
        try:
            run = self.service.holders(run_id)  # again: before the claim, another process may have finished it
            _refuse_unless_restartable(run, allow_failed)
            if run["executing"]:  # by a process that does not claim runs, e.g. `conveyor reconcile`
                raise RunConflict("run_in_progress", f"run {run_id} is executing; follow its status until it is"
                                                     " COMPLETED or FAILED")
            try:
                report = reopen(run_id, run["source"], run["content_sha256"], self.report_dir)
            except ReportUnavailable as exc:
                if fail_unreadable and run["status"] != "FAILED":
                    self.service.fail_orphaned(
                        run_id, f"the service executing this run stopped before it finished (nothing of it was"
                                f" applied), and its report cannot be read again: {exc}",
                        orphaned_for=self.orphan_failure_grace)
                raise RunConflict("report_unavailable", f"run {run_id} cannot be executed again here: {exc}") from None
            if not self.service.requeue_taken_over(run_id, allow_failed):
                raise RunConflict("run_in_progress", f"run {run_id} started elsewhere or finished meanwhile;"
                                                     " follow its status")
            self._queue(_Job(run_id, run["run_key"], report))
        except BaseException:
            self._claims.release(run["run_key"])  # a report kept as run-ID.csv stays for the next attempt
            raise
        self.service.logger.info("reconciliation taken over", extra={"run_id": run_id, "source": run["source"]})
        return self.service.get(run_id)

    def _queue(self, job: _Job) -> None:
        with self._lock:
            if self._draining:
                self._release(job)
                raise ShuttingDown("this service instance is shutting down; the run is executed when it starts"
                                   " again, or send the request again")
            self._running[job.run_id] = job
            job.future = self._executor.submit(self._execute, job)

    def _execute(self, job: _Job) -> None:
        status = None
        try:
            status = self.service.execute(job.run_id, job.report, stop=job.stop)["status"]
        except Exception as exc:
            log_failure(self.service.logger, "reconciliation job failed", exc, run_id=job.run_id)
        finally:
            self._finish(job, status)

    def _finish(self, job: _Job, status: str | None) -> None:
        if status is None:
            try:
                status = self.service.get(job.run_id)["status"]
            except Exception:  # noqa: BLE001 - unknown: keep the report for the recovery and its sweep
                pass
        if status in TERMINAL:
            job.report.discard()
        # Not finished (stopped by drain, or executing in another session): the copy stays for whoever finishes it.
        with self._lock:
            self._running.pop(job.run_id, None)
            last_of_drain = self._draining and not self._running
        self._release(job)
        if last_of_drain:
            self._close_claims()

    def begin_drain(self) -> None:
        """Refuse new work from now on."""
        with self._lock:
            self._draining = True
        self._stopping.set()

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` s for queued and running jobs, then stop the rest; True if all finished.

        Stopped runs stay QUEUED with their spooled reports, and this process lets go of
        them: the next start of the service (any instance) recovers them.
        """
        self.begin_drain()
        deadline = time.monotonic() + timeout
        with self._lock:
            jobs = list(self._running.values())
        for job in jobs:
            try:
                job.future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - timed out, or failed and already logged
                pass
        unfinished = [job for job in jobs if not job.future.done()]
        for job in unfinished:
            job.stop.set()  # a running one rolls back at its next step and is left for recovery by the service
        self._executor.shutdown(wait=False, cancel_futures=True)
        never_started = [job for job in unfinished if job.future.cancelled()]
        for job in never_started:
            try:
                self.service.leave_for_recovery(job.run_id, NOT_STARTED_NOTE)
            except Exception as exc:  # noqa: BLE001 - still QUEUED, and unclaimed once this process is gone
                log_failure(self.service.logger, "could not note a run left for recovery", exc, run_id=job.run_id)
            # Its spooled report stays, as run-ID.csv, for the recovery.
            self._finish(job, status=None)
        if never_started:
            self.service.logger.warning("reconciliation runs left for recovery at the next start",
                                        extra={"run_ids": [job.run_id for job in never_started]})
        with self._lock:
            idle = not self._running
        if idle:  # else the last stopped job closes them, once its run is left for recovery
            self._close_claims()
        return not unfinished

    def _release(self, job: _Job) -> None:
        if self._claims is not None:
            self._claims.release(job.run_key)

    def _close_claims(self) -> None:
        if self._claims is not None:
            self._claims.close()


def _refuse_unless_restartable(run: dict[str, Any], allow_failed: bool) -> None:
    if run["status"] == "COMPLETED":
        raise RunConflict("already_completed", f"run {run['id']} is already COMPLETED. To reconcile a changed report,"
                                               " submit it: that is a new run")
    if run["status"] == "FAILED" and not allow_failed:
        raise RunConflict("already_finished", f"run {run['id']} has FAILED meanwhile")
