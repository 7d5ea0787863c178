"""Structured JSON logs with a correlation id that follows an order from API to worker."""
from __future__ import annotations

import os
import uuid

from aws_lambda_powertools import Logger

CORRELATION_HEADER = "X-Correlation-Id"
CORRELATION_ATTRIBUTE = "correlation_id"


def get_logger(service: str) -> Logger:
    """A Powertools JSON logger; LOG_LEVEL sets the level (default INFO)."""
    return Logger(service=service, level=os.environ.get("LOG_LEVEL", "INFO"))


def new_correlation_id() -> str:
    return str(uuid.uuid4())
