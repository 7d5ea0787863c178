"""Which database a `conveyor` command uses: the Data API when DATA_API_* is set, the local stack's only
in a `conveyor dev` folder, and otherwise none: it refuses and says what to set."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from sqlalchemy.engine import make_url

from conveyor.services.ordering import hash_api_key
from conveyor_tools.local.stack import LOCAL_CLUSTER_ARN, LOCAL_SECRET_ARN

DATABASE_VARIABLES = ("DATABASE_URL", "DATABASE_SECRET_ARN", "DATA_API_RESOURCE_ARN", "DATA_API_SECRET_ARN",
                      "DATA_API_DATABASE")


def run(*args: str, cwd, **environment: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name not in DATABASE_VARIABLES}
    return subprocess.run([sys.executable, "-m", "conveyor_tools.cli", *args], env={**env, **environment}, cwd=cwd,
                          capture_output=True, text=True, timeout=180)


def test_with_data_api_variables_every_database_command_goes_through_the_data_api(
        data_api_endpoint, database_url, session_database, tmp_path):
    data_api_endpoint.resume()
    data_api_endpoint.reset_calls()
    through_data_api = {"DATA_API_RESOURCE_ARN": LOCAL_CLUSTER_ARN, "DATA_API_SECRET_ARN": LOCAL_SECRET_ARN,
                        "DATA_API_DATABASE": make_url(database_url).database}

    migrated = run("migrate", cwd=tmp_path, **through_data_api)
    assert migrated.returncode == 0, migrated.stderr
    assert "migrations applied through the RDS Data API" in migrated.stderr

    name = f"data-api-{uuid.uuid4().hex[:6]}"
    created = run("clients", "create", name, cwd=tmp_path, **through_data_api)
    assert created.returncode == 0, created.stderr
    stored = session_database.fetch_json("SELECT to_json(api_key_hash)::text FROM clients WHERE name = :n",
                                         {"n": name})
    assert stored == hash_api_key(created.stdout.strip().splitlines()[-1])

    sku = f"DAPI-{uuid.uuid4().hex[:6]}"
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(f"sku,name,currency,unit_price,stock\n{sku},Mug,EUR,1299,40\n")
    imported = run("catalog", "import", str(catalog), cwd=tmp_path, **through_data_api)
    assert imported.returncode == 0, imported.stderr
    assert session_database.fetch_json("SELECT to_json(stock_available)::text FROM catalog WHERE sku = :sku",
                                       {"sku": sku}) == 40

    report = tmp_path / "generic.csv"
    report.write_text(f"reference,currency,amount\nNO-SUCH-{uuid.uuid4().hex[:6]},USD,1.00\n")
    reconciled = run("reconcile", str(report), "--format", "generic", "--cutoff", "2026-10-31T00:00:00+00:00",
                     cwd=tmp_path, **through_data_api)
    assert reconciled.returncode == 0, reconciled.stderr
    assert '"unknown_payment":1' in reconciled.stdout
    assert data_api_endpoint.calls["ExecuteStatement"] >= 4
    assert not (tmp_path / ".conveyor").exists()  # no local database was started


def test_outside_a_dev_folder_a_command_without_a_database_refuses_and_says_what_to_set(tmp_path):
    for command in (["migrate"], ["clients", "create", "acme"], ["chaos", "--orders", "10"]):
        refused = run(*command, cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        message = " ".join(refused.stderr.split())
        assert "no database is configured: set DATABASE_URL" in message
        assert "DATA_API_RESOURCE_ARN" in message and "`conveyor dev`" in message
    assert list(tmp_path.iterdir()) == []  # nothing was written where the user did not mean


def test_a_command_needing_a_server_refuses_the_data_api(tmp_path):
    refused = run("chaos", "--orders", "10", cwd=tmp_path, DATA_API_RESOURCE_ARN=LOCAL_CLUSTER_ARN,
                  DATA_API_SECRET_ARN=LOCAL_SECRET_ARN, DATA_API_DATABASE="conveyor")
    assert refused.returncode == 2, refused.stderr
    assert "needs a PostgreSQL server, not the RDS Data API" in " ".join(refused.stderr.split())


def test_in_a_dev_folder_the_local_stacks_database_is_used():
    # Not under pytest's 0700 folder: as root the embedded server runs as its own system user.
    folder = Path(tempfile.mkdtemp(prefix="conveyor-dev-"))
    try:
        (folder / ".conveyor").mkdir()
        migrated = run("migrate", cwd=folder)
        assert migrated.returncode == 0, migrated.stderr
        assert "migrations applied through a direct connection" in migrated.stderr
        assert (folder / ".conveyor" / "pgdata" / "PG_VERSION").is_file()
        assert not (folder / ".conveyor" / "pgdata" / "postmaster.pid").exists()  # stopped with the command
    finally:
        shutil.rmtree(folder, ignore_errors=True)
