"""`conveyor dev`: the whole system on one machine, wired as it is on AWS."""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

from conveyor import bootstrap
from conveyor.adapters.database import Database, create_engine_for
from conveyor.local.database import resolve_database_url, state_dir
from conveyor.local.event_source import SqsEventSourceMapping
from conveyor.local.sqs import LocalSqs
from conveyor.migrations_runner import upgrade
from conveyor.services.admin import AdminError, create_client, import_catalog

DEMO_CLIENT = "demo"
DEMO_CATALOG = [
    {"sku": "A-1", "name": "Espresso beans 1 kg", "currency": "USD", "unit_price": 1000, "stock": 1_000_000},
    {"sku": "B-2", "name": "Pour-over kettle", "currency": "USD", "unit_price": 4500, "stock": 1_000_000},
    {"sku": "C-3", "name": "Paper filters x100", "currency": "USD", "unit_price": 350, "stock": 1_000_000},
    {"sku": "J-1", "name": "Matcha tin", "currency": "JPY", "unit_price": 2400, "stock": 1_000_000},
    {"sku": "SCARCE-1", "name": "Limited grinder", "currency": "USD", "unit_price": 25000, "stock": 5},
]


@dataclass(frozen=True)
class DevSettings:
    api_port: int = 8000
    sqs_port: int = 9324
    pollers: int = 4
    visibility_timeout: int = 10


def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def load_chalice_app(project: str) -> ModuleType:
    """Import api/app.py or worker/app.py from the checkout, as Lambda would load it."""
    path = repo_root() / project / "app.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `conveyor dev` from a Conveyor checkout")
    spec = importlib.util.spec_from_file_location(f"conveyor_{project}_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_api_key(database: Database, directory: Path) -> str:
    """The demo client's key, created on first start and kept in the state folder."""
    key_file = directory / "demo-api-key"
    if key_file.exists():
        return key_file.read_text().strip()
    key = "cvk_demo_" + secrets.token_urlsafe(24)
    name = DEMO_CLIENT
    for attempt in range(1, 100):
        try:
            create_client(database, name, api_key=key)
            break
        except AdminError:
            name = f"{DEMO_CLIENT}-{attempt + 1}"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key


def seed_catalog(database: Database) -> None:
    if not database.fetch_json("SELECT to_json(EXISTS (SELECT 1 FROM catalog))::text"):
        import_catalog(database, DEMO_CATALOG)


def run(settings: DevSettings, say: Callable[[str], None]) -> None:
    directory = state_dir()
    say(f"state folder: {directory}")
    database_url = resolve_database_url()
    say("database: " + ("DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL in " + str(directory / "pgdata")))
    upgrade(database_url)
    say("migrations applied")
    admin_db = Database(create_engine_for(database_url, pool_size=1))
    api_key = demo_api_key(admin_db, directory)
    seed_catalog(admin_db)
    admin_db.dispose()

    sqs = LocalSqs(port=settings.sqs_port, visibility_timeout=settings.visibility_timeout).start()
    say(f"SQS (moto) on {sqs.endpoint_url}: {sqs.queue_url}, DLQ {sqs.dlq_url}")
    # The same variables a Lambda function would have on AWS; boto3 reads AWS_ENDPOINT_URL_SQS.
    os.environ.update(
        DATABASE_URL=database_url,
        ORDERS_QUEUE_URL=sqs.queue_url,
        AWS_ENDPOINT_URL_SQS=sqs.endpoint_url,
        AWS_DEFAULT_REGION=sqs.region,
    )
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    bootstrap.reset()

    worker = load_chalice_app("worker")
    pollers = SqsEventSourceMapping(
        queue_url=sqs.queue_url,
        queue_arn=sqs.queue_arn,
        region=sqs.region,
        endpoint_url=sqs.endpoint_url,
        handler=worker.handle_orders,
        concurrency=settings.pollers,
    ).start()
    say(f"{settings.pollers} pollers feeding worker.handle_orders")

    from chalice.config import Config
    from chalice.local import create_local_server

    api = load_chalice_app("api")
    server = create_local_server(api.app, Config.create(lambda_timeout=30), "127.0.0.1", settings.api_port)
    server_thread = threading.Thread(target=server.server.serve_forever, name="api", daemon=True)
    server_thread.start()
    api_url = f"http://127.0.0.1:{settings.api_port}"
    (directory / "stack.json").write_text(
        json.dumps({"api_url": api_url, "sqs_endpoint": sqs.endpoint_url, "queue_url": sqs.queue_url,
                    "dlq_url": sqs.dlq_url, "pid": os.getpid()}, indent=2)
    )
    say(f"API on {api_url} (OpenAPI: {api_url}/openapi.json)")
    say("ready. Place an order:\n")
    say(
        f"curl -sS -X POST {api_url}/orders -H 'Content-Type: application/json' "
        f"-H 'X-Api-Key: {api_key}' -H \"Idempotency-Key: $(date +%s%N)\" "
        """-d '{"currency":"USD","lines":[{"sku":"A-1","quantity":2}],"payment":{"provider":"stripe","reference":"pi_123","amount":2000}}'"""
    )
    say(f"\nthen: curl -sS {api_url}/orders -H 'X-Api-Key: {api_key}'\nCtrl-C stops everything.")

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        say("stopping...")
        server.shutdown()
        pollers.stop()
        sqs.stop()
        bootstrap.database().dispose()
        (directory / "stack.json").unlink(missing_ok=True)
        say("stopped")
