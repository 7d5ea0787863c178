"""The DLQ adapter and the dead-letter service against moto's SQS server, and `conveyor dlq` on top."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from conveyor.adapters.dead_letter_queue import QueueError, SqsDeadLetterQueue
from conveyor_tools.local.sqs import LocalSqs, sqs_client
from conveyor.services import audit, dead_letters
from conveyor.services.access import Actor, Forbidden, Role
from conveyor.services.dead_letters import FailureLog

OPERATOR = Actor(name="ops", role=Role.OPERATOR)
VIEWER = Actor(name="watcher", role=Role.VIEWER)
ADMIN = Actor(name="boss", role=Role.ADMIN)


@pytest.fixture
def sqs() -> Iterator[LocalSqs]:
    suffix = uuid.uuid4().hex[:8]
    with LocalSqs(queue_name=f"orders-{suffix}", dlq_name=f"orders-dlq-{suffix}") as running:
        yield running


@pytest.fixture
def client(sqs):
    return sqs_client(sqs.endpoint_url, sqs.region)


@pytest.fixture
def dlq(sqs, client) -> SqsDeadLetterQueue:
    return SqsDeadLetterQueue(client, sqs.queue_url, sqs.dlq_url)


def dead_letter(client, sqs, body: str) -> str:
    """A message in the DLQ, with a correlation id attribute as the API sends."""
    return client.send_message(QueueUrl=sqs.dlq_url, MessageBody=body, MessageAttributes={
        "correlation_id": {"DataType": "String", "StringValue": "corr-1"}})["MessageId"]


def drain(client, queue_url: str) -> list[dict]:
    received = []
    while messages := client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                             MessageAttributeNames=["All"]).get("Messages", []):
        received += messages
    return received


def test_listing_shows_bodies_and_recorded_reasons_and_leaves_the_messages(dlq, client, sqs, database):
    ids = [dead_letter(client, sqs, json.dumps({"n": n})) for n in range(13)]
    FailureLog(database).record({ids[0]: "not a valid order message"}, {ids[0]: 5})
    listed = dead_letters.list_dead_letters(dlq, database, VIEWER)
    assert sorted(m["message_id"] for m in listed) == sorted(ids)
    first = next(m for m in listed if m["message_id"] == ids[0])
    assert first["reason"] == "not a valid order message" and json.loads(first["body"]) == {"n": 0}
    assert dlq.depths().dead_letters == 13  # released: all visible again
    assert len(dead_letters.list_dead_letters(dlq, database, VIEWER)) == 13


def test_redrive_moves_the_chosen_messages_to_the_orders_queue_with_their_attributes(dlq, client, sqs, database):
    keep, move = dead_letter(client, sqs, '{"keep": 1}'), dead_letter(client, sqs, '{"move": 1}')
    with pytest.raises(Forbidden):
        dead_letters.redrive(dlq, database, VIEWER, {move})
    assert dead_letters.redrive(dlq, database, OPERATOR, {move}, "fixed the catalog") == [move]
    [back] = drain(client, sqs.queue_url)
    assert back["Body"] == '{"move": 1}' and back["MessageAttributes"]["correlation_id"]["StringValue"] == "corr-1"
    assert [m.message_id for m in dlq.peek(10)] == [keep]
    [entry] = audit.entries(database, ADMIN, target="queue:orders-dlq")
    assert entry["action"] == "dlq.redrive" and entry["before"] == {"message_ids": [move]}


def test_redrive_all_empties_the_dlq(dlq, client, sqs, database):
    for n in range(25):
        dead_letter(client, sqs, json.dumps({"n": n}))
    assert len(dead_letters.redrive(dlq, database, OPERATOR, None)) == 25
    assert dlq.depths().dead_letters == 0
    assert len(drain(client, sqs.queue_url)) == 25


def test_delete_needs_a_reason_and_keeps_the_body_in_the_audit_log(dlq, client, sqs, database):
    gone = dead_letter(client, sqs, '{"bad": true}')
    with pytest.raises(ValueError, match="reason"):
        dead_letters.delete(dlq, database, OPERATOR, {gone}, "")
    assert dead_letters.delete(dlq, database, OPERATOR, {gone}, "test data") == [gone]
    assert dlq.peek(10) == []
    [entry] = audit.entries(database, ADMIN, target="queue:orders-dlq")
    assert entry["before"]["messages"] == [{"message_id": gone, "body": '{"bad": true}'}]
    assert dead_letters.delete(dlq, database, OPERATOR, {"no-such-id"}, "nothing") == []


def test_an_unknown_queue_is_reported_with_what_to_check(client, database):
    missing = SqsDeadLetterQueue(client, "http://127.0.0.1:1/q", "http://127.0.0.1:1/dlq")
    with pytest.raises(QueueError, match="AWS_ENDPOINT_URL_SQS|queue URL"):
        missing.depths()


def test_the_cli_lists_and_redrives(client, sqs, database, database_url):
    message_id = dead_letter(client, sqs, '{"type": "nonsense"}')
    FailureLog(database).record({message_id: "not a valid order message"}, {message_id: 5})
    env = {**os.environ, "DATABASE_URL": database_url, "ORDERS_QUEUE_URL": sqs.queue_url,
           "ORDERS_DLQ_URL": sqs.dlq_url, "AWS_ENDPOINT_URL_SQS": sqs.endpoint_url, "AWS_DEFAULT_REGION": sqs.region,
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}

    def conveyor(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "conveyor_tools.cli", "dlq", *args], env=env, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)

    listed = conveyor("list")
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    assert json.loads(line)["reason"] == "not a valid order message"
    refused = conveyor("delete", message_id, "--reason", "junk")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert conveyor("redrive").returncode == 2  # neither ids nor --all
    redriven = conveyor("redrive", message_id, "--reason", "retry")
    assert redriven.returncode == 0 and "redrove 1" in redriven.stderr
    assert len(drain(client, sqs.queue_url)) == 1


def test_the_cli_creates_a_console_user_with_the_password_from_stdin(database, database_url):
    env = {**os.environ, "DATABASE_URL": database_url}
    command = [sys.executable, "-m", "conveyor_tools.cli", "console", "users", "create", "olga", "--role", "operator"]
    made = subprocess.run(command, env=env, input="a strong enough password\n", capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    from conveyor.services.users import authenticate

    assert authenticate(database, "olga", "a strong enough password", "127.0.0.1").role == Role.OPERATOR
    weak = subprocess.run(command[:-3] + ["weak", "--role", "viewer"], env=env, input="short\n",
                          capture_output=True, text=True, timeout=60)
    assert weak.returncode == 2 and "at least 12" in weak.stderr
