"""What the console's pages need beyond the database: the orders queue and its DLQ, from the environment.

- ORDERS_QUEUE_URL, ORDERS_DLQ_URL: the orders queue and its dead-letter queue (boto3 reads
  AWS_ENDPOINT_URL_SQS itself, for a local SQS);
- CONSOLE_SECRET_KEY: signs session cookies; without it a random key kept in the database is used,
  the same for every worker and task;
- CONSOLE_TRUSTED_PROXIES: how many proxies (an ALB is 1) sit in front, so the client's address and
  HTTPS are read from their X-Forwarded-* headers; 0 (the default) trusts none.
"""
from __future__ import annotations

import functools
import os
from typing import Any

from conveyor.adapters.dead_letter_queue import SqsDeadLetterQueue
from conveyor.adapters.queue import CLIENT_OPTIONS, OrdersQueue
from conveyor.console.settings import ConfigurationError
from conveyor import bootstrap
from conveyor.services.ordering import OrderService

QUEUE_URL_VARIABLE = "ORDERS_QUEUE_URL"
DLQ_URL_VARIABLE = "ORDERS_DLQ_URL"
SECRET_KEY_VARIABLE = "CONSOLE_SECRET_KEY"
TRUSTED_PROXIES_VARIABLE = "CONSOLE_TRUSTED_PROXIES"


def _queue_url(name: str) -> str:
    url = os.environ.get(name)
    if not url:
        raise ConfigurationError(f"{name} is not set: give the console the orders queue's and DLQ's URLs"
                                 f" ({QUEUE_URL_VARIABLE}, {DLQ_URL_VARIABLE})")
    return url


@functools.cache
def _orders_queue() -> OrdersQueue:
    return OrdersQueue(_queue_url(QUEUE_URL_VARIABLE))


def order_service(database: Any) -> OrderService:
    """The API's own order service: a cancel from the console is the API's cancel message."""
    service = bootstrap.build(database, _orders_queue()).order_service
    assert service is not None  # built with a queue
    return service


@functools.cache
def dead_letter_queue() -> SqsDeadLetterQueue:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    queue_url, dlq_url = _queue_url(QUEUE_URL_VARIABLE), _queue_url(DLQ_URL_VARIABLE)
    try:
        client = boto3.session.Session().client("sqs", config=Config(**CLIENT_OPTIONS))
    except BotoCoreError as exc:
        raise ConfigurationError(f"cannot build an SQS client ({exc}): set AWS_REGION") from None
    return SqsDeadLetterQueue(client, queue_url, dlq_url)


def trusted_proxies() -> int:
    value = os.environ.get(TRUSTED_PROXIES_VARIABLE, "0")
    if not value.isdigit():
        raise ConfigurationError(f"{TRUSTED_PROXIES_VARIABLE} must be a number of proxies, e.g. 1, not {value!r}")
    return int(value)
