"""gunicorn settings for the console: `gunicorn -c python:conveyor.console.gunicorn_config conveyor.console.wsgi:app`.

Every value can be overridden on the command line (e.g. --bind) or with the variables below.
"""
from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

from gunicorn.glogging import Logger


def available_cpus() -> int:
    """CPUs this container may use: its cgroup quota if any (ECS task CPU), else the CPUs it may run on."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            return max(1, round(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return len(os.sched_getaffinity(0))


bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
# gthread: request threads stay free while reconciliation runs in background threads.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY") or max(2, available_cpus()))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# ECS sends SIGTERM, then SIGKILL after the task's stopTimeout (30 s by default):
# finish requests and drain runs within 25 s, leaving the master time to exit.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "25"))
timeout = 60
# Longer than the load balancer's idle timeout (60 s), so gunicorn never closes a connection it is reusing.
keepalive = 75
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
logger_class = "conveyor.console.gunicorn_config.JsonLogger"
# Background runs live in the worker; a worker killed for its age would interrupt them.
max_requests = 0
# gunicorn 24+ opens a control socket in $HOME: nothing uses it, and two servers on one host would share it.
control_socket_disable = True


class JsonLogger(Logger):
    """One JSON object per request on the access log, like the rest of Conveyor's logs."""

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        self.access_log.info(json.dumps({
            "level": "INFO",
            "message": "http request",
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "service": "conveyor-console",
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "query": environ.get("QUERY_STRING") or None,
            "status": int(status),
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 1),
            "remote_addr": environ.get("REMOTE_ADDR"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "correlation_id": environ.get("HTTP_X_CORRELATION_ID"),
        }))


_sigterm_at: list[float] = []


def post_worker_init(worker) -> None:
    """Recover runs orphaned by a dead process; on SIGTERM, refuse new runs at once, then stop as usual."""
    # In a thread: the worker serves /healthz meanwhile. Every worker does it; claims make each run recovered once.
    worker.wsgi.extensions["conveyor"].start()
    stop_worker = worker.handle_exit

    def on_sigterm(signum, frame) -> None:
        _sigterm_at.append(time.monotonic())
        worker.wsgi.extensions["conveyor"].begin_drain()
        stop_worker(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.siginterrupt(signal.SIGTERM, False)


def worker_exit(server, worker) -> None:
    """Wait for running reconciliations with what is left of the graceful timeout, then stop them."""
    started = _sigterm_at[0] if _sigterm_at else time.monotonic()
    budget = server.cfg.graceful_timeout - (time.monotonic() - started) - 2
    services = getattr(worker.wsgi, "extensions", {}).get("conveyor")
    if services is not None and not services.drain(max(budget, 0.0)):
        worker.log.warning("reconciliation runs were stopped unfinished, nothing of them applied; the next start"
                           " of the service executes them again")
