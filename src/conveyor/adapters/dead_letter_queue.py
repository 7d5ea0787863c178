"""The orders DLQ on SQS. Redrive is receive, send to the orders queue, delete: it works on AWS and on
moto alike (moto has no StartMessageMoveTask)."""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from conveyor.services.dead_letters import DeadLetter, QueueDepths

HOLD_SECONDS = 30  # how long a sweep hides what it received; released at once when not acted on
MAX_SWEEP = 1000  # messages one action may touch
EMPTY_RECEIVES = 3  # SQS samples servers: an empty answer may still leave messages


class QueueError(RuntimeError):
    """SQS refused or could not be reached; the message says what to check."""


class SqsDeadLetterQueue:
    def __init__(self, client: Any, queue_url: str, dlq_url: str):
        self.client = client
        self.queue_url = queue_url
        self.dlq_url = dlq_url

    def peek(self, limit: int) -> list[DeadLetter]:
        received = self._sweep(None, limit)
        self._release(received)
        return [_dead_letter(m) for m in received]

    def redrive(self, ids: set[str] | None) -> list[DeadLetter]:
        return self._act(ids, self._send_back)

    def delete(self, ids: set[str] | None) -> list[DeadLetter]:
        return self._act(ids, lambda chosen: None)

    def depths(self) -> QueueDepths:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        orders = self._call("get_queue_attributes", QueueUrl=self.queue_url, AttributeNames=names)["Attributes"]
        dlq = self._call("get_queue_attributes", QueueUrl=self.dlq_url, AttributeNames=names)["Attributes"]
        return QueueDepths(
            orders_visible=int(orders.get(names[0], 0)), orders_in_flight=int(orders.get(names[1], 0)),
            dead_letters=int(dlq.get(names[0], 0)) + int(dlq.get(names[1], 0)))

    def _act(self, ids: set[str] | None, before_delete: Callable[[list[dict]], None]) -> list[DeadLetter]:
        received = self._sweep(ids, MAX_SWEEP)
        chosen = [m for m in received if ids is None or m["MessageId"] in ids]
        try:
            for start in range(0, len(chosen), 10):
                batch = chosen[start:start + 10]
                before_delete(batch)
                self._entries("delete_message_batch", self.dlq_url, [
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])
        finally:
            self._release([m for m in received if m not in chosen])
        return [_dead_letter(m) for m in chosen]

    def _send_back(self, batch: list[dict]) -> None:
        self._entries("send_message_batch", self.queue_url, [
            {"Id": str(i), "MessageBody": m["Body"], **({"MessageAttributes": m["MessageAttributes"]}
                                                         if m.get("MessageAttributes") else {})}
            for i, m in enumerate(batch)])

    def _sweep(self, ids: set[str] | None, limit: int) -> list[dict]:
        """Receive (and hide) messages until the wanted ones are found, `limit` is reached, or the DLQ is empty."""
        received: dict[str, dict] = {}
        empty = 0
        while len(received) < limit and empty < EMPTY_RECEIVES:
            if ids is not None and ids <= received.keys():
                break
            answer = self._call("receive_message", QueueUrl=self.dlq_url, MaxNumberOfMessages=min(10, limit),
                                VisibilityTimeout=HOLD_SECONDS, WaitTimeSeconds=0,
                                AttributeNames=["All"], MessageAttributeNames=["All"])
            messages = [m for m in answer.get("Messages", []) if m["MessageId"] not in received]
            empty = 0 if messages else empty + 1
            received.update((m["MessageId"], m) for m in messages)
        return list(received.values())

    def _release(self, messages: list[dict]) -> None:
        for start in range(0, len(messages), 10):
            self._entries("change_message_visibility_batch", self.dlq_url, [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(messages[start:start + 10])])

    def _entries(self, operation: str, queue_url: str, entries: list[dict]) -> None:
        if not entries:
            return
        answer = self._call(operation, QueueUrl=queue_url, Entries=entries)
        if answer.get("Failed"):
            failed = answer["Failed"][0]
            raise QueueError(f"SQS {operation} failed for {len(answer['Failed'])} message(s):"
                             f" {failed.get('Code')}: {failed.get('Message')}; try again")

    def _call(self, operation: str, **params: Any) -> dict:
        try:
            return getattr(self.client, operation)(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise QueueError(f"SQS refused {operation} on {params.get('QueueUrl')}: {error.get('Code')}:"
                             f" {error.get('Message')}; check the queue URL and the task role") from None
        except BotoCoreError as exc:
            raise QueueError(f"cannot reach SQS for {operation}: {exc}; check AWS_ENDPOINT_URL_SQS or the"
                             " network route") from None


def _dead_letter(message: dict) -> DeadLetter:
    attributes = message.get("Attributes", {})
    sent = attributes.get("SentTimestamp")
    return DeadLetter(
        message_id=message["MessageId"], body=message["Body"],
        receive_count=int(attributes.get("ApproximateReceiveCount", 0)),
        sent_at=datetime.fromtimestamp(int(sent) / 1000, UTC) if sent else None,
        attributes={name: value.get("StringValue") for name, value in (message.get("MessageAttributes") or {}).items()},
    )
