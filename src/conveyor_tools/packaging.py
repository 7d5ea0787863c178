"""Build the API's and the worker's Lambda packages with `chalice package` (a minimal builder)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

APPS = ("api", "worker")
MERGE_TEMPLATE = Path(".chalice") / "merge-template.json"
CHALICE_MAIN = "import sys; from chalice.cli import main; sys.exit(main())"
# Packaging calls no AWS API, but chalice builds a botocore session: give it one that cannot reach AWS.
OFFLINE_AWS_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "packaging", "AWS_SECRET_ACCESS_KEY": "packaging",
                           "AWS_EC2_METADATA_DISABLED": "true"}

Progress = Callable[[str], None]


class PackagingError(RuntimeError):
    """A package could not be built; the message says what to do."""


def repository_root() -> Path:
    return Path(__file__).resolve().parents[2]


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`: mappings merge key by key, anything else replaces (as --merge-template does)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build_one(app: str, root: Path, scratch: Path, out_dir: Path, stage: str,
               stage_settings: Mapping[str, Any], merge_template: Mapping[str, Any]) -> Path:
    project = scratch / app
    (project / ".chalice").mkdir(parents=True)
    shutil.copy2(root / app / "app.py", project / "app.py")
    shutil.copytree(root / "src" / "conveyor", project / "vendor" / "conveyor",
                    ignore=shutil.ignore_patterns("__pycache__"))
    config = json.loads((root / app / ".chalice" / "config.json").read_text())
    config.setdefault("stages", {})[stage] = deep_merge(config["stages"].get(stage, {}), stage_settings)
    (project / ".chalice" / "config.json").write_text(json.dumps(config, indent=2))
    committed = root / app / MERGE_TEMPLATE
    template = json.loads(committed.read_text()) if committed.is_file() else {}
    if app == "worker":  # Chalice cannot set it; the worker's answer means nothing without it
        template = deep_merge(template, {"Resources": {"HandleOrders": {"Properties": {"Events": {
            "HandleOrdersSqsEventSource": {"Properties": {"FunctionResponseTypes": ["ReportBatchItemFailures"]}}}}}}})
    template = deep_merge(template, merge_template)
    merge_file = scratch / f"{app}-merge-template.json"
    merge_file.write_text(json.dumps(template, indent=2))
    target = out_dir / app
    shutil.rmtree(target, ignore_errors=True)
    env = {**OFFLINE_AWS_ENVIRONMENT, **os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    env.setdefault("AWS_DEFAULT_REGION", env.get("AWS_REGION", "us-east-1"))
    command = [sys.executable, "-c", CHALICE_MAIN, "--project-dir", str(project), "package", "--stage", stage,
               "--merge-template", str(merge_file), str(target)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PackagingError(f"chalice package failed for {app} ({result.returncode}): "
                             f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return target


def build_lambda_packages(out_dir: Path, *, stage: str = "dev",
                          stage_settings: Mapping[str, Mapping[str, Any]] | None = None,
                          merge_templates: Mapping[str, Mapping[str, Any]] | None = None,
                          progress: Progress = lambda message: None) -> dict[str, Path]:
    """Package api and worker into out_dir/APP/{deployment.zip,sam.json}."""
    root = repository_root()
    out_dir.mkdir(parents=True, exist_ok=True)
    built = {}
    with tempfile.TemporaryDirectory(prefix="conveyor-package-") as scratch:
        for app in APPS:
            progress(f"packaging {app}")
            built[app] = _build_one(app, root, Path(scratch), out_dir, stage, (stage_settings or {}).get(app, {}),
                                    (merge_templates or {}).get(app, {}))
    return built
