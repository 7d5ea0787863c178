"""The console under gunicorn, configured only with DATABASE_SECRET_ARN and moto's Secrets Manager on 127.0.0.1."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import boto3
import pytest
import requests
from sqlalchemy.engine import make_url

from conveyor_tools.local.console_server import ConsoleServer
from conveyor_tools.local.sqs import FAKE_CREDENTIALS, LOOPBACK, _MotoServerProcess, free_port
from support import http_run

pytestmark = pytest.mark.e2e

# A partial ARN (no random suffix), as Secrets Manager accepts: it can be written before the secret exists.
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:conveyor/console-database"
TOKEN = "cvt_secrets_manager_test"


@pytest.fixture
def secrets_manager() -> Iterator[str]:
    """moto's server in a process of its own; its endpoint URL."""
    server = _MotoServerProcess(free_port())
    try:
        yield f"http://{LOOPBACK}:{server.port}"
    finally:
        server.stop()


def start_console_with_only_a_secret(secrets_endpoint: str, spool_dir: str) -> ConsoleServer:
    """gunicorn with the Fargate task's variables: no DATABASE_URL, no region, fake credentials (a task role's)."""
    inherited = {name: value for name, value in os.environ.items()
                 if not name.startswith(("AWS_", "DATABASE_", "DATA_API_"))}
    environment = {
        **inherited,
        "DATABASE_SECRET_ARN": SECRET_ARN,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": secrets_endpoint,
        "AWS_ACCESS_KEY_ID": FAKE_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": FAKE_CREDENTIALS["aws_secret_access_key"],
        "AWS_EC2_METADATA_DISABLED": "true",
        "CONSOLE_ADMIN_TOKEN": TOKEN,
        "CONVEYOR_SPOOL_DIR": spool_dir,
        "WEB_CONCURRENCY": "2",
    }
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:conveyor.console.gunicorn_config",
         "--bind", f"{LOOPBACK}:{port}", "conveyor.console.wsgi:app"],
        env=environment, stdin=subprocess.DEVNULL,
    )
    server = ConsoleServer(process=process, url=f"http://{LOOPBACK}:{port}", admin_token=TOKEN)
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if requests.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            time.sleep(0.1)
    server.stop(timeout=5)
    raise AssertionError(f"the console did not start (exit code {process.returncode}); its log is above")


def store_database_secret(secrets_endpoint: str, database_url: str) -> None:
    """The test database's credentials, as RDS writes them."""
    url = make_url(database_url)
    secret = {"engine": "postgres", "username": url.username, "password": url.password or "",
              "host": url.query.get("host") or url.host, "port": url.port or 5432, "dbname": url.database}
    client = boto3.client("secretsmanager", endpoint_url=secrets_endpoint, region_name="us-east-1", **FAKE_CREDENTIALS)
    client.create_secret(Name="conveyor/console-database", SecretString=json.dumps(secret))


def test_a_console_with_only_a_secret_arn_waits_for_the_secret_then_reconciles(
        secrets_manager, database, database_url, tmp_path):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    report = f"reference,currency,amount,created_at\r\nS-{uuid.uuid4().hex[:8]},KWD,1.234,2026-10-02T00:00:00Z\r\n".encode()
    server = start_console_with_only_a_secret(secrets_manager, str(tmp_path))
    try:
        # Before the secret exists: alive, not ready, and both answers say what to fix.
        assert requests.get(f"{server.url}/healthz", timeout=5).json() == {"status": "ok"}
        not_ready = requests.get(f"{server.url}/readyz", timeout=30)
        assert not_ready.status_code == 503
        assert f"Secrets Manager has no secret {SECRET_ARN}: correct DATABASE_SECRET_ARN" in not_ready.json()["error"]["message"]
        refused = requests.post(f"{server.url}/api/reconciliations", headers=auth,
                                files={"report": ("generic.csv", report)}, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_configured"
        assert "correct DATABASE_SECRET_ARN" in refused.json()["error"]["message"]

        store_database_secret(secrets_manager, database_url)

        # No restart needed: each worker reads the secret on its next request.
        assert requests.get(f"{server.url}/readyz", timeout=30).json() == {"status": "ready"}
        started = requests.post(f"{server.url}/api/reconciliations", headers=auth,
                                files={"report": ("generic.csv", report)}, timeout=30)
        assert started.status_code == 202, started.text
        run = http_run(server.url, started.headers["Location"], auth)
        assert run["status"] == "COMPLETED", run
        assert run["counts"]["unknown_payment"] == 1
        assert run["totals"] == {"KWD": {"gross": 1234, "fees": 0, "net": 1234, "payouts": 0}}
    finally:
        server.stop()
    assert server.process.returncode == 0
