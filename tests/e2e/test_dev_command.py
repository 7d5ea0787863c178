"""`conveyor dev` as a new user runs it: one command, embedded PostgreSQL, Ctrl-C, and a restart."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests
from support import order_body


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_dev(folder: Path, api_port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AWS_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "conveyor_tools.cli", "dev", "--port", str(api_port), "--sqs-port", str(free_port()),
         "--data-api-port", "0", "--console-port", str(free_port())],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output = []
    deadline = time.monotonic() + 60
    for line in process.stdout:
        output.append(line)
        if "Ctrl-C stops everything" in line:
            return process
        if time.monotonic() > deadline:
            break
    process.kill()
    raise AssertionError("conveyor dev did not become ready:\n" + "".join(output))


def stop_dev(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    remaining, _ = process.communicate(timeout=30)
    assert process.returncode == 0, remaining
    return remaining


def postgres_running_in(folder: Path) -> bool:
    return any(str(folder) in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["name", "cmdline"])
               if p.info["name"] == "postgres")


def test_dev_runs_the_stack_stops_on_ctrl_c_and_keeps_its_data(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    process = start_dev(tmp_path, port)
    try:
        key = (tmp_path / ".conveyor" / "demo-api-key").read_text().strip()
        headers = {"X-Api-Key": key, "Idempotency-Key": "readme-order"}
        accepted = requests.post(f"{api}/orders", json=order_body([("A-1", 2)], 2000), headers=headers, timeout=10)
        assert accepted.status_code == 202
        order_id = accepted.json()["order_id"]
        deadline = time.monotonic() + 15
        while requests.get(f"{api}/orders/{order_id}", headers=headers, timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the order never settled"
            time.sleep(0.1)
        assert requests.get(f"{api}/orders/{order_id}", headers=headers, timeout=10).json()["status"] == "CONFIRMED"
    finally:
        output = stop_dev(process)
    assert "stopped" in output
    assert not postgres_running_in(tmp_path)

    process = start_dev(tmp_path, port)
    try:
        again = requests.get(f"{api}/orders/{order_id}", headers={"X-Api-Key": key}, timeout=10)
        assert again.status_code == 200 and again.json()["status"] == "CONFIRMED"
    finally:
        stop_dev(process)
