"""When the database or the queue is down, the API says so and loses nothing: 503, retry later."""
from __future__ import annotations

import json
import uuid

import pytest
from chalice.test import Client
from support import order_body

from conveyor import bootstrap
from conveyor_tools.local.stack import load_chalice_app
from conveyor.services.admin import create_client

UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing listens here


@pytest.fixture
def api_app(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield load_chalice_app("api").app
    bootstrap.reset()


def post_order(client: Client, api_key: str):
    return client.http.post(
        "/orders",
        headers={"Content-Type": "application/json", "X-Api-Key": api_key, "Idempotency-Key": str(uuid.uuid4())},
        body=json.dumps(order_body([("A-1", 1)], 1000)),
    )


def test_a_database_outage_answers_503_with_retry_after(api_app, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:9/conveyor?connect_timeout=2")
    monkeypatch.setenv("ORDERS_QUEUE_URL", f"{UNREACHABLE}/000000000000/conveyor-orders")
    bootstrap.reset()

    with Client(api_app) as client:
        response = post_order(client, "cvk_any")

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert json.loads(response.body)["error"]["code"] == "unavailable"


def test_a_queue_outage_answers_503_so_the_client_retries(api_app, monkeypatch, database_url, session_database):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ORDERS_QUEUE_URL", f"{UNREACHABLE}/000000000000/conveyor-orders")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", UNREACHABLE)
    bootstrap.reset()
    client_key = create_client(session_database, f"outage-{uuid.uuid4().hex[:6]}").api_key

    with Client(api_app) as client:
        response = post_order(client, client_key)

    assert response.status_code == 503
    assert "retry with the same Idempotency-Key" in json.loads(response.body)["error"]["message"]
