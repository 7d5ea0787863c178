"""The console under real gunicorn (its config file, gthread workers), on a free port."""
from __future__ import annotations

import socket
import time
import uuid

import pytest
import requests

from conveyor.console.server import start_console

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def recon_database(database):
    database.execute("TRUNCATE order_payment_status, reconciliation_discrepancies, reconciliation_runs")
    return database


def test_gunicorn_serves_health_and_a_reconciliation_then_stops_on_sigterm(recon_database, database_url, tmp_path):
    report = (f"reference,currency,amount\r\nG-{uuid.uuid4().hex[:8]},KWD,1.234\r\n").encode()
    server = start_console(database_url, port=free_port(), environment={"CONVEYOR_SPOOL_DIR": str(tmp_path)})
    try:
        assert requests.get(f"{server.url}/healthz", timeout=5).json() == {"status": "ok"}
        assert requests.get(f"{server.url}/readyz", timeout=5).json() == {"status": "ready"}
        auth = {"Authorization": f"Bearer {server.admin_token}"}
        started = requests.post(f"{server.url}/api/reconciliations", headers=auth,
                                files={"report": ("generic.csv", report)}, timeout=10)
        assert started.status_code == 202, started.text
        deadline = time.monotonic() + 20
        while (run := requests.get(server.url + started.headers["Location"], headers=auth, timeout=5).json())["status"] not in (
                "COMPLETED", "FAILED") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run["status"] == "COMPLETED", run
        assert run["counts"]["unknown_payment"] == 1
        assert run["totals"] == {"KWD": {"gross": 1234, "fees": 0, "net": 1234, "payouts": 0}}
    finally:
        server.stop()
    assert server.process.returncode == 0
