"""`conveyor dev`: the whole system on one machine, wired as it is on AWS."""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import secrets
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from collections.abc import Callable

from conveyor import bootstrap
from sqlalchemy.engine import make_url

from conveyor.adapters.database import Database, create_engine_for, sqlalchemy_url
from conveyor_tools.local.console_server import start_console
from conveyor_tools.dataapi.server import LocalDataApi
from conveyor_tools.local.database import embedded_database_url, state_dir
from conveyor_tools.local.event_source import SqsEventSourceMapping
from conveyor_tools.local.sqs import LocalSqs, free_port
from conveyor.migrations_runner import upgrade
from conveyor.observability import CORRELATION_HEADER, get_logger
from conveyor.services.access import Actor, Role
from conveyor.services.admin import AdminError, create_client, import_catalog
from conveyor.services.users import create_user, has_users

LOCAL_CLUSTER_ARN = "arn:aws:rds:us-east-1:000000000000:cluster:conveyor-local"
LOCAL_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:000000000000:secret:conveyor-local"
DEMO_CLIENT = "demo"
FIRST_ADMIN = "admin"
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
    data_api: bool = True  # the API and worker reach PostgreSQL through the local Data API, as on AWS
    data_api_port: int = 9325
    console_port: int = 8080


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


def console_admin_token(directory: Path) -> str:
    """The local console's admin token, kept in the state folder like the demo key."""
    token_file = directory / "console-admin-token"
    if not token_file.exists():
        token_file.write_text("cvt_" + secrets.token_urlsafe(24) + "\n")
        token_file.chmod(0o600)
    return token_file.read_text().strip()


def first_console_admin(database: Database, directory: Path) -> str | None:
    """On first start, an admin for the console; its password is returned (to print) once, and kept
    in the state folder like the demo key."""
    if has_users(database):
        return None
    password = secrets.token_urlsafe(15)
    create_user(database, Actor(name="conveyor-dev", role=Role.ADMIN), FIRST_ADMIN, Role.ADMIN, password)
    password_file = directory / "console-admin-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    return password


def seed_catalog(database: Database) -> None:
    if not database.fetch_json("SELECT to_json(EXISTS (SELECT 1 FROM catalog))::text"):
        import_catalog(database, DEMO_CATALOG)


def local_api_server(app: object, port: int):
    """Chalice's local API Gateway, with JSON access logs like the rest of the stack."""
    from chalice.config import Config
    from chalice.local import ChaliceRequestHandler, create_local_server

    access_log = get_logger("conveyor-api")

    class LocalApiRequestHandler(ChaliceRequestHandler):
        # Headers and body leave in separate writes; with Nagle's algorithm each
        # response would wait ~40 ms for the client's delayed ACK.
        disable_nagle_algorithm = True

        def method_not_allowed(self) -> None:
            # API Gateway refuses methods Chalice's local server does not know; say so in JSON.
            body = json.dumps({"error": {"code": "MethodNotAllowedError", "message": f"Unsupported method: {self.command}",
                                         "fields": [{"field": "method", "message": "not allowed"}]}}).encode()
            self.send_response(405)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def __getattr__(self, name: str):
            if name.startswith("do_"):  # any method Chalice's handler has no do_ for (TRACE, QUERY, ...)
                return self.method_not_allowed
            raise AttributeError(name)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            access_log.info("http request", extra={
                "method": self.command, "path": self.path, "status": int(code) if str(code).isdigit() else code,
                "correlation_id": self.headers.get(CORRELATION_HEADER),
            })

    config = Config.create(lambda_timeout=30)
    server = create_local_server(app, config, "127.0.0.1", port)
    server.server.RequestHandlerClass = functools.partial(LocalApiRequestHandler, app_object=app, config=config)
    return server


class LocalStack:
    """Database, SQS, pollers and API, started and stopped together."""

    def __init__(self, settings: DevSettings, directory: Path, say: Callable[[str], None] = lambda _: None):
        self.settings = settings
        self.directory = directory
        self.say = say
        self._stops: list[Callable[[], None]] = []

    def start(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        say = self.say
        database_url = os.environ.get("DATABASE_URL") or embedded_database_url(self.directory)
        say("database: " + ("DATABASE_URL" if os.environ.get("DATABASE_URL") else f"embedded PostgreSQL in {self.directory / 'pgdata'}"))
        upgrade(database_url)
        say("migrations applied")
        admin_db = Database(create_engine_for(database_url, pool_size=1))
        self.api_key = demo_api_key(admin_db, self.directory)
        if password := first_console_admin(admin_db, self.directory):
            say(f"console user {FIRST_ADMIN} created; its password is shown once: {password}")
        seed_catalog(admin_db)
        admin_db.dispose()

        database_environment = {"DATABASE_URL": database_url}
        self.data_api_url = None
        if self.settings.data_api:
            data_api = LocalDataApi(database_url, port=self.settings.data_api_port).start()
            self._stops.append(data_api.stop)
            self.data_api_url = data_api.endpoint_url
            database_environment.update(
                DATA_API_RESOURCE_ARN=LOCAL_CLUSTER_ARN,
                DATA_API_SECRET_ARN=LOCAL_SECRET_ARN,
                DATA_API_DATABASE=make_url(sqlalchemy_url(database_url)).database,
                AWS_ENDPOINT_URL_RDS_DATA=data_api.endpoint_url,
            )
            say(f"RDS Data API on {data_api.endpoint_url} in front of PostgreSQL (opt out: --direct-database)")

        self.sqs = LocalSqs(port=self.settings.sqs_port, visibility_timeout=self.settings.visibility_timeout).start()
        self._stops.append(self.sqs.stop)
        say(f"SQS (moto) on {self.sqs.endpoint_url}: {self.sqs.queue_url}, DLQ {self.sqs.dlq_url}")

        console = start_console(database_url, port=self.settings.console_port or free_port(),
                                admin_token=console_admin_token(self.directory),
                                environment={"ORDERS_QUEUE_URL": self.sqs.queue_url, "ORDERS_DLQ_URL": self.sqs.dlq_url,
                                             "AWS_ENDPOINT_URL_SQS": self.sqs.endpoint_url,
                                             "AWS_DEFAULT_REGION": self.sqs.region,
                                             "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "test"),
                                             "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "test")})
        self._stops.append(console.stop)
        self.console_url = console.url
        say(f"console on {console.url}/ (sign in as {FIRST_ADMIN}); its JSON API takes"
            f" Authorization: Bearer {console.admin_token}")
        # The same variables a Lambda function has on AWS; boto3 reads AWS_ENDPOINT_URL_SQS itself.
        self._set_environment(
            **database_environment,
            ORDERS_QUEUE_URL=self.sqs.queue_url,
            AWS_ENDPOINT_URL_SQS=self.sqs.endpoint_url,
            AWS_DEFAULT_REGION=self.sqs.region,
            AWS_ACCESS_KEY_ID=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
            AWS_SECRET_ACCESS_KEY=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        )
        bootstrap.reset()
        self._stops.append(lambda: bootstrap.database().dispose())

        worker = load_chalice_app("worker")
        self.pollers = SqsEventSourceMapping(
            queue_url=self.sqs.queue_url,
            queue_arn=self.sqs.queue_arn,
            region=self.sqs.region,
            endpoint_url=self.sqs.endpoint_url,
            handler=worker.handle_orders,
            concurrency=self.settings.pollers,
        ).start()
        self._stops.append(self.pollers.stop)
        say(f"{self.settings.pollers} pollers feeding worker.handle_orders")

        api = load_chalice_app("api")
        server = local_api_server(api.app, self.settings.api_port)
        threading.Thread(target=server.server.serve_forever, name="api", daemon=True).start()
        self._stops.append(server.server.server_close)
        self._stops.append(server.shutdown)
        self.api_url = f"http://127.0.0.1:{server.server.server_address[1]}"
        stack_file = self.directory / "stack.json"
        stack_file.write_text(
            json.dumps({"api_url": self.api_url, "sqs_endpoint": self.sqs.endpoint_url, "data_api": self.data_api_url, "console_url": self.console_url,
                        "queue_url": self.sqs.queue_url, "dlq_url": self.sqs.dlq_url, "pid": os.getpid()}, indent=2)
        )
        self._stops.append(lambda: stack_file.unlink(missing_ok=True))
        say(f"API on {self.api_url} (OpenAPI: {self.api_url}/openapi.json)")

    def _set_environment(self, **values: str) -> None:
        previous = {name: os.environ.get(name) for name in values}

        def restore() -> None:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

        os.environ.update(values)
        self._stops.append(restore)

    def stop(self) -> None:
        while self._stops:
            self._stops.pop()()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run(settings: DevSettings, say: Callable[[str], None]) -> None:
    directory = state_dir()
    say(f"state folder: {directory}")
    stack = LocalStack(settings, directory, say).start()
    say("ready. Place an order:\n")
    say(
        f"curl -sS -X POST {stack.api_url}/orders -H 'Content-Type: application/json' "
        f"-H 'X-Api-Key: {stack.api_key}' -H \"Idempotency-Key: $(date +%s%N)\" "
        # A payment settles one order: each pasted order gets a payment reference of its own.
        """-d '{"currency":"USD","lines":[{"sku":"A-1","quantity":2}],"payment":{"provider":"stripe","reference":"pi_'$(date +%s%N)'","amount":2000}}'"""
    )
    say(f"\nthen: curl -sS {stack.api_url}/orders -H 'X-Api-Key: {stack.api_key}'\nCtrl-C stops everything.")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        say("stopping...")
        stack.stop()
        say("stopped")
