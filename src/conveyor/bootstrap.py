"""The composition root: decides the database once and builds the services from their dependencies.

`build(database, queue, logger)` wires the services from what it is given (tests pass fakes). The
Lambda handlers use the per-process accessors below (`order_service()`, `batch_processor()`, ...),
which build once from the environment: a warm Lambda reuses them.

Which database, in one place (`choose_database`):
- an URL the caller passes (the local stack's, from conveyor_tools);
- the RDS Data API when DATA_API_RESOURCE_ARN is set, how the handlers reach Aurora on Lambda;
- DATABASE_URL, a direct connection.
A service that needs a direct connection more than the Data API (the console: COPY) prefers
DATABASE_URL when both are set. The direct adapter (SQLAlchemy, psycopg) is imported only when chosen.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from conveyor import ports
from conveyor.services.dead_letters import FailureLog
from conveyor.services.ordering import Authenticator, OrderService
from conveyor.services.processing import BatchProcessor

DATABASE_URL_VARIABLE = "DATABASE_URL"
ORDERS_QUEUE_URL_VARIABLE = "ORDERS_QUEUE_URL"
# The names live in conveyor.dataapi.client; repeated here so choosing does not import boto3.
DATA_API_VARIABLES = ("DATA_API_RESOURCE_ARN", "DATA_API_SECRET_ARN", "DATA_API_DATABASE")


class ConfigurationError(RuntimeError):
    pass


NO_DATABASE = (
    f"no database is configured: set {DATABASE_URL_VARIABLE} (postgresql://user:pass@host:5432/db), or "
    f"{', '.join(DATA_API_VARIABLES)} to go through the RDS Data API, or run the command in a folder where "
    "`conveyor dev` runs"
)


@dataclass(frozen=True)
class DatabaseChoice:
    kind: Literal["direct", "data_api"]
    url: str | None = None  # the direct connection's

    def describe(self) -> str:
        return "the RDS Data API" if self.kind == "data_api" else "a direct connection"


def choose_database(
    environ: Mapping[str, str] | None = None, *, database_url: str | None = None, prefer_direct: bool = False
) -> DatabaseChoice | None:
    """The database to use, or None when nothing is configured."""
    environ = os.environ if environ is None else environ
    if database_url:
        return DatabaseChoice("direct", database_url)
    direct = environ.get(DATABASE_URL_VARIABLE)
    if direct and prefer_direct:
        return DatabaseChoice("direct", direct)
    if any(environ.get(name) for name in DATA_API_VARIABLES):
        return DatabaseChoice("data_api")
    return DatabaseChoice("direct", direct) if direct else None


def open_database(
    choice: DatabaseChoice | None, environ: Mapping[str, str] | None = None, *, pool_size: int = 5
) -> ports.Database:
    """Connect to the chosen database; without one, say what to set."""
    if choice is None:
        raise ConfigurationError(NO_DATABASE)
    if choice.kind == "data_api":
        from conveyor.dataapi.client import DataApiDatabase, DataApiRequestError

        try:
            return DataApiDatabase.from_environment(dict(os.environ if environ is None else environ))
        except DataApiRequestError as exc:
            raise ConfigurationError(str(exc)) from None
        except ValueError:
            raise ConfigurationError(
                "DATA_API_RETRY_BUDGET_SECONDS must be a number of seconds, e.g. 20") from None
    from conveyor.adapters.database import Database, create_engine_for  # SQLAlchemy: only for this path

    assert choice.url is not None
    return Database(create_engine_for(choice.url, pool_size=pool_size))


@dataclass
class Services:
    database: ports.Database
    order_store: ports.OrderStore
    authenticator: Authenticator
    batch_processor: BatchProcessor
    order_service: OrderService | None  # needs the orders queue: the API has one, the worker does not


def build(database: ports.Database, queue: ports.MessageQueue | None = None, logger: Any = None) -> Services:
    from conveyor.adapters.order_store import OrderStore

    if logger is None:
        from conveyor.observability import get_logger

        logger = get_logger("conveyor-worker")
    store = OrderStore(database)
    return Services(
        database=database,
        order_store=store,
        authenticator=Authenticator(store),
        batch_processor=BatchProcessor(store, logger),
        order_service=OrderService(store, queue) if queue is not None else None,
    )


# -- per process, from the environment (the Lambda handlers) ---------------------------------------


@functools.cache
def database() -> ports.Database:
    return open_database(choose_database())


@functools.cache
def services() -> Services:
    queue_url = os.environ.get(ORDERS_QUEUE_URL_VARIABLE)
    queue = None
    if queue_url:
        from conveyor.adapters.queue import OrdersQueue

        queue = OrdersQueue(queue_url)
    return build(database(), queue)


def order_service() -> OrderService:
    service = services().order_service
    if service is None:
        raise ConfigurationError(
            f"{ORDERS_QUEUE_URL_VARIABLE} is not set. Set it in the function's environment, or run `conveyor dev`.")
    return service


def authenticator() -> Authenticator:
    return services().authenticator


def batch_processor() -> BatchProcessor:
    return services().batch_processor


@functools.cache
def failure_log() -> FailureLog:
    return FailureLog(database())


def reset() -> None:
    """Forget built services, e.g. after the environment changed in a test."""
    for factory in (database, services, failure_log):
        factory.cache_clear()
