"""The console under real gunicorn (its config file, gthread workers), on a free port."""
from __future__ import annotations

import os
import signal
import socket
import uuid
from pathlib import Path

import psycopg
import pytest
import requests

from conveyor_tools.local.console_server import start_console
from conveyor_tools.local.database import libpq_url
from conveyor.reconciliation import engine
from conveyor.reconciliation.service import ReconciliationService, direct_connection
from support import eventually, http_run

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_gunicorn_serves_health_and_a_reconciliation_then_stops_on_sigterm(database, database_url, tmp_path):
    report = (f"reference,currency,amount,created_at\r\nG-{uuid.uuid4().hex[:8]},KWD,1.234,2026-10-02T00:00:00Z\r\n").encode()
    server = start_console(database_url, port=free_port(), environment={"CONVEYOR_SPOOL_DIR": str(tmp_path)})
    try:
        assert requests.get(f"{server.url}/healthz", timeout=5).json() == {"status": "ok"}
        assert requests.get(f"{server.url}/readyz", timeout=5).json() == {"status": "ready"}
        auth = {"Authorization": f"Bearer {server.admin_token}"}
        started = requests.post(f"{server.url}/api/reconciliations", headers=auth,
                                files={"report": ("generic.csv", report)}, timeout=10)
        assert started.status_code == 202, started.text
        run = http_run(server.url, started.headers["Location"], auth)
        assert run["status"] == "COMPLETED", run
        assert run["counts"]["unknown_payment"] == 1
        assert run["totals"] == {"KWD": {"gross": 1234, "fees": 0, "net": 1234, "payouts": 0}}
    finally:
        server.stop()
    assert server.process.returncode == 0


def worker_pids(master: int) -> set[int]:
    """gunicorn's workers: the processes whose parent is its master."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == master:
            pids.add(int(stat.parent.name))
    return pids



@pytest.fixture
def runs_lock(database_url):
    """Another run holding the lock every run takes: runs wait behind it until it is unlocked."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as session:
        session.execute("SELECT pg_advisory_lock(%s, %s)", (engine.LOCK_CLASS, engine.ALL_RUNS_LOCK_KEY))
        yield session


def test_a_run_whose_worker_is_killed_is_executed_by_the_worker_gunicorn_starts_again(
        database, database_url, runs_lock, tmp_path):
    report = f"reference,currency,amount,created_at\r\nK-{uuid.uuid4().hex[:8]},KWD,1.234,2026-10-02T00:00:00Z\r\n".encode()
    # A killed worker's session can outlive it while its statement waits; the periodic pass catches the run then.
    server = start_console(database_url, port=free_port(), environment={
        "CONVEYOR_SPOOL_DIR": str(tmp_path), "CONVEYOR_RECOVERY_INTERVAL_SECONDS": "1"})
    try:
        auth = {"Authorization": f"Bearer {server.admin_token}"}
        started = requests.post(f"{server.url}/api/reconciliations", headers=auth,
                                files={"report": ("generic.csv", report)}, timeout=10)
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]
        service = ReconciliationService(database, lambda: direct_connection(database.engine))
        eventually(lambda: service.holders(run_id)["executing"], timeout=30.0,
                   what="the run waiting for its turn in a worker")

        killed = worker_pids(server.process.pid)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)  # as the OOM killer would
        eventually(lambda: worker_pids(server.process.pid) - killed, timeout=30.0, what="gunicorn starting new workers")
        runs_lock.execute("SELECT pg_advisory_unlock_all()")

        run = http_run(server.url, started.headers["Location"], auth)
        assert run["status"] == "COMPLETED", run
        assert run["counts"]["unknown_payment"] == 1 and run["orphaned"] is False
        eventually(lambda: not list(tmp_path.iterdir()), timeout=30.0, what="the spooled upload being removed")
    finally:
        server.stop()


def test_runs_stopped_by_sigterm_are_executed_at_the_next_start_and_no_upload_is_left_behind(
        database, database_url, runs_lock, tmp_path):
    reports = [f"reference,currency,amount,created_at\r\nT-{n}-{uuid.uuid4().hex[:8]},KWD,1.234,2026-10-02T00:00:00Z\r\n".encode() for n in range(2)]
    environment = {"CONVEYOR_SPOOL_DIR": str(tmp_path), "GUNICORN_GRACEFUL_TIMEOUT": "4"}
    server = start_console(database_url, port=free_port(), workers=1, environment=environment)
    service = ReconciliationService(database, lambda: direct_connection(database.engine))
    try:
        auth = {"Authorization": f"Bearer {server.admin_token}"}
        locations = []
        for number, report in enumerate(reports):
            started = requests.post(f"{server.url}/api/reconciliations", headers=auth,
                                    files={"report": (f"report-{number}.csv", report)}, timeout=10)
            assert started.status_code == 202, started.text
            locations.append(started.headers["Location"])
        run_ids = [location.rsplit("/", 1)[1] for location in locations]
        eventually(lambda: service.holders(run_ids[0])["executing"], timeout=30.0, what="the first run waiting for its turn")
    finally:
        server.stop()  # SIGTERM: the first run still waits, the second never started
    runs_lock.execute("SELECT pg_advisory_unlock_all()")
    eventually(lambda: all(service.get(run_id)["orphaned"] for run_id in run_ids), timeout=30.0, what="both runs let go")
    assert [service.get(run_id)["status"] for run_id in run_ids] == ["QUEUED", "QUEUED"]
    assert "stopped before it started" in service.get(run_ids[1])["error"]
    assert {path.name for path in tmp_path.iterdir()} == {f"run-{run_id}.csv" for run_id in run_ids}

    next_start = start_console(database_url, port=free_port(), environment={"CONVEYOR_SPOOL_DIR": str(tmp_path)})
    try:
        auth = {"Authorization": f"Bearer {next_start.admin_token}"}
        assert [http_run(next_start.url, location, auth)["status"] for location in locations] == ["COMPLETED"] * 2
        eventually(lambda: not list(tmp_path.iterdir()), timeout=30.0, what="the spooled uploads being removed")
    finally:
        next_start.stop()
    assert next_start.process.returncode == 0
