"""Builds the services from the environment, once per process (a warm Lambda reuses them)."""
from __future__ import annotations

import functools
import os

from conveyor.adapters.database import Database, create_engine_for
from conveyor.adapters.order_store import OrderStore
from conveyor.adapters.queue import OrdersQueue
from conveyor.dataapi.client import RESOURCE_ARN_VARIABLE, DataApiDatabase
from conveyor.observability import get_logger
from conveyor.services.dead_letters import FailureLog
from conveyor.services.ordering import Authenticator, OrderService
from conveyor.services.processing import BatchProcessor


class ConfigurationError(RuntimeError):
    pass


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigurationError(
            f"{name} is not set. Set it in the function's environment, or run `conveyor dev` locally."
        )
    return value


@functools.cache
def database() -> Database | DataApiDatabase:
    """The RDS Data API when DATA_API_RESOURCE_ARN is set (Lambda on AWS), else a direct connection."""
    if os.environ.get(RESOURCE_ARN_VARIABLE):
        return DataApiDatabase.from_environment()
    return Database(create_engine_for(_required("DATABASE_URL")))


@functools.cache
def order_store() -> OrderStore:
    return OrderStore(database())


@functools.cache
def order_service() -> OrderService:
    return OrderService(order_store(), OrdersQueue(_required("ORDERS_QUEUE_URL")))


@functools.cache
def authenticator() -> Authenticator:
    return Authenticator(order_store())


@functools.cache
def batch_processor() -> BatchProcessor:
    return BatchProcessor(order_store(), get_logger("conveyor-worker"))


@functools.cache
def failure_log() -> FailureLog:
    return FailureLog(database())


def reset() -> None:
    """Forget built services, e.g. after the environment changed in a test."""
    for factory in (database, order_store, order_service, authenticator, batch_processor, failure_log):
        factory.cache_clear()
