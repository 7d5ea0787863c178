"""The orders queue on SQS; boto3 finds a local endpoint through AWS_ENDPOINT_URL_SQS."""
from __future__ import annotations

import json
from typing import Any

import boto3

from conveyor.observability import CORRELATION_ATTRIBUTE


class OrdersQueue:
    def __init__(self, queue_url: str, client: Any | None = None):
        self.queue_url = queue_url
        # A session of its own: boto3's default session is not safe to share across threads.
        self.client = client or boto3.session.Session().client("sqs")

    def send(self, message: dict[str, Any], correlation_id: str) -> str:
        response = self.client.send_message(
            QueueUrl=self.queue_url,
            MessageBody=json.dumps(message, separators=(",", ":")),
            MessageAttributes={
                CORRELATION_ATTRIBUTE: {"DataType": "String", "StringValue": correlation_id},
                "type": {"DataType": "String", "StringValue": message["type"]},
            },
        )
        return response["MessageId"]
