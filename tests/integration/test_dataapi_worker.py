"""The real OrderStore and BatchProcessor through DataApiDatabase and the local Data API endpoint.

Round trips per batch and per GET, parity with the direct path, SQL errors by SQLSTATE,
migrations through the Data API, and a cluster paused for 20 s while 100 orders are in flight.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url
from support import Shop

from conveyor.adapters.order_store import OrderStore
from conveyor.dataapi.client import DataApiDatabase, retry_budget
from conveyor.dataapi.migrations import upgrade_through_data_api
from conveyor.errors import PermanentError, TransientError
from conveyor_tools.dataapi.server import LocalDataApi
from conveyor_tools.local.database import libpq_url
from conveyor_tools.local.event_source import LocalLambdaContext, SqsEventSourceMapping
from conveyor_tools.local.sqs import LocalSqs, sqs_client
from conveyor.services.processing import BatchProcessor, QueueRecord

CLUSTER = "arn:aws:rds:us-east-1:123456789012:cluster:conveyor-local"
SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:conveyor-local-AbCdEf"
logger = logging.getLogger("test-dataapi-worker")


@pytest.fixture
def endpoint(data_api_endpoint: LocalDataApi) -> LocalDataApi:
    return data_api_endpoint


@pytest.fixture
def data_api(endpoint: LocalDataApi, database_url: str) -> Iterator[DataApiDatabase]:
    endpoint.resume()
    database = DataApiDatabase(CLUSTER, SECRET, make_url(database_url).database)
    yield database
    database.dispose()


@pytest.fixture
def shop(database) -> Shop:
    return Shop(database, [("A-1", 1000, 10), ("B-2", 500, 5), ("C-3", 250, 100)])


def test_a_batch_of_new_orders_then_its_duplicates_cost_at_most_three_calls_each(shop, data_api):
    processor = BatchProcessor(OrderStore(data_api), logger)
    batch = [shop.place(f"k{i}", [("A-1", 1), ("C-3", 2)])[0] for i in range(5)]
    batch += [shop.place(f"r{i}", [("Z-9", 1)], amount=1)[0] for i in range(5)]

    data_api.reset_calls()
    first = processor.process(batch)
    new_orders = sum(data_api.calls.values())
    data_api.reset_calls()
    again = processor.process(batch)
    duplicates = sum(data_api.calls.values())

    assert first.outcomes == Counter({"confirmed": 5, "rejected": 5})
    assert again.outcomes == Counter({"duplicate": 10})
    assert new_orders == 2 <= 3  # read state, apply plan
    assert duplicates == 1 <= 3  # read state: nothing left to write
    assert shop.stock()["A-1"] == (5, 5)


def test_get_order_costs_one_call_and_matches_the_direct_path(shop, data_api):
    record, order_id = shop.place("k1", [("A-1", 2), ("B-2", 1)])
    BatchProcessor(OrderStore(data_api), logger).process([record])

    data_api.reset_calls()
    through_data_api = OrderStore(data_api).get_order(shop.client.id, order_id)

    assert data_api.calls == {"ExecuteStatement": 1}
    assert through_data_api == OrderStore(shop.database).get_order(shop.client.id, order_id)
    assert through_data_api["status"] == "CONFIRMED" and through_data_api["total_amount"] == 2500


def test_sql_errors_are_recognised_by_sqlstate(shop, data_api):
    record, order_id = shop.place("k1", [("A-1", 1)])
    BatchProcessor(OrderStore(data_api), logger).process([record])

    with pytest.raises(PermanentError) as duplicate:
        data_api.execute("INSERT INTO clients (id, name, api_key_hash) VALUES (CAST(:id AS uuid), :name, 'h')",
                         {"id": str(shop.client.id), "name": "another"})
    with pytest.raises(PermanentError, match="append-only") as append_only:
        data_api.execute("DELETE FROM order_events")

    assert duplicate.value.sqlstate == "23505" and not isinstance(duplicate.value, TransientError)
    assert append_only.value.sqlstate == "42501"
    assert shop.events(order_id) == [(None, "CONFIRMED")]


def test_migrations_apply_through_the_data_api_as_they_do_directly(endpoint, database_url):
    name = f"conveyor_dataapi_migrations_{uuid.uuid4().hex[:8]}"
    server = libpq_url(database_url)
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        endpoint.pause(resume_seconds=0.5)  # the first call of a deploy often finds the cluster asleep
        upgrade_through_data_api(CLUSTER, SECRET, name)
        schema = """
            SELECT table_name, column_name, data_type, is_nullable, column_default
            FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2"""
        with psycopg.connect(server, dbname=name) as migrated, psycopg.connect(server) as reference:
            assert migrated.execute(schema).fetchall() == reference.execute(schema).fetchall()
            version = "SELECT version_num FROM alembic_version"
            assert migrated.execute(version).fetchall() == reference.execute(version).fetchall()
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_cluster_paused_for_20s_with_100_orders_in_flight_loses_and_doubles_none(database, endpoint, data_api):
    shop = Shop(database, [("A-1", 1000, 1000), ("B-2", 500, 1000)])
    orders = [shop.place(f"order-{i}", [("A-1", 1), ("B-2", 2)]) for i in range(100)]
    processor = BatchProcessor(OrderStore(data_api), logger)

    def worker(event: dict[str, Any], context: LocalLambdaContext) -> dict[str, Any]:
        """worker/app.py's handler, with retries bounded by the invocation's remaining time."""
        records = [QueueRecord(message_id=record["messageId"], body=record["body"],
                               receive_count=int(record["attributes"]["ApproximateReceiveCount"]))
                   for record in event["Records"]]
        with retry_budget(context.get_remaining_time_in_millis() / 1000 - 2):
            result = processor.process(records)
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in result.failed_message_ids]}

    suffix = uuid.uuid4().hex[:8]
    # Lambda's rule: the queue's visibility timeout is longer than the function's timeout.
    with LocalSqs(queue_name=f"orders-{suffix}", dlq_name=f"orders-dlq-{suffix}", visibility_timeout=60,
                  max_receive_count=3) as sqs:
        client = sqs_client(sqs.endpoint_url, sqs.region)
        endpoint.reset_calls()
        endpoint.pause(resume_seconds=20)
        started = time.monotonic()
        for start in range(0, len(orders), 10):
            client.send_message_batch(QueueUrl=sqs.queue_url, Entries=[
                {"Id": str(index), "MessageBody": record.body} for index, (record, _) in
                enumerate(orders[start:start + 10])])
        mapping = SqsEventSourceMapping(queue_url=sqs.queue_url, queue_arn=sqs.queue_arn, region=sqs.region,
                                        endpoint_url=sqs.endpoint_url, handler=worker, concurrency=4,
                                        function_timeout_seconds=30)
        with mapping:
            deadline = time.monotonic() + 60
            while mapping.stats.messages - mapping.stats.failures < len(orders) and time.monotonic() < deadline:
                time.sleep(0.2)
        settled = time.monotonic() - started
        dead_letters = client.get_queue_attributes(QueueUrl=sqs.dlq_url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]

    counts = database.fetch_json(
        "SELECT json_build_object('orders', (SELECT count(*) FROM orders),"
        " 'confirmed', (SELECT count(*) FROM orders WHERE status = 'CONFIRMED'),"
        " 'events', (SELECT count(*) FROM order_events),"
        " 'orders_with_one_event', (SELECT count(*) FROM (SELECT order_id FROM order_events"
        "   GROUP BY order_id HAVING count(*) = 1) once))::text"
    )
    assert counts == {"orders": 100, "confirmed": 100, "events": 100, "orders_with_one_event": 100}
    assert shop.stock() == {"A-1": (900, 100), "B-2": (800, 200)}
    assert (mapping.stats.messages, mapping.stats.failures) == (100, 0)  # none redelivered, none failed
    assert set(dead_letters.values()) == {"0"}
    assert settled >= 20
    assert endpoint.calls["ExecuteStatement"] > 2 * 10  # the paused cluster refused calls that were retried
