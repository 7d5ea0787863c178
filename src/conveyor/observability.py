"""Structured JSON logs with a correlation id that follows an order from API to worker."""
from __future__ import annotations

import os
import re
import traceback
import uuid
from urllib.parse import unquote, urlsplit

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

CORRELATION_HEADER = "X-Correlation-Id"
CORRELATION_ATTRIBUTE = "correlation_id"


def get_logger(service: str) -> Logger:
    """A Powertools JSON logger; LOG_LEVEL sets the level (default INFO)."""
    return Logger(service=service, level=os.environ.get("LOG_LEVEL", "INFO"))


def new_correlation_id() -> str:
    return str(uuid.uuid4())


MAX_ERROR_TEXT = 500
# Variables whose values are secrets, or hold one (a URL's password).
SECRET_VARIABLES = ("CONSOLE_ADMIN_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "DATABASE_URL")
_URL_PASSWORD = re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@")
_PASSWORD_SETTING = re.compile(r"(?i)(password\s*=\s*)('[^']*'|\S+)")
# SQLAlchemy appends the statement, its parameters and a link to its errors.
_SQLALCHEMY_DETAILS = re.compile(r"\s*(\[SQL: |\[parameters: |\(Background on this error at: ).*", re.DOTALL)


def describe_error(exc: BaseException) -> str:
    """`Type: message` of an exception, fit for a log line, a run's error or an answer.

    Without SQL parameters, passwords in URLs or settings, or the value of any secret in the
    environment, and bounded: drivers quote connection strings and statements in their errors.
    """
    text = _SQLALCHEMY_DETAILS.sub("", str(exc))
    text = _PASSWORD_SETTING.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))
    for secret in _secrets_in_environment():
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}"[:MAX_ERROR_TEXT]


def log_failure(logger: Logger, message: str, exc: BaseException, **extra: object) -> None:
    """Log an exception as describe_error has it, with its stack's frames but none of its values."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    logger.error(message, extra={**extra, "error": describe_error(exc), "stack": frames})


def _secrets_in_environment() -> set[str]:
    secrets = set()
    for name in SECRET_VARIABLES:
        value = os.environ.get(name) or ""
        if name == "DATABASE_URL":
            try:
                value = urlsplit(value).password or ""
            except ValueError:
                value = ""
            secrets.add(unquote(value))
        secrets.add(value)
    return {secret for secret in secrets if len(secret) >= 4}  # too short to redact without mangling the text


METRICS_NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Conveyor")
# What the worker's outcomes are called in CloudWatch.
OUTCOME_METRICS = {
    "confirmed": "OrdersConfirmed",
    "rejected": "OrdersRejected",
    "cancelled": "OrdersCancelled",
    "duplicate": "DuplicatesSuppressed",
    "key_reused": "IdempotencyKeysReused",
    "failed": "MessagesFailed",
    "unprocessable": "MessagesUnprocessable",
}


def publish_batch_metrics(result, receive_counts: dict[str, int], max_receive_count: int) -> None:
    """Write one batch's metrics to stdout in CloudWatch Embedded Metric Format."""
    metrics = Metrics(namespace=METRICS_NAMESPACE, service="conveyor-worker")
    metrics.add_metric(name="BatchSize", unit=MetricUnit.Count, value=len(receive_counts))
    for outcome, name in OUTCOME_METRICS.items():
        if result.outcomes.get(outcome):
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=result.outcomes[outcome])
    metrics.add_metric(name="Retries", unit=MetricUnit.Count, value=max(0, result.attempts - 1))
    # A message failing on its last allowed receive is what SQS moves to the DLQ next.
    dlq_bound = sum(1 for m in result.failed_message_ids if receive_counts.get(m, 0) >= max_receive_count)
    if dlq_bound:
        metrics.add_metric(name="DlqSends", unit=MetricUnit.Count, value=dlq_bound)
    for latency in result.settle_latencies_ms[:100]:  # EMF takes at most 100 values per metric
        metrics.add_metric(name="AcceptedToSettledLatency", unit=MetricUnit.Milliseconds, value=latency)
    metrics.flush_metrics()
