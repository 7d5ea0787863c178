"""Plays Lambda's SQS event source mapping locally: poll a queue, invoke a handler, delete what succeeded.

It follows the mapping's ReportBatchItemFailures semantics: a handler that returns
{"batchItemFailures": [{"itemIdentifier": message_id}, ...]} keeps those messages for
redelivery after the visibility timeout and the rest of the batch is deleted; a handler that
raises, runs past its timeout or returns a response Lambda would reject keeps the whole batch.
"""
from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, UTC
from types import TracebackType
from typing import Any

from botocore.client import BaseClient

from conveyor_tools.local.sqs import sqs_client

LambdaHandler = Callable[[dict[str, Any], Any], Any]

# SQS caps both ReceiveMessage and DeleteMessageBatch at ten messages.
SQS_MAX_BATCH = 10
# After a failed receive or delete, wait this long so a stopped server is not hammered.
ERROR_BACKOFF_SECONDS = 1.0


@dataclass(frozen=True)
class EventSourceStats:
    batches: int = 0  # handler invocations
    messages: int = 0  # messages handed to the handler, redeliveries included
    failures: int = 0  # messages left on the queue for redelivery after an invocation


class LocalLambdaContext:
    """The attributes and method of the Python runtime's context object that handlers use."""

    def __init__(
        self,
        *,
        function_name: str,
        invoked_function_arn: str,
        log_stream_name: str,
        memory_limit_in_mb: int,
        timeout_seconds: float,
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = invoked_function_arn
        # The Python runtime passes the memory size on from an environment variable, as a string.
        self.memory_limit_in_mb = str(memory_limit_in_mb)
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = log_stream_name
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class SqsEventSourceMapping:
    """Polls one queue with `concurrency` threads and invokes `handler` like Lambda's SQS trigger."""

    def __init__(
        self,
        *,
        queue_url: str,
        queue_arn: str,
        region: str,
        handler: LambdaHandler,
        batch_size: int = 10,
        concurrency: int = 4,
        wait_time_seconds: int = 1,
        endpoint_url: str | None = None,
        function_name: str = "conveyor-worker",
        function_timeout_seconds: float = 30.0,
        memory_limit_in_mb: int = 128,
        logger: logging.Logger | None = None,
    ) -> None:
        if not 1 <= batch_size <= SQS_MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {SQS_MAX_BATCH}, not {batch_size}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.region = region
        self.handler = handler
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.wait_time_seconds = wait_time_seconds
        self.function_name = function_name
        self.function_timeout_seconds = function_timeout_seconds
        self.memory_limit_in_mb = memory_limit_in_mb
        self.logger = logger or logging.getLogger(__name__)
        account_id = queue_arn.split(":")[4]
        self.function_arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        # boto3 clients are thread-safe; one pooled connection per poller.
        self._client: BaseClient = sqs_client(endpoint_url, region, max_pool_connections=concurrency)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stats = EventSourceStats()
        self._stats_lock = threading.Lock()

    @property
    def stats(self) -> EventSourceStats:
        with self._stats_lock:
            return self._stats

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def start(self) -> SqsEventSourceMapping:
        if self.running:
            raise RuntimeError("the event source mapping is already running")
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._poll, name=f"{self.function_name}-poller-{index}", daemon=True)
            for index in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()
        self.logger.info(
            "polling %s for %s with %d pollers, batches of up to %d",
            self.queue_arn, self.function_name, self.concurrency, self.batch_size,
        )
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop polling; batches already received are handled and settled before the pollers exit."""
        self._stopping.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        still_running = [thread.name for thread in self._threads if thread.is_alive()]
        if still_running:
            self.logger.warning("pollers still running after %ss: %s", timeout, ", ".join(still_running))

    def __enter__(self) -> SqsEventSourceMapping:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _poll(self) -> None:
        # Each poller stands for one Lambda execution environment, which has its own log stream.
        log_stream_name = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        while not self._stopping.is_set():
            try:
                messages = self._client.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=self.batch_size,
                    WaitTimeSeconds=self.wait_time_seconds,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=["All"],
                ).get("Messages", [])
                if messages:
                    self._invoke(messages, log_stream_name)
            except Exception:
                self.logger.exception("receiving from or deleting on %s failed; retrying", self.queue_url)
                self._stopping.wait(ERROR_BACKOFF_SECONDS)

    def _invoke(self, messages: list[dict[str, Any]], log_stream_name: str) -> None:
        event = {"Records": [self._record(message) for message in messages]}
        context = LocalLambdaContext(
            function_name=self.function_name,
            invoked_function_arn=self.function_arn,
            log_stream_name=log_stream_name,
            memory_limit_in_mb=self.memory_limit_in_mb,
            timeout_seconds=self.function_timeout_seconds,
        )
        message_ids = [message["MessageId"] for message in messages]
        try:
            response = self.handler(event, context)
        except Exception:
            self.logger.exception(
                "%s raised on a batch of %d (request %s); the whole batch will be redelivered",
                self.function_name, len(messages), context.aws_request_id,
            )
            failed_ids = set(message_ids)
        else:
            failed_ids = self._failed_message_ids(response, message_ids, context.aws_request_id)
        if context.get_remaining_time_in_millis() == 0:
            self.logger.error(
                "%s ran past its %ss timeout (request %s), where Lambda would stop it; "
                "the whole batch will be redelivered",
                self.function_name, self.function_timeout_seconds, context.aws_request_id,
            )
            failed_ids = set(message_ids)
        with self._stats_lock:
            self._stats = EventSourceStats(
                batches=self._stats.batches + 1,
                messages=self._stats.messages + len(messages),
                failures=self._stats.failures + len(failed_ids),
            )
        self._delete([message for message in messages if message["MessageId"] not in failed_ids])

    def _failed_message_ids(self, response: Any, message_ids: Sequence[str], request_id: str) -> set[str]:
        """Read a ReportBatchItemFailures response; anything Lambda would reject fails the whole batch."""
        if response is None:
            return set()
        if isinstance(response, Mapping):
            failures = response.get("batchItemFailures")
            if failures is None or failures == []:
                return set()
            if isinstance(failures, list):
                identifiers = {_item_identifier(failure) for failure in failures}
                if identifiers <= set(message_ids):
                    return identifiers
        self.logger.error(
            "%s returned an invalid batch response %r (request %s); the whole batch will be redelivered",
            self.function_name, response, request_id,
        )
        return set(message_ids)

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        for start in range(0, len(messages), SQS_MAX_BATCH):
            chunk = messages[start:start + SQS_MAX_BATCH]
            result = self._client.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                    for index, message in enumerate(chunk)
                ],
            )
            for failure in result.get("Failed", []):
                message_id = chunk[int(failure["Id"])]["MessageId"]
                self.logger.warning("could not delete message %s: %s", message_id, failure.get("Message"))

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        """One record of Lambda's SQS event, which renames the SQS API's keys to lowerCamelCase."""
        record: dict[str, Any] = {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": dict(message.get("Attributes", {})),
            "messageAttributes": {
                name: _lambda_message_attribute(value)
                for name, value in message.get("MessageAttributes", {}).items()
            },
            "md5OfBody": message["MD5OfBody"],
        }
        if "MD5OfMessageAttributes" in message:
            record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
        record.update({"eventSource": "aws:sqs", "eventSourceARN": self.queue_arn, "awsRegion": self.region})
        return record


def _item_identifier(failure: object) -> str:
    """The failure's itemIdentifier, or "" (never a message id) when it has none."""
    identifier = failure.get("itemIdentifier") if isinstance(failure, Mapping) else None
    return identifier if isinstance(identifier, str) else ""


def _lambda_message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    # boto3 decodes binary values to bytes; the Lambda event carries them base64-encoded.
    attribute: dict[str, Any] = {}
    if "StringValue" in value:
        attribute["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        attribute["binaryValue"] = _base64(value["BinaryValue"])
    attribute["stringListValues"] = list(value.get("StringListValues", []))
    attribute["binaryListValues"] = [_base64(item) for item in value.get("BinaryListValues", [])]
    attribute["dataType"] = value["DataType"]
    return attribute


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
