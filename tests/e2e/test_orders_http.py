"""Orders through HTTP, SQS and the pollers, as a client sees them."""
from __future__ import annotations

import json
import logging
import time
import uuid

import boto3
import pytest
import requests
from conftest import ApiClient
from support import eventually, order_body

from conveyor.services.admin import import_catalog


@pytest.fixture
def skus(session_database) -> dict[str, str]:
    """Fresh SKUs for one test: plenty, scarce."""
    tag = uuid.uuid4().hex[:6].upper()
    names = {"plenty": f"P-{tag}", "scarce": f"S-{tag}"}
    import_catalog(session_database, [
        {"sku": names["plenty"], "name": "plenty", "currency": "USD", "unit_price": 1000, "stock": 1000},
        {"sku": names["scarce"], "name": "scarce", "currency": "USD", "unit_price": 700, "stock": 2},
    ])
    return names


def test_an_order_is_accepted_at_once_and_then_confirmed(api, skus):
    body = order_body([(skus["plenty"], 2)], 2000) | {"customer": {"name": "Ada", "email": "ada@example.com"}}

    response = api.post_order(body, key="first", **{"X-Correlation-Id": "corr-e2e-1"})

    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "PENDING"
    assert response.headers["Location"] == f"/orders/{accepted['order_id']}"
    assert response.headers["X-Correlation-Id"] == "corr-e2e-1"
    order = api.wait_settled(accepted["order_id"])
    assert order["status"] == "CONFIRMED"
    assert order["total_amount"] == 2000 and order["currency"] == "USD"
    assert order["lines"] == [{"line_no": 1, "sku": skus["plenty"], "quantity": 2, "unit_price": 1000, "line_total": 2000}]
    assert order["details"] == {"customer": {"name": "Ada", "email": "ada@example.com"}}
    assert order["accepted_at"] <= order["created_at"]


def processed(caplog: pytest.LogCaptureFixture, order_id: str) -> list[str]:
    """The outcomes the worker has logged for an order's messages so far."""
    return [record.outcome for record in list(caplog.records)
            if record.name == "conveyor-worker" and getattr(record, "order_id", None) == order_id]


def test_a_retried_post_returns_the_same_order_and_creates_no_second(api, skus, caplog):
    body = order_body([(skus["plenty"], 1)], 1000)

    first = api.post_order(body, key="retry-me").json()
    second = api.post_order(body, key="retry-me").json()
    api.wait_settled(first["order_id"])
    third = api.post_order(body, key="retry-me")

    assert first["order_id"] == second["order_id"] == third.json()["order_id"]
    assert third.status_code == 202 and third.json()["status"] == "CONFIRMED"
    # A retry the API answered PENDING was queued as a second message: wait until the worker has
    # handled it too, so that the one order below is what it left, not what it had not reached yet.
    messages = 2 if second["status"] == "PENDING" else 1
    outcomes = eventually(lambda: len(found := processed(caplog, first["order_id"])) >= messages and found,
                          what="the worker to handle every message of the order")
    # Both messages in one batch are one placement, so the second may read "confirmed" as well.
    assert set(outcomes) <= {"confirmed", "duplicate"}
    assert [o["order_id"] for o in api.get("/orders").json()["orders"]] == [first["order_id"]]


def test_a_reused_key_with_another_body_is_refused_once_the_order_is_known(api, skus):
    order_id = api.post_order(order_body([(skus["plenty"], 1)], 1000), key="k").json()["order_id"]
    api.wait_settled(order_id)

    response = api.post_order(order_body([(skus["plenty"], 3)], 3000), key="k")

    assert response.status_code == 409
    assert "Idempotency-Key" in response.json()["error"]["message"]
    assert api.get(f"/orders/{order_id}").json()["total_amount"] == 1000


def test_scarce_stock_rejects_with_a_reason(api, skus):
    order_id = api.post_order(order_body([(skus["scarce"], 3)], 2100), key="too-many").json()["order_id"]

    order = api.wait_settled(order_id)

    assert order["status"] == "REJECTED"
    assert order["rejection_reason"] == f"insufficient stock: {skus['scarce']}"


@pytest.mark.parametrize(
    ("body", "headers", "status", "field"),
    [
        ({"currency": "USD", "lines": [], "payment": {"provider": "stripe", "reference": "r", "amount": 0}}, {"key": "a"}, 422, "lines"),
        ({"currency": "USD", "lines": [{"sku": "A-1", "quantity": 0}], "payment": {"provider": "stripe", "reference": "r", "amount": 0}}, {"key": "b"}, 422, "lines[0].quantity"),
        ({"currency": "usd", "lines": [{"sku": "A-1", "quantity": 1}], "payment": {"provider": "stripe", "reference": "r", "amount": 0}}, {"key": "c"}, 422, "currency"),
        ({"currency": "USD", "lines": [{"sku": "A-1", "quantity": 1}], "payment": {"provider": "stripe", "reference": "r", "amount": 0}, "coupon": "x"}, {"key": "d"}, 422, "coupon"),
        ({"currency": "USD", "lines": [{"sku": "A-1", "quantity": 1}], "payment": {"provider": "stripe", "reference": "r", "amount": 0}}, {}, 400, "Idempotency-Key"),
        ("{not json", {"key": "e"}, 400, "body"),
        ("x" * (64 * 1024 + 1), {"key": "f"}, 413, "body"),
        (b'{"currency": "\xff\xfe"}', {"key": "g"}, 400, "body"),
        ('{"currency": ' + "[" * 5000 + "]" * 5000 + "}", {"key": "h"}, 400, "body"),
        ('{"currency": "USD", "lines": [{"sku": "A-1", "quantity": 1' + "0" * 400 + '}], '
         '"payment": {"provider": "stripe", "reference": "r", "amount": 0}}', {"key": "i"}, 422, "lines[0].quantity"),
        ({"currency": "USD", "lines": [{"sku": "A-1", "quantity": -3}], "payment": {"provider": "stripe", "reference": "r", "amount": 0}}, {"key": "j"}, 422, "lines[0].quantity"),
    ],
)
def test_bad_input_gets_a_json_error_naming_the_field(api, body, headers, status, field):
    response = api.post_order(body, **headers)

    assert response.status_code == status
    error = response.json()["error"]
    assert field in [f["field"] for f in error["fields"]]


@pytest.mark.parametrize("api_key", [None, "cvk_not_a_real_key"])
def test_requests_without_a_valid_api_key_are_refused(stack, api_key):
    stranger = ApiClient(stack.api_url, api_key)

    for response in (stranger.get("/orders"), stranger.post_order(order_body([("A-1", 1)], 1000), key="x"),
                     stranger.get(f"/orders/{uuid.uuid4()}")):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


def test_a_client_sees_only_its_own_orders(new_api_client, skus):
    alice, bob = new_api_client(), new_api_client()
    order_id = alice.post_order(order_body([(skus["plenty"], 1)], 1000), key="mine").json()["order_id"]
    alice.wait_settled(order_id)

    assert bob.get(f"/orders/{order_id}").status_code == 404
    assert bob.post(f"/orders/{order_id}/cancel").status_code == 404
    assert bob.get("/orders").json()["orders"] == []
    assert alice.wait_settled(order_id)["status"] == "CONFIRMED"
    assert bob.get("/orders/not-a-uuid").status_code == 404


def test_listing_pages_with_a_cursor_and_filters_by_status(api, skus):
    ids = [api.post_order(order_body([(skus["plenty"], 1)], 1000), key=f"page-{i}").json()["order_id"] for i in range(5)]
    rejected = api.post_order(order_body([(skus["plenty"], 1)], 1), key="bad-amount").json()["order_id"]
    for order_id in ids + [rejected]:
        api.wait_settled(order_id)

    seen, cursor = [], None
    while True:
        page = api.get("/orders", limit=2, status="CONFIRMED", **({"cursor": cursor} if cursor else {})).json()
        seen += [o["order_id"] for o in page["orders"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    assert [o["order_id"] for o in api.get("/orders", status="REJECTED").json()["orders"]] == [rejected]
    assert api.get("/orders", limit=0).status_code == 400
    assert api.get("/orders", cursor="garbage").status_code == 400
    assert api.get("/orders", status="LOST").status_code == 400


def test_a_cancel_releases_stock_and_a_cancel_sent_first_wins(api, skus, session_database):
    order_id = api.post_order(order_body([(skus["scarce"], 2)], 1400), key="cancel-me").json()["order_id"]
    api.wait_settled(order_id)

    assert api.post(f"/orders/{order_id}/cancel").status_code == 202
    assert api.wait_settled(order_id, until=lambda o: o["status"] == "CANCELLED")["status"] == "CANCELLED"
    stock = session_database.fetch_json(
        "SELECT json_build_array(stock_available, stock_reserved)::text FROM catalog WHERE sku = :sku",
        {"sku": skus["scarce"]},
    )
    assert stock == [2, 0]
    assert api.post(f"/orders/{order_id}/cancel").status_code == 202  # idempotent


def test_health_and_openapi(stack):
    assert requests.get(f"{stack.api_url}/health", timeout=5).json() == {"status": "ok"}
    document = requests.get(f"{stack.api_url}/openapi.json", timeout=5).json()
    assert document["components"]["schemas"]["OrderRequest"]["additionalProperties"] is False
    assert set(document["paths"]) == {"/orders", "/orders/{order_id}", "/orders/{order_id}/cancel", "/health"}


def test_a_poison_message_goes_to_the_dlq_without_blocking_others(stack, api, skus):
    sqs = boto3.session.Session().client("sqs", endpoint_url=stack.sqs.endpoint_url, region_name=stack.sqs.region)
    sqs.send_message(QueueUrl=stack.sqs.queue_url, MessageBody=json.dumps({"schema_version": 7, "type": "order.place"}))
    order_id = api.post_order(order_body([(skus["plenty"], 1)], 1000), key="after-poison").json()["order_id"]

    assert api.wait_settled(order_id)["status"] == "CONFIRMED"
    deadline = time.monotonic() + 20
    dead = []
    while time.monotonic() < deadline and not dead:
        dead = sqs.receive_message(QueueUrl=stack.sqs.dlq_url, WaitTimeSeconds=1).get("Messages", [])
    assert dead and json.loads(dead[0]["Body"])["schema_version"] == 7


def test_the_correlation_id_reaches_the_worker_logs(api, skus, caplog):
    correlation_id = f"corr-{uuid.uuid4()}"
    order_id = api.post_order(order_body([(skus["plenty"], 1)], 1000), key="traced",
                              **{"X-Correlation-Id": correlation_id}).json()["order_id"]
    api.wait_settled(order_id)

    # Format the captured records with the worker's own JSON formatter, as they are written.
    formatter = logging.getLogger("conveyor-worker").handlers[0].formatter
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.name == "conveyor-worker"]
    traced = [line for line in lines if line.get("correlation_id") == correlation_id]
    assert traced and traced[0]["order_id"] == order_id
    assert traced[0]["service"] == "conveyor-worker" and traced[0]["outcome"] == "confirmed"


def test_the_worker_publishes_embedded_metrics(api, skus, capfd):
    order_id = api.post_order(order_body([(skus["plenty"], 1)], 1000), key="metered").json()["order_id"]
    api.wait_settled(order_id)

    # The batch's metrics are flushed after its writes commit, so after the order reads as settled.
    written: list[str] = []

    def confirmed_documents() -> list[dict]:
        written.extend(capfd.readouterr().out.splitlines())
        return [document for line in written if '"_aws"' in line
                if "OrdersConfirmed" in (document := json.loads(line))]

    document = eventually(confirmed_documents, what="an EMF document with OrdersConfirmed")[-1]
    names = {m["Name"] for m in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert {"BatchSize", "OrdersConfirmed", "Retries", "AcceptedToSettledLatency"} <= names
    assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Conveyor"


def test_injection_strings_are_stored_verbatim_and_never_executed(api, skus, session_database):
    hostile = "'); DROP TABLE orders; -- <script>alert(1)</script> \u202e ${jndi:ldap://x}"
    reference = f"{hostile} {uuid.uuid4().hex}"  # a payment settles one order: each run pays anew
    body = order_body([(skus["plenty"], 1)], 1000, reference=reference) | {"customer": {"name": hostile}}

    order_id = api.post_order(body, key="injection").json()["order_id"]
    order = api.wait_settled(order_id)

    assert order["status"] == "CONFIRMED"
    assert order["payment"]["reference"] == reference
    assert order["details"]["customer"]["name"] == hostile
    assert session_database.fetch_json("SELECT to_json(count(*))::text FROM orders") >= 1
