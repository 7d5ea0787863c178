"""Build the API's and the worker's Lambda packages with `chalice package`.

Each app is built from a temporary copy of its Chalice project that holds app.py, its
.chalice/config.json (with the stage's settings merged in), the runtime package `conveyor`
in vendor/ (which Chalice puts at the root of the zip), and a requirements.txt made from
pyproject's core dependencies minus what the Lambda runtime already provides. Chalice
adds its own runtime (chalice/app.py) and downloads Linux wheels for the requirements.
"""
from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from importlib import metadata
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

APPS = ("api", "worker")
RUNTIME_PACKAGE = "conveyor"
# The Lambda Python runtime ships these; bundling them would only add weight.
PROVIDED_BY_LAMBDA = frozenset({"boto3", "botocore"})
# Our budget per deployment.zip (Lambda itself allows 50 MB zipped).
MAX_PACKAGE_BYTES = 10 * 1024 * 1024
# Committed per app: deep-merged over the template `chalice package` generates.
MERGE_TEMPLATE = Path(".chalice") / "merge-template.json"
CHALICE_MAIN = "import sys; from chalice.cli import main; sys.exit(main())"
# Packaging calls no AWS API, but chalice builds a botocore session: give it one that cannot reach AWS.
OFFLINE_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "packaging",
    "AWS_SECRET_ACCESS_KEY": "packaging",
    "AWS_EC2_METADATA_DISABLED": "true",
}
UNREACHABLE_INDEX = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|Name or service not known"
    r"|Network is unreachable|Connection refused|ConnectTimeout|ReadTimeout|SSLError|CERTIFICATE_VERIFY_FAILED"
    r"|Could not fetch URL|ProxyError"
)

# Prints the files of the modules that importing argv[2] from the folder argv[1] loads from that folder.
IMPORTED_FILES = """
import importlib, os, sys
folder, module = os.path.realpath(sys.argv[1]), sys.argv[2]
sys.path.insert(0, folder)
importlib.import_module(module)
for loaded in list(sys.modules.values()):
    path = os.path.realpath(getattr(loaded, "__file__", None) or "")
    if path.startswith(folder + os.sep):
        print(path)
"""

Progress = Callable[[str], None]


class PackagingError(RuntimeError):
    """A package could not be built; the message says what to do."""


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def repository_root() -> Path:
    return Path(__file__).resolve().parents[2]


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement ("aws-lambda-powertools>=3" -> "aws-lambda-powertools")."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise PackagingError(f"cannot read the requirement {requirement!r} in pyproject.toml: fix its name")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def lambda_requirements(pyproject: Path) -> list[str]:
    """pyproject's core dependencies, less what the Lambda runtime provides."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [requirement for requirement in dependencies if requirement_name(requirement) not in PROVIDED_BY_LAMBDA]


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`: mappings merge key by key, anything else replaces (as --merge-template does)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def prepare_project(app: str, root: Path, build_dir: Path, *, stage: str,
                    stage_settings: Mapping[str, Any], merge_template: Mapping[str, Any]) -> Path | None:
    """Lay out the Chalice project to package in build_dir; returns the merge template to pass, if any."""
    source = root / app
    if not (source / "app.py").is_file():
        raise PackagingError(f"{source / 'app.py'} is missing: run `conveyor package` from a Conveyor checkout")
    build_dir.mkdir(parents=True)
    shutil.copy2(source / "app.py", build_dir / "app.py")
    if (source / "chalicelib").is_dir():
        shutil.copytree(source / "chalicelib", build_dir / "chalicelib",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (build_dir / ".chalice").mkdir()
    config = json.loads((source / ".chalice" / "config.json").read_text())
    config.setdefault("stages", {})[stage] = deep_merge(config["stages"].get(stage, {}), stage_settings)
    _write_json(build_dir / ".chalice" / "config.json", config)

    # conveyor.console is the Fargate service (Flask, templates, front-end assets): no handler imports it.
    shutil.copytree(root / "src" / RUNTIME_PACKAGE, build_dir / "vendor" / RUNTIME_PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "console", "node_modules"))
    (build_dir / "requirements.txt").write_text("\n".join(lambda_requirements(root / "pyproject.toml")) + "\n")

    committed = source / MERGE_TEMPLATE
    template = json.loads(committed.read_text()) if committed.is_file() else {}
    template = deep_merge(template, merge_template)
    if not template:
        return None
    path = build_dir / "merge-template.json"
    _write_json(path, template)
    return path


def _index_unreachable(requirement: str, env: Mapping[str, str]) -> bool:
    """chalice reports an unreachable index as a missing version: ask pip itself, which says why."""
    with tempfile.TemporaryDirectory(prefix="conveyor-pip-probe-") as probe:
        completed = subprocess.run([sys.executable, "-m", "pip", "download", "-vv", "--no-deps", "--dest", probe,
                                    requirement],
                                   capture_output=True, text=True, env=dict(env), timeout=600)
    return completed.returncode != 0 and bool(UNREACHABLE_INDEX.search(completed.stderr + completed.stdout))


def _explain_failure(app: str, output: list[str], returncode: int, env: Mapping[str, str]) -> str:
    text = "\n".join(output)
    missing = re.search(r"Could not satisfy the requirement: (\S+)", text)
    if UNREACHABLE_INDEX.search(text) or (missing and _index_unreachable(missing.group(1), env)):
        return (f"pip could not reach the package index while downloading Linux wheels for the {app} package. "
                "Check the network, the proxy and pip's index settings (PIP_INDEX_URL, pip.conf), then run again.")
    if missing:
        return (f"no published version of {missing.group(1)} satisfies the {app} package's requirements: "
                "check the core dependencies in pyproject.toml")
    tail = "\n".join(line for line in output[-15:] if line.strip())
    return f"`chalice package` failed for the {app} package (exit {returncode}). Its last lines:\n{tail}"


def _run_chalice(app: str, project_dir: Path, out_dir: Path, stage: str, merge_template: Path | None,
                 progress: Progress) -> None:
    try:
        import chalice  # noqa: F401 - only to say what to install
    except ImportError:
        raise PackagingError("chalice is not installed: install the local tooling with "
                             "`pip install -e '.[local]'` (or run `make test` once)") from None
    command = [sys.executable, "-c", CHALICE_MAIN, "--project-dir", str(project_dir), "package", "--stage", stage]
    if merge_template:
        command += ["--merge-template", str(merge_template)]
    command.append(str(out_dir))
    env = {key: value for key, value in os.environ.items() if key not in ("AWS_PROFILE", "AWS_SESSION_TOKEN")}
    env.update(OFFLINE_AWS_ENVIRONMENT)
    env.setdefault("AWS_DEFAULT_REGION", env.get("AWS_REGION", "us-east-1"))
    output: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=project_dir) as process:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line.rstrip())
            if line.strip() and not line.startswith((" ", "Traceback")):
                progress(f"{app}: {line.strip()}")
    if process.returncode != 0:
        raise PackagingError(_explain_failure(app, output, process.returncode, env))
    # chalice only warns, and still writes a package, when a dependency has no Linux wheel.
    missing = re.search(r"Could not install dependencies:\n(.*?)\nYou will have to", "\n".join(output), re.S)
    if missing:
        names = ", ".join(missing.group(1).split())
        raise PackagingError(f"no Linux wheel for Python {sys.version_info.major}.{sys.version_info.minor} of: {names}"
                             f" (the {app} package needs one for Lambda). Pin a version that publishes a manylinux"
                             " wheel, or drop it from the core dependencies")


def _build_one(app: str, root: Path, scratch: Path, out_dir: Path, stage: str, stage_settings: Mapping[str, Any],
               merge_template: Mapping[str, Any], progress: Progress) -> Path:
    started = time.monotonic()
    progress(f"{app}: preparing the Chalice project (stage {stage})")
    project_dir = scratch / app
    merge_file = prepare_project(app, root, project_dir, stage=stage, stage_settings=stage_settings,
                                 merge_template=merge_template)
    progress(f"{app}: chalice package, downloading Linux wheels of "
             f"{', '.join(lambda_requirements(root / 'pyproject.toml'))}")
    chalice_out = scratch / f"{app}-out"
    _run_chalice(app, project_dir, chalice_out, stage, merge_file, progress)
    target = out_dir / app
    target.mkdir(parents=True, exist_ok=True)
    for name in ("deployment.zip", "sam.json"):
        shutil.move(chalice_out / name, target / name)
    add_startup_bytecode(app, target / "deployment.zip", progress)
    size = (target / "deployment.zip").stat().st_size
    over = "" if size <= MAX_PACKAGE_BYTES else f", OVER the {MAX_PACKAGE_BYTES / 2**20:.0f} MB budget"
    progress(f"{app}: {target / 'deployment.zip'} {size / 2**20:.2f} MB{over}, in {time.monotonic() - started:.0f} s")
    return target


def add_startup_bytecode(app: str, archive: Path, progress: Progress) -> int:
    """Add bytecode for the modules the handler imports at cold start; returns how many.

    Lambda unpacks the zip into a read-only /var/task, so Python cannot cache what it compiles:
    without bytecode in the package every cold start compiles every module again. Only what
    the handler's import loads is compiled (all of it would take the zip over budget); the
    pycs are unchecked-hash ones, valid whatever timestamps the unpacked files get.
    """
    with tempfile.TemporaryDirectory(prefix=f"conveyor-{app}-bytecode-") as unpacked:
        with zipfile.ZipFile(archive) as package:
            package.extractall(unpacked)
        listing = subprocess.run(
            [sys.executable, "-B", "-c", IMPORTED_FILES, unpacked, "app"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"})
        if listing.returncode != 0:
            raise PackagingError(f"the {app} package's handler does not import: {listing.stderr.strip()[-2000:]}")
        sources = [Path(line) for line in listing.stdout.splitlines() if line.endswith(".py")]
        with zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED) as package:
            for source in sources:
                compiled = Path(importlib.util.cache_from_source(str(source)))
                py_compile.compile(str(source), cfile=str(compiled), doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
                package.write(compiled, compiled.relative_to(unpacked).as_posix())
    progress(f"{app}: added bytecode for the {len(sources)} modules its handler imports at cold start")
    return len(sources)


def build_lambda_packages(out_dir: Path, *, stage: str = "dev",
                          stage_settings: Mapping[str, Mapping[str, Any]] | None = None,
                          merge_templates: Mapping[str, Mapping[str, Any]] | None = None,
                          progress: Progress = _to_stderr) -> dict[str, Path]:
    """Build each app's deployment.zip and sam.json into out_dir/APP; returns {app: out_dir/APP}.

    stage_settings[app] is merged into that app's config.json stages[stage] (e.g. environment_variables);
    merge_templates[app] is deep-merged over its generated template, after the committed merge template.
    """
    root = repository_root()
    out_dir = Path(out_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="conveyor-package-") as scratch, \
            ThreadPoolExecutor(max_workers=len(APPS)) as pool:  # the builds mostly wait on pip
        builds = {app: pool.submit(_build_one, app, root, Path(scratch), out_dir, stage,
                                   (stage_settings or {}).get(app, {}), (merge_templates or {}).get(app, {}),
                                   progress)
                  for app in APPS}
        return {app: build.result() for app, build in builds.items()}


def _distribution_closure(names: Iterable[str]) -> list[metadata.Distribution]:
    """The installed distributions `names` need, themselves included, without optional extras."""
    found: dict[str, metadata.Distribution] = {}
    pending = list(names)
    while pending:
        name = requirement_name(pending.pop())
        if name in found:
            continue
        found[name] = metadata.distribution(name)
        for requirement in found[name].requires or []:
            requirement_text, _, marker = requirement.partition(";")
            if "extra" not in marker:  # an optional feature's requirement
                pending.append(requirement_text)
    return list(found.values())


def stage_lambda_runtime_libraries(target: Path) -> Path:
    """Copy boto3, botocore and what they need from this environment into target: what Lambda puts beside a package."""
    for distribution in _distribution_closure(PROVIDED_BY_LAMBDA):
        for file in distribution.files or []:
            source = Path(distribution.locate_file(file))
            if file.parts[0] in ("..", "") or "__pycache__" in file.parts or not source.is_file():
                continue  # scripts installed outside site-packages, and bytecode
            destination = target / file
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return target
