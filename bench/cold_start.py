"""Cold start: how long a fresh interpreter takes to import each Lambda handler from its package.

    python bench/cold_start.py [--runs 15] [--packages DIR]

Each handler is imported from its unzipped deployment.zip in --runs fresh interpreters, as
Lambda does (`-I -S -B`: no site-packages, nothing written next to the code), with only
boto3 and its dependencies beside it. `import boto3` is measured the same way in the same
rounds, for scale. Progress on stderr; one JSON line on stdout. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

from conveyor_tools.deploy.run import package_offline
from conveyor_tools.packaging import APPS, stage_lambda_runtime_libraries

TARGET_MS = 300
STRETCH_MS = 200
# Times one import in this fresh interpreter; argv: the module, then the folders to put on sys.path.
TIMED_IMPORT = """
import importlib, sys, time
sys.path[:0] = sys.argv[2:]
started = time.perf_counter()
importlib.import_module(sys.argv[1])
print((time.perf_counter() - started) * 1000)
"""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def timed_import(module: str, *folders: Path, importtime: bool = False) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    completed = subprocess.run([sys.executable, "-I", "-S", "-B", *flags, "-c", TIMED_IMPORT, module,
                                *map(str, folders)], capture_output=True, text=True, timeout=120,
                               env={"AWS_DEFAULT_REGION": "us-east-1", "PATH": os.environ.get("PATH", "")})
    if completed.returncode != 0:
        say(completed.stderr[-3000:])
        say(f"importing {module} from {folders[0]} failed: the measurement cannot be trusted")
        sys.exit(2)
    return completed


def by_top_level_package(importtime_report: str) -> dict[str, float]:
    """`-X importtime` self times summed per top-level package, in ms, largest first."""
    totals: Counter[str] = Counter()
    for line in importtime_report.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if match:
            totals[match.group(2).split(".")[0]] += int(match.group(1)) / 1000
    return {name: round(ms, 1) for name, ms in totals.most_common(8)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="fresh interpreters per handler (default 15)")
    parser.add_argument("--packages", type=Path,
                        help="a `conveyor package --out` folder (default: build them now, about a minute)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="conveyor-cold-start-") as scratch:
        scratch_dir = Path(scratch)
        packages = args.packages
        if packages is None or not all((packages / app / "deployment.zip").is_file() for app in APPS):
            packages = scratch_dir / "packages"
            say(f"building the Lambda packages into {packages}")
            package_offline("dev", packages, say)
        sizes = {app: (packages / app / "deployment.zip").stat().st_size for app in APPS}
        libraries = stage_lambda_runtime_libraries(scratch_dir / "runtime")
        # The runtime's boto3 comes with its bytecode, as pip installs it.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(libraries)], check=True, capture_output=True)
        folders = {}
        for app in APPS:
            folders[app] = scratch_dir / f"task-{app}"
            with zipfile.ZipFile(packages / app / "deployment.zip") as archive:
                archive.extractall(folders[app])

        cases = {app: ("app", folders[app], libraries) for app in APPS} | {"boto3": ("boto3", libraries)}
        say(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; read the figures against it")
        timer(cases, rounds=1)  # warms the page cache; not counted
        samples = timer(cases, rounds=args.runs)
        breakdown = {app: by_top_level_package(timed_import(*cases[app], importtime=True).stderr) for app in APPS}

    boto3_ms = statistics.median(samples["boto3"])
    handlers = {}
    for app in APPS:
        median = statistics.median(samples[app])
        handlers[app] = {
            "median_ms": round(median, 1), "min_ms": round(min(samples[app]), 1), "max_ms": round(max(samples[app]), 1),
            "zip_bytes": sizes[app],
            "within_target": median <= TARGET_MS, "within_stretch": median <= STRETCH_MS,
            "self_ms_by_package": breakdown[app],
        }
        say(f"{app}: median {median:.0f} ms (min {min(samples[app]):.0f}, max {max(samples[app]):.0f}), "
            f"{median / boto3_ms:.1f}x import boto3; target {TARGET_MS} ms, stretch {STRETCH_MS} ms")
        say(f"  {app} import time by package (self, ms): {breakdown[app]}")
    say(f"boto3: median {boto3_ms:.0f} ms")
    print(json.dumps({"runs": args.runs, "target_ms": TARGET_MS, "stretch_ms": STRETCH_MS,
                      "load_average": round(os.getloadavg()[0], 2), "boto3_median_ms": round(boto3_ms, 1),
                      "handlers": handlers}, separators=(",", ":")))
    return 0


def timer(cases: dict[str, tuple], rounds: int) -> dict[str, list[float]]:
    """Round-robin, so that a busy moment of the machine hits every case alike."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for round_number in range(rounds):
        for name, case in cases.items():
            samples[name].append(float(timed_import(*case).stdout.strip()))
        if rounds > 1:
            say(f"round {round_number + 1}/{rounds}: " + ", ".join(f"{n} {s[-1]:.0f} ms" for n, s in samples.items()))
    return samples


if __name__ == "__main__":
    started = time.monotonic()
    status = main()
    say(f"done in {time.monotonic() - started:.0f} s")
    sys.exit(status)
