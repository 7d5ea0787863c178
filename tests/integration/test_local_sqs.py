"""LocalSqs and SqsEventSourceMapping against a real moto SQS server on 127.0.0.1."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import SqsModel
from botocore.client import BaseClient

from support import eventually

from conveyor_tools.local.event_source import EventSourceStats, LambdaHandler, LocalLambdaContext, SqsEventSourceMapping
from conveyor_tools.local.sqs import LocalSqs, sqs_client


@pytest.fixture
def queue_names() -> tuple[str, str]:
    # moto's state is per process, so every test gets queues of its own.
    suffix = uuid.uuid4().hex[:8]
    return f"orders-{suffix}", f"orders-dlq-{suffix}"


@pytest.fixture
def fast_sqs(queue_names: tuple[str, str]) -> Iterator[LocalSqs]:
    """Messages come back one second after a failure and go to the DLQ after two receives."""
    queue_name, dlq_name = queue_names
    with LocalSqs(queue_name=queue_name, dlq_name=dlq_name, visibility_timeout=1, max_receive_count=2) as sqs:
        yield sqs


@pytest.fixture
def client(fast_sqs: LocalSqs) -> BaseClient:
    return sqs_client(fast_sqs.endpoint_url, fast_sqs.region)


def mapping_for(sqs: LocalSqs, handler: LambdaHandler, **options: Any) -> SqsEventSourceMapping:
    return SqsEventSourceMapping(
        queue_url=sqs.queue_url,
        queue_arn=sqs.queue_arn,
        region=sqs.region,
        endpoint_url=sqs.endpoint_url,
        handler=handler,
        **options,
    )


def queue_counts(client: BaseClient, queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages on the queue."""
    attributes = client.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def send(client: BaseClient, queue_url: str, *bodies: str) -> None:
    client.send_message_batch(
        QueueUrl=queue_url,
        Entries=[{"Id": str(index), "MessageBody": body} for index, body in enumerate(bodies)],
    )


def test_starting_twice_keeps_one_queue_and_one_dlq(queue_names: tuple[str, str]) -> None:
    queue_name, dlq_name = queue_names
    with LocalSqs(queue_name=queue_name, dlq_name=dlq_name, max_receive_count=3) as sqs:
        first = (sqs.endpoint_url, sqs.queue_url, sqs.queue_arn, sqs.dlq_url, sqs.dlq_arn)
        sqs.start()
        assert (sqs.endpoint_url, sqs.queue_url, sqs.queue_arn, sqs.dlq_url, sqs.dlq_arn) == first

        assert sqs.endpoint_url.startswith("http://127.0.0.1:") and sqs.port > 0
        client = sqs_client(sqs.endpoint_url, sqs.region)
        listed = client.list_queues(QueueNamePrefix="orders-")["QueueUrls"]
        assert sorted(url for url in listed if url.endswith(queue_names)) == sorted([sqs.queue_url, sqs.dlq_url])
        attributes = client.get_queue_attributes(QueueUrl=sqs.queue_url, AttributeNames=["All"])["Attributes"]
        assert json.loads(attributes["RedrivePolicy"]) == {"deadLetterTargetArn": sqs.dlq_arn, "maxReceiveCount": 3}
        assert attributes["VisibilityTimeout"] == "10"
        assert sqs.queue_arn == f"arn:aws:sqs:us-east-1:123456789012:{queue_name}"

    with pytest.raises(RuntimeError, match="not started"):
        sqs.queue_url  # noqa: B018 - the property refuses before start


def test_handler_gets_an_event_shaped_like_lambdas_and_a_context(fast_sqs: LocalSqs, client: BaseClient) -> None:
    received: list[tuple[dict[str, Any], LocalLambdaContext]] = []
    client.send_message(
        QueueUrl=fast_sqs.queue_url,
        MessageBody='{"order_id": "o-1"}',
        MessageAttributes={
            "type": {"DataType": "String", "StringValue": "order.created"},
            "attempt": {"DataType": "Number", "StringValue": "1"},
            "signature": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
        },
    )

    with mapping_for(fast_sqs, lambda event, context: received.append((event, context)), concurrency=1):
        eventually(lambda: len(received) == 1)
        eventually(lambda: queue_counts(client, fast_sqs.queue_url) == (0, 0))

    event, context = received[0]
    SqsModel.model_validate(event)  # the schema Powertools uses to parse real SQS events
    [record] = event["Records"]
    assert list(record) == [
        "messageId", "receiptHandle", "body", "attributes", "messageAttributes",
        "md5OfBody", "md5OfMessageAttributes", "eventSource", "eventSourceARN", "awsRegion",
    ]
    assert record["body"] == '{"order_id": "o-1"}'
    assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()
    assert record["receiptHandle"]
    assert uuid.UUID(record["messageId"])
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert {"SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp"} <= record["attributes"].keys()
    assert all(isinstance(value, str) for value in record["attributes"].values())
    assert record["messageAttributes"] == {
        "type": {"stringValue": "order.created", "stringListValues": [], "binaryListValues": [], "dataType": "String"},
        "attempt": {"stringValue": "1", "stringListValues": [], "binaryListValues": [], "dataType": "Number"},
        "signature": {
            "binaryValue": base64.b64encode(b"\x00\xff").decode(),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Binary",
        },
    }
    assert (record["eventSource"], record["eventSourceARN"], record["awsRegion"]) == (
        "aws:sqs", fast_sqs.queue_arn, "us-east-1",
    )

    assert context.function_name == "conveyor-worker"
    assert context.function_version == "$LATEST"
    assert context.invoked_function_arn == "arn:aws:lambda:us-east-1:123456789012:function:conveyor-worker"
    assert context.log_group_name == "/aws/lambda/conveyor-worker"
    assert "[$LATEST]" in context.log_stream_name
    assert uuid.UUID(context.aws_request_id).version == 4
    assert 0 < context.get_remaining_time_in_millis() <= 30_000


def test_partial_batch_failure_deletes_the_rest_and_redelivers_the_failed_message(
    fast_sqs: LocalSqs, client: BaseClient
) -> None:
    deliveries: list[tuple[str, str]] = []

    def fail_first_delivery_of_flaky(event: dict[str, Any], context: Any) -> dict[str, Any]:
        failures = []
        for record in event["Records"]:
            receive_count = record["attributes"]["ApproximateReceiveCount"]
            deliveries.append((record["body"], receive_count))
            if record["body"] == "flaky" and receive_count == "1":
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    send(client, fast_sqs.queue_url, "ok-1", "flaky", "ok-2")
    with mapping_for(fast_sqs, fail_first_delivery_of_flaky, concurrency=1) as mapping:
        eventually(lambda: ("flaky", "2") in deliveries)
        eventually(lambda: queue_counts(client, fast_sqs.queue_url) == (0, 0))

    assert sorted(deliveries) == [("flaky", "1"), ("flaky", "2"), ("ok-1", "1"), ("ok-2", "1")]
    assert mapping.stats.failures == 1
    assert mapping.stats.messages == 4


def test_a_message_that_always_fails_ends_in_the_dlq_without_blocking_others(
    fast_sqs: LocalSqs, client: BaseClient
) -> None:
    deliveries: list[str] = []

    def reject_poison(event: dict[str, Any], context: Any) -> dict[str, Any]:
        deliveries.extend(record["body"] for record in event["Records"])
        return {"batchItemFailures": [
            {"itemIdentifier": record["messageId"]} for record in event["Records"] if record["body"] == "poison"
        ]}

    send(client, fast_sqs.queue_url, "poison")
    with mapping_for(fast_sqs, reject_poison, concurrency=1):
        eventually(lambda: "poison" in deliveries)
        send(client, fast_sqs.queue_url, "good-1", "good-2", "good-3")
        eventually(lambda: queue_counts(client, fast_sqs.dlq_url) == (1, 0))
        eventually(lambda: queue_counts(client, fast_sqs.queue_url) == (0, 0))

    assert Counter(deliveries) == {"poison": fast_sqs.max_receive_count, "good-1": 1, "good-2": 1, "good-3": 1}
    # The good messages were handled while the poison message waited out its visibility timeout.
    second_poison_delivery = [index for index, body in enumerate(deliveries) if body == "poison"][1]
    assert all(deliveries.index(f"good-{number}") < second_poison_delivery for number in (1, 2, 3))
    [dead] = client.receive_message(QueueUrl=fast_sqs.dlq_url, AttributeNames=["All"])["Messages"]
    assert dead["Body"] == "poison"


def raise_error(event: dict[str, Any], context: Any) -> None:
    raise RuntimeError("database unavailable")


def report_unknown_message(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"batchItemFailures": [{"itemIdentifier": "not-in-this-batch"}]}


def outlive_the_function_timeout(event: dict[str, Any], context: LocalLambdaContext) -> None:
    time.sleep(context.get_remaining_time_in_millis() / 1000 + 0.05)


@pytest.mark.parametrize("failing_handler", [raise_error, report_unknown_message, outlive_the_function_timeout])
def test_a_failed_invocation_deletes_nothing(
    queue_names: tuple[str, str], caplog: pytest.LogCaptureFixture, failing_handler: LambdaHandler
) -> None:
    queue_name, dlq_name = queue_names
    logger = logging.getLogger("test.local_sqs.failures")
    # A long visibility timeout keeps the failed batch in flight, where the test can count it.
    with LocalSqs(queue_name=queue_name, dlq_name=dlq_name, visibility_timeout=30) as sqs:
        client = sqs_client(sqs.endpoint_url, sqs.region)
        send(client, sqs.queue_url, "a", "b")
        with caplog.at_level(logging.ERROR, logger=logger.name):
            with mapping_for(
                sqs, failing_handler, concurrency=1, function_timeout_seconds=0.3, logger=logger
            ) as mapping:
                eventually(lambda: mapping.stats.batches == 1)
        assert queue_counts(client, sqs.queue_url) == (0, 2)

    assert mapping.stats == EventSourceStats(batches=1, messages=2, failures=2)
    [error] = [record for record in caplog.records if record.name == logger.name]
    assert error.levelno == logging.ERROR
    assert "whole batch will be redelivered" in error.getMessage()


def test_pollers_invoke_the_handler_in_parallel(fast_sqs: LocalSqs, client: BaseClient) -> None:
    concurrency = 4
    lock = threading.Lock()
    in_flight = 0
    most_in_flight = 0
    handled: set[str] = set()
    poller_threads: set[int] = set()

    def slow_handler(event: dict[str, Any], context: Any) -> None:
        nonlocal in_flight, most_in_flight
        with lock:
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
            poller_threads.add(threading.get_ident())
        time.sleep(0.25)
        with lock:
            in_flight -= 1
            handled.update(record["body"] for record in event["Records"])

    bodies = [f"order-{number}" for number in range(2 * concurrency)]
    send(client, fast_sqs.queue_url, *bodies)
    with mapping_for(fast_sqs, slow_handler, batch_size=1, concurrency=concurrency) as mapping:
        eventually(lambda: handled == set(bodies))

    assert most_in_flight == concurrency
    assert len(poller_threads) == concurrency
    assert mapping.stats.batches >= len(bodies)


def test_stop_finishes_the_batch_in_flight_and_polls_no_more(fast_sqs: LocalSqs, client: BaseClient) -> None:
    handler_started = threading.Event()
    finished: list[str] = []

    def slow_handler(event: dict[str, Any], context: Any) -> None:
        handler_started.set()
        time.sleep(0.3)
        finished.extend(record["body"] for record in event["Records"])

    send(client, fast_sqs.queue_url, "in-flight")
    mapping = mapping_for(fast_sqs, slow_handler, concurrency=2, function_name="stop-test-worker").start()
    assert handler_started.wait(5)
    started_stopping = time.monotonic()
    mapping.stop(timeout=5)

    assert time.monotonic() - started_stopping < 3
    assert not mapping.running
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("stop-test-worker-poller")]
    assert finished == ["in-flight"]
    assert queue_counts(client, fast_sqs.queue_url) == (0, 0)

    # No poller thread is left (asserted above), so nothing can take it: no wait proves more.
    send(client, fast_sqs.queue_url, "after-stop")
    assert queue_counts(client, fast_sqs.queue_url) == (1, 0)
    assert mapping.stats.batches == 1
