"""ruff and mypy, as configured in pyproject.toml, pass: run as tests so `make test` and CI enforce them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / tool), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_ruff_finds_nothing():
    checked = _run("ruff", "check", "--no-cache", ".")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_mypy_finds_nothing(tmp_path):
    checked = _run("mypy", "--cache-dir", str(tmp_path / "mypy-cache"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_mypy_is_strict_on_the_domain_and_the_services(tmp_path):
    # The same settings over a module under conveyor.services with an untyped function: refused.
    package = tmp_path / "conveyor" / "services"
    package.mkdir(parents=True)
    (package / "probe.py").write_text("def add(a, b):\n    return a + b\n")
    probe = _run("mypy", "--cache-dir", str(tmp_path / "mypy-cache"), "--config-file", str(ROOT / "pyproject.toml"),
                 "conveyor/services/probe.py", cwd=tmp_path)
    assert probe.returncode == 1 and "Function is missing a type annotation" in probe.stdout, probe.stdout
