"""The layer rules in pyproject.toml ([tool.importlinter]) hold: run as a test so `make test` and CI enforce them."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_every_layer_contract_is_kept():
    checked = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"Contracts: {len(contracts)} kept, 0 broken." in checked.stdout


def test_a_broken_contract_fails_the_check(tmp_path):
    # The same check over a config whose rule the code breaks today (the CLI imports the runtime).
    config = tmp_path / "broken.toml"
    config.write_text(
        '[tool.importlinter]\nroot_packages = ["conveyor", "conveyor_tools"]\n\n'
        '[[tool.importlinter.contracts]]\nname = "tooling never imports the runtime"\ntype = "forbidden"\n'
        'source_modules = ["conveyor_tools.cli"]\nforbidden_modules = ["conveyor"]\n'
    )
    checked = subprocess.run([_tool("lint-imports"), "--no-cache", "--config", str(config)], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert checked.returncode == 1
    assert "tooling never imports the runtime BROKEN" in checked.stdout
