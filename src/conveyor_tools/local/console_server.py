"""The console under gunicorn as a child process: what `conveyor dev` runs on http://127.0.0.1:8080."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass

import requests

LOOPBACK = "127.0.0.1"


class ConsoleStartError(RuntimeError):
    pass


@dataclass
class ConsoleServer:
    process: subprocess.Popen
    url: str
    admin_token: str

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, as ECS sends it: gunicorn drains, then exits; killed if it takes longer than `timeout`."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_console(database_url: str, port: int = 8080, admin_token: str | None = None,
                  workers: int = 2, environment: dict[str, str] | None = None,
                  startup_timeout: float = 30.0) -> ConsoleServer:
    """Start gunicorn with the console's config on 127.0.0.1:`port` and wait until /healthz answers.

    `environment` adds variables (e.g. AWS_ENDPOINT_URL_S3 for moto's S3). The admin token
    is generated when not given; the returned server holds it.
    """
    token = admin_token or "cvt_" + secrets.token_urlsafe(24)
    env = {**os.environ, **(environment or {}), "DATABASE_URL": database_url, "CONSOLE_ADMIN_TOKEN": token,
           "WEB_CONCURRENCY": str(workers)}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:conveyor.console.gunicorn_config",
         "--bind", f"{LOOPBACK}:{port}", "conveyor.console.wsgi:app"],
        env=env, stdin=subprocess.DEVNULL,
    )
    server = ConsoleServer(process=process, url=f"http://{LOOPBACK}:{port}", admin_token=token)
    deadline = time.monotonic() + startup_timeout
    while True:
        try:
            if requests.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop(timeout=5)
            raise ConsoleStartError(
                f"the console did not start on {server.url} (gunicorn exit code {process.returncode});"
                f" is port {port} free? Its log is above.")
        time.sleep(0.1)
