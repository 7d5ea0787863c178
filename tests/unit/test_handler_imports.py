"""What a Lambda handler loads on the Data API path: no SQLAlchemy, no psycopg, nothing from the tooling.
(How long it takes is measured in bench/, never asserted here.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY_OR_FOREIGN = ("sqlalchemy", "psycopg", "flask", "alembic", "conveyor_tools", "moto", "rich")
LOADED = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import app
from conveyor import bootstrap
bootstrap.services()  # built as on the first request, through the Data API
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


@pytest.mark.parametrize("handler", ["api", "worker"])
def test_a_handler_on_the_data_api_path_loads_no_driver_and_no_tooling(repo_root, handler):
    env = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    env.update(DATA_API_RESOURCE_ARN="arn:aws:rds:us-east-1:123456789012:cluster:conveyor",
               DATA_API_SECRET_ARN="arn:aws:secretsmanager:us-east-1:123456789012:secret:db",
               DATA_API_DATABASE="conveyor", AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="test",
               AWS_SECRET_ACCESS_KEY="test", ORDERS_QUEUE_URL="http://127.0.0.1:9/000000000000/conveyor-orders")
    loaded = subprocess.run([sys.executable, "-c", LOADED, str(repo_root / handler)], env=env, cwd=repo_root,
                            capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    modules = set(json.loads(loaded.stdout))
    assert "conveyor" in modules and "boto3" in modules
    assert modules.isdisjoint(HEAVY_OR_FOREIGN), sorted(modules & set(HEAVY_OR_FOREIGN))
