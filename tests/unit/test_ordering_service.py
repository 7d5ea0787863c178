"""OrderService and Authenticator against in-memory fakes of the store and the queue, with the API's
request parsing (conveyor.api_requests) in front of the service as api/app.py has it."""
from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fakes import InMemoryOrderStore, InMemoryQueue

from conveyor import api_requests
from conveyor.api_requests import DEFAULT_PAGE, MAX_IDEMPOTENCY_KEY
from conveyor.domain.orders import order_id_for, request_fingerprint
from conveyor.schemas import CancelOrderMessage, InvalidRequest, PlaceOrderMessage, QueueMessage
from conveyor.services.ordering import (
    Authenticator,
    Client,
    Conflict,
    NotFound,
    OrderService,
    Unauthorized,
    hash_api_key,
)

ALICE = Client(id=uuid.UUID("00000000-0000-4000-8000-0000000000a1"), name="alice")
BOB = Client(id=uuid.UUID("00000000-0000-4000-8000-0000000000b0"), name="bob")
NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)

BODY = {
    "currency": "EUR",
    "lines": [{"sku": "A-1", "quantity": 2}],
    "payment": {"provider": "adyen", "reference": "psp-1", "amount": 1000},
}


def raw(document: dict[str, Any] = BODY) -> bytes:
    return json.dumps(document).encode()


class Api:
    """What api/app.py's routes do between a request and its answer, without Chalice."""

    def __init__(self, service: OrderService):
        self.service = service

    def place_order(self, client: Client, key: str | None, body: bytes | None, correlation_id: str) -> dict:
        return self.service.place_order(client, api_requests.new_order(key, body), correlation_id)

    def request_cancel(self, client: Client, order_id: str, correlation_id: str) -> dict:
        return self.service.request_cancel(client, api_requests.order_id(order_id), correlation_id)

    def get_order(self, client: Client, order_id: str) -> dict:
        return self.service.get_order(client, api_requests.order_id(order_id))

    def list_orders(self, client: Client, status: str | None, limit: str | None, cursor: str | None) -> dict:
        page = self.service.list_orders(client, api_requests.orders_query(status, limit, cursor))
        return {"orders": page.orders, "next_cursor": api_requests.next_cursor(page.next_after)}


@pytest.fixture
def store() -> InMemoryOrderStore:
    return InMemoryOrderStore()


@pytest.fixture
def queue() -> InMemoryQueue:
    return InMemoryQueue()


@pytest.fixture
def service(store: InMemoryOrderStore, queue: InMemoryQueue) -> Api:
    return Api(OrderService(store, queue, now=lambda: NOW))


# --- place_order --------------------------------------------------------------------------


def test_place_order_queues_one_versioned_message(service, queue):
    answer = service.place_order(ALICE, "key-1", raw(), "corr-1")
    order_id = order_id_for(ALICE.id, "key-1")
    assert answer == {"order_id": str(order_id), "status": "PENDING"}
    [(message, correlation_id)] = queue.sent
    assert correlation_id == "corr-1"
    assert message["schema_version"] == 1
    assert message["type"] == "order.place"
    assert message["order_id"] == str(order_id)
    assert message["client_id"] == str(ALICE.id)
    assert message["idempotency_key"] == "key-1"
    assert message["order"] == BODY
    assert message["fingerprint"] == request_fingerprint(BODY)
    assert message["accepted_at"] == NOW.isoformat()
    # the worker accepts exactly what the API sends
    parsed = QueueMessage.validate_python(message)
    assert isinstance(parsed, PlaceOrderMessage)
    assert parsed.order_id == order_id


def test_same_body_with_reordered_keys_has_the_same_fingerprint(service, queue):
    reordered = {"payment": BODY["payment"], "lines": BODY["lines"], "currency": BODY["currency"]}
    service.place_order(ALICE, "key-1", raw(), "c1")
    service.place_order(ALICE, "key-2", json.dumps(reordered, indent=2).encode(), "c2")
    assert queue.sent[0][0]["fingerprint"] == queue.sent[1][0]["fingerprint"]


@pytest.mark.parametrize(
    "key",
    [None, "", "k" * (MAX_IDEMPOTENCY_KEY + 1), "line\nbreak", "tab\there"],
    ids=["missing", "empty", "overlong", "newline", "tab"],
)
def test_a_bad_idempotency_key_is_refused_naming_the_header(service, queue, key):
    with pytest.raises(InvalidRequest) as info:
        service.place_order(ALICE, key, raw(), "c")
    assert info.value.status == 400
    assert [f.field for f in info.value.fields] == ["Idempotency-Key"]
    assert queue.sent == []


def test_the_longest_idempotency_key_is_accepted(service, queue):
    service.place_order(ALICE, "k" * MAX_IDEMPOTENCY_KEY, raw(), "c")
    assert len(queue.sent) == 1


def test_an_invalid_body_is_refused_without_queueing(service, queue):
    with pytest.raises(InvalidRequest) as info:
        service.place_order(ALICE, "key-1", raw({**BODY, "lines": []}), "c")
    assert info.value.status == 422
    assert queue.sent == []


def test_a_retry_of_a_known_order_returns_the_same_id_without_sending(service, store, queue):
    first = service.place_order(ALICE, "key-1", raw(), "c1")
    store.add(ALICE.id, uuid.UUID(first["order_id"]), "CONFIRMED", queue.sent[0][0]["fingerprint"])
    again = service.place_order(ALICE, "key-1", raw(), "c2")
    assert again == {"order_id": first["order_id"], "status": "CONFIRMED"}
    assert len(queue.sent) == 1


def test_a_retry_before_the_worker_ran_is_queued_again_with_the_same_id(service, queue):
    first = service.place_order(ALICE, "key-1", raw(), "c1")
    again = service.place_order(ALICE, "key-1", raw(), "c2")
    assert again == first
    assert [m["order_id"] for m, _ in queue.sent] == [first["order_id"]] * 2
    assert queue.sent[0][0]["fingerprint"] == queue.sent[1][0]["fingerprint"]


def test_the_same_key_with_a_different_body_is_a_conflict(service, store, queue):
    first = service.place_order(ALICE, "key-1", raw(), "c1")
    store.add(ALICE.id, uuid.UUID(first["order_id"]), "CONFIRMED", queue.sent[0][0]["fingerprint"])
    changed = {**BODY, "payment": {**BODY["payment"], "amount": 999}}
    with pytest.raises(Conflict, match="key-1"):
        service.place_order(ALICE, "key-1", raw(changed), "c2")
    assert len(queue.sent) == 1


def test_the_same_key_used_by_another_client_is_a_different_order(service, store, queue):
    alice = service.place_order(ALICE, "key-1", raw(), "c1")
    store.add(ALICE.id, uuid.UUID(alice["order_id"]), "CONFIRMED", "some-other-fingerprint")
    bob = service.place_order(BOB, "key-1", raw(), "c2")
    assert bob["order_id"] != alice["order_id"]
    assert bob["status"] == "PENDING"
    assert len(queue.sent) == 2


def test_an_order_behind_a_cancel_placeholder_is_still_queued(service, store, queue):
    order_id = order_id_for(ALICE.id, "key-1")
    store.add(ALICE.id, order_id, "CANCELLED", None)
    answer = service.place_order(ALICE, "key-1", raw(), "c1")
    assert answer == {"order_id": str(order_id), "status": "PENDING"}
    assert len(queue.sent) == 1


# --- request_cancel -----------------------------------------------------------------------


def test_cancel_of_a_rejected_order_is_a_conflict(service, store, queue):
    order_id = order_id_for(ALICE.id, "key-1")
    store.add(ALICE.id, order_id, "REJECTED", "fp")
    with pytest.raises(Conflict):
        service.request_cancel(ALICE, str(order_id), "c")
    assert queue.sent == []


def test_cancel_of_a_cancelled_order_sends_nothing(service, store, queue):
    order_id = order_id_for(ALICE.id, "key-1")
    store.add(ALICE.id, order_id, "CANCELLED", "fp")
    assert service.request_cancel(ALICE, str(order_id), "c") == {"order_id": str(order_id), "status": "CANCELLED"}
    assert queue.sent == []


def test_cancel_of_a_confirmed_order_is_queued(service, store, queue):
    order_id = order_id_for(ALICE.id, "key-1")
    store.add(ALICE.id, order_id, "CONFIRMED", "fp")
    answer = service.request_cancel(ALICE, str(order_id), "corr-9")
    assert answer == {"order_id": str(order_id), "status": "CONFIRMED", "cancellation": "queued"}
    [(message, correlation_id)] = queue.sent
    assert message["type"] == "order.cancel" and correlation_id == "corr-9"


def test_cancel_of_an_unknown_order_sends_a_cancel_message(service, queue):
    order_id = order_id_for(ALICE.id, "not-yet-processed")
    answer = service.request_cancel(ALICE, str(order_id), "corr-2")
    assert answer == {"order_id": str(order_id), "status": "PENDING", "cancellation": "queued"}
    [(message, correlation_id)] = queue.sent
    assert correlation_id == "corr-2"
    assert message == {
        "schema_version": 1,
        "type": "order.cancel",
        "order_id": str(order_id),
        "client_id": str(ALICE.id),
        "requested_at": NOW.isoformat(),
    }
    assert isinstance(QueueMessage.validate_python(message), CancelOrderMessage)


def test_cancel_with_a_malformed_order_id_is_not_found(service, queue):
    with pytest.raises(NotFound):
        service.request_cancel(ALICE, "not-a-uuid", "c")
    assert queue.sent == []


# --- get_order ----------------------------------------------------------------------------


def test_get_order_returns_the_clients_own_order(service, store):
    order_id = order_id_for(ALICE.id, "key-1")
    store.add(ALICE.id, order_id, "CONFIRMED", "fp")
    assert service.get_order(ALICE, str(order_id))["status"] == "CONFIRMED"


def test_get_order_of_another_clients_order_is_not_found(service, store):
    order_id = order_id_for(ALICE.id, "key-1")
    store.add(ALICE.id, order_id, "CONFIRMED", "fp")
    with pytest.raises(NotFound):
        service.get_order(BOB, str(order_id))


@pytest.mark.parametrize("order_id", ["nope", "", "1234", str(uuid.uuid4())])
def test_get_order_of_a_missing_or_malformed_id_is_not_found(service, order_id):
    with pytest.raises(NotFound):
        service.get_order(ALICE, order_id)


# --- list_orders --------------------------------------------------------------------------


def _fill(store: InMemoryOrderStore, client: Client, count: int, status: str = "CONFIRMED") -> list[str]:
    ids = []
    for number in range(count):
        order_id = order_id_for(client.id, f"{status}-{number}")
        # two orders share each timestamp, so the id must break ties
        store.add(client.id, order_id, status, "fp", created_at=NOW + timedelta(seconds=number // 2))
        ids.append(str(order_id))
    return ids


def test_list_orders_pages_through_everything_exactly_once(service, store):
    mine = _fill(store, ALICE, 7)
    _fill(store, BOB, 3)
    seen, cursor, pages = [], None, 0
    while True:
        page = service.list_orders(ALICE, None, "3", cursor)
        pages += 1
        seen += [o["order_id"] for o in page["orders"]]
        if page["next_cursor"] is None:
            assert len(page["orders"]) < 3
            break
        assert len(page["orders"]) == 3
        cursor = page["next_cursor"]
    assert pages == 3
    assert sorted(seen) == sorted(mine)
    assert len(seen) == len(set(seen))
    created = [store.orders[uuid.UUID(i)]["created_at"] for i in seen]
    assert created == sorted(created, reverse=True)


def test_next_cursor_round_trips_to_the_last_row(service, store):
    _fill(store, ALICE, 4)
    page = service.list_orders(ALICE, None, "2", None)
    last = page["orders"][-1]
    assert page["next_cursor"] is not None
    service.list_orders(ALICE, None, "2", page["next_cursor"])
    assert store.list_calls[-1]["after"] == (last["created_at"], last["order_id"])


def test_no_cursor_when_the_page_is_not_full(service, store):
    _fill(store, ALICE, 2)
    page = service.list_orders(ALICE, None, None, None)
    assert len(page["orders"]) == 2
    assert page["next_cursor"] is None
    assert store.list_calls[-1] == {"status": None, "limit": DEFAULT_PAGE, "after": None}


def test_list_orders_filters_by_status(service, store):
    _fill(store, ALICE, 2, "CONFIRMED")
    rejected = _fill(store, ALICE, 3, "REJECTED")
    page = service.list_orders(ALICE, "REJECTED", "10", None)
    assert sorted(o["order_id"] for o in page["orders"]) == sorted(rejected)
    assert store.list_calls[-1]["status"] == "REJECTED"


@pytest.mark.parametrize(
    ("status", "limit", "cursor", "field"),
    [
        ("SHIPPED", None, None, "status"),
        ("confirmed", None, None, "status"),
        (None, "0", None, "limit"),
        (None, "201", None, "limit"),
        (None, "-1", None, "limit"),
        (None, "abc", None, "limit"),
        (None, "1.5", None, "limit"),
        (None, "", None, "limit"),
        (None, None, "garbage!", "cursor"),
        (None, None, base64.urlsafe_b64encode(b"not json").decode(), "cursor"),
        (None, None, base64.urlsafe_b64encode(b'["yesterday", "x"]').decode(), "cursor"),
        (None, None, base64.urlsafe_b64encode(b'["2025-01-01T00:00:00+00:00"]').decode(), "cursor"),
        (None, None, base64.urlsafe_b64encode(b"42").decode(), "cursor"),
    ],
)
def test_list_orders_validates_its_parameters(service, store, status, limit, cursor, field):
    with pytest.raises(InvalidRequest) as info:
        service.list_orders(ALICE, status, limit, cursor)
    assert info.value.status == 400
    assert [f.field for f in info.value.fields] == [field]
    assert store.list_calls == []


def test_a_superscript_limit_is_a_400(service):
    with pytest.raises(InvalidRequest):
        service.list_orders(ALICE, None, "²", None)


def test_a_cursor_with_a_numeric_order_id_is_a_400(service):
    cursor = base64.urlsafe_b64encode(b'["2025-01-01T00:00:00+00:00", 5]').decode()
    with pytest.raises(InvalidRequest):
        service.list_orders(ALICE, None, None, cursor)


# --- Authenticator ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_authenticator_caches_hits_for_the_ttl(store):
    store.clients[hash_api_key("secret")] = {"id": str(ALICE.id), "name": "alice"}
    clock = Clock()
    auth = Authenticator(store, ttl_seconds=60, clock=clock)
    assert auth.client_for("secret") == ALICE
    clock.now += 59.9
    assert auth.client_for("secret") == ALICE
    assert store.client_lookups == 1
    clock.now += 0.1  # the entry is now exactly ttl old
    assert auth.client_for("secret") == ALICE
    assert store.client_lookups == 2
    clock.now += 30
    assert auth.client_for("secret") == ALICE
    assert store.client_lookups == 2


def test_a_revoked_key_stops_working_after_the_ttl(store):
    key_hash = hash_api_key("secret")
    store.clients[key_hash] = {"id": str(ALICE.id), "name": "alice"}
    clock = Clock()
    auth = Authenticator(store, ttl_seconds=60, clock=clock)
    auth.client_for("secret")
    del store.clients[key_hash]
    clock.now += 61
    with pytest.raises(Unauthorized, match="unknown"):
        auth.client_for("secret")


@pytest.mark.parametrize("key", [None, ""])
def test_a_missing_key_is_unauthorized_without_a_lookup(store, key):
    with pytest.raises(Unauthorized, match="missing"):
        Authenticator(store).client_for(key)
    assert store.client_lookups == 0


def test_an_unknown_key_is_unauthorized_and_not_cached(store):
    clock = Clock()
    auth = Authenticator(store, clock=clock)
    with pytest.raises(Unauthorized, match="unknown"):
        auth.client_for("nope")
    # a client created a moment later can use its key at once
    store.clients[hash_api_key("nope")] = {"id": str(BOB.id), "name": "bob"}
    assert auth.client_for("nope") == BOB
    assert store.client_lookups == 2


def test_keys_are_looked_up_by_hash_only():
    assert hash_api_key("secret") != "secret"
    assert len(hash_api_key("secret")) == 64
    assert hash_api_key("secret") == hash_api_key("secret") != hash_api_key("secret2")
