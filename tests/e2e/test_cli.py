"""The `conveyor` commands as an operator runs them, against the test database."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from conveyor.services.admin import import_catalog
from conveyor.services.ordering import hash_api_key


def conveyor(*args: str, database_url: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_migrate_is_idempotent(database_url):
    result = conveyor("migrate", database_url=database_url)
    assert result.returncode == 0, result.stderr
    assert "migrations applied" in result.stderr


def test_clients_create_prints_the_key_once_on_the_last_line(database_url, session_database):
    name = f"acme-{uuid.uuid4().hex[:6]}"
    result = conveyor("clients", "create", name, database_url=database_url)

    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    stored = session_database.fetch_json("SELECT to_json(api_key_hash)::text FROM clients WHERE name = :n", {"n": name})
    assert stored == hash_api_key(key) != key

    again = conveyor("clients", "create", name, database_url=database_url)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_catalog_import_upserts_and_reports_bad_rows_by_line(database_url, session_database, tmp_path):
    sku = f"CLI-{uuid.uuid4().hex[:6]}"
    good = tmp_path / "catalog.csv"
    good.write_text(f'\ufeffsku,name,currency,unit_price,stock\r\n{sku},"Mug, large",EUR,1299,40\r\n', encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_text(f"sku,name,currency,unit_price,stock\n{sku},Mug,EURO,12.99,40\n")

    assert conveyor("catalog", "import", str(good), database_url=database_url).returncode == 0
    refused = conveyor("catalog", "import", str(bad), database_url=database_url)

    assert refused.returncode == 2 and "bad.csv:2" in refused.stderr
    row = session_database.fetch_json(
        "SELECT row_to_json(c)::text FROM catalog c WHERE sku = :sku", {"sku": sku})
    assert (row["name"], row["currency"], row["unit_price"], row["stock_available"]) == ("Mug, large", "EUR", 1299, 40)


def test_load_places_orders_and_reports_settle_latency(stack, database_url, session_database):
    import_catalog(session_database, [
        {"sku": f"LOAD-{n}", "name": "load", "currency": "USD", "unit_price": 100 * n, "stock": 100_000} for n in (1, 2, 3)
    ])

    result = conveyor("load", "--orders", "40", "--concurrency", "4", "--duplicates", "0.5",
                      "--api-url", stack.api_url, "--api-key", stack.api_key, database_url=database_url)

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["placed"] == summary["settled"] == 40
    assert summary["confirmed"] + summary["rejected"] == 40
    assert summary["duplicates_suppressed"] == summary["duplicates_sent"] > 0
    assert summary["latency_ms"]["p50"] is not None and summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"]
