"""Runs executed in background threads of the service process, never on a request thread.

Within a process a run is queued once however often it is submitted; across processes
the engine's advisory locks make sure it is executed once. On shutdown, `drain` waits for
running work, then asks what is left to stop: an unfinished run rolls back whole and
stays restartable (submit the same report again).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

from conveyor.reconciliation.service import ReconciliationService
from conveyor.reconciliation.sources import SettlementFile


class ShuttingDown(RuntimeError):
    """This process is draining; another instance (or this one, restarted) will take the request."""


class BackgroundRuns:
    def __init__(self, service: ReconciliationService, threads: int = 1):
        # One thread is enough: the engine serialises runs in the database anyway.
        self.service = service
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reconciliation")
        self._lock = threading.Lock()
        self._running: dict[str, tuple[Future, threading.Event]] = {}
        self._draining = False

    def start(self, report: SettlementFile, format: str | None = None,
              cutoff: datetime | None = None) -> dict[str, Any]:
        """Submit a report and, unless its run is already complete, execute it in the background."""
        if self._draining:
            report.discard()
            raise ShuttingDown("this service instance is shutting down; send the request again")
        try:
            run = self.service.submit(report, format, cutoff)
        except BaseException:
            report.discard()
            raise
        with self._lock:
            if not run["needs_execution"] or run["id"] in self._running:
                report.discard()
                return run
            stop = threading.Event()
            future = self._executor.submit(self._execute, run["id"], report, stop)
            self._running[run["id"]] = (future, stop)
        return run

    def _execute(self, run_id: str, report: SettlementFile, stop: threading.Event) -> None:
        try:
            self.service.execute(run_id, report, stop=stop)
        except Exception:
            self.service.logger.exception("reconciliation job failed", extra={"run_id": run_id})
        finally:
            report.discard()
            with self._lock:
                self._running.pop(run_id, None)

    def begin_drain(self) -> None:
        """Refuse new work from now on."""
        self._draining = True

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` s for running jobs, then stop the rest; True if all finished."""
        self.begin_drain()
        deadline = time.monotonic() + timeout
        with self._lock:
            jobs = list(self._running.values())
        for future, _ in jobs:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - timed out, or failed and already logged
                pass
        unfinished = [stop for future, stop in jobs if not future.done()]
        for stop in unfinished:
            stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        return not unfinished
