"""The orders queue on SQS; boto3 finds a local endpoint through AWS_ENDPOINT_URL_SQS."""
from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ConnectionError as BotoConnectionError

from conveyor.errors import TransientError
from conveyor.observability import CORRELATION_ATTRIBUTE

# An API request waits on this call: fail over to "retry later" in seconds, not minutes.
CLIENT_OPTIONS: dict[str, Any] = {"connect_timeout": 2, "read_timeout": 5,
                                  "retries": {"mode": "standard", "max_attempts": 3}}


class QueueUnavailable(TransientError):
    """SQS could not be reached; the caller may retry the same request later."""


class OrdersQueue:
    def __init__(self, queue_url: str, client: Any | None = None):
        self.queue_url = queue_url
        if client is None:
            import boto3  # deferred: a cold start pays for it on the first request, not at import
            from botocore.config import Config

            # A session of its own: boto3's default session is not safe to share across threads.
            client = boto3.session.Session().client("sqs", config=Config(**CLIENT_OPTIONS))
        self.client = client

    def send(self, message: dict[str, Any], correlation_id: str) -> str:
        try:
            response = self.client.send_message(
                QueueUrl=self.queue_url,
                MessageBody=json.dumps(message, separators=(",", ":")),
                MessageAttributes={
                    CORRELATION_ATTRIBUTE: {"DataType": "String", "StringValue": correlation_id},
                    "type": {"DataType": "String", "StringValue": message["type"]},
                },
            )
        except BotoConnectionError as exc:
            raise QueueUnavailable(f"cannot reach the orders queue: {exc}") from exc
        return response["MessageId"]
