"""The worker's batch processing against a real PostgreSQL."""
from __future__ import annotations

import logging
import random
import threading
from collections import Counter

import pytest
from support import Shop, statements_sent

from conveyor.adapters.order_store import OrderStore
from conveyor.errors import PermanentError
from conveyor.services.processing import BatchProcessor, QueueRecord

logger = logging.getLogger("test-worker")


@pytest.fixture
def processor(worker_database) -> BatchProcessor:
    return BatchProcessor(OrderStore(worker_database), logger)


@pytest.fixture
def shop(database) -> Shop:
    return Shop(database, [("A-1", 1000, 10), ("B-2", 500, 5), ("C-3", 250, 100)])


def test_an_order_with_stock_is_confirmed_and_reserves_it(shop, processor):
    record, order_id = shop.place("k1", [("A-1", 2), ("B-2", 1), ("A-1", 1)])

    result = processor.process([record])

    assert result.failed_message_ids == []
    assert shop.status(order_id) == "CONFIRMED"
    assert shop.stock()["A-1"] == (7, 3)
    assert shop.stock()["B-2"] == (4, 1)
    order = OrderStore(shop.database).get_order(shop.client.id, order_id)
    assert order["total_amount"] == 3500
    assert [(l["sku"], l["quantity"], l["line_total"]) for l in order["lines"]] == [
        ("A-1", 2, 2000), ("B-2", 1, 500), ("A-1", 1, 1000)]
    assert shop.events(order_id) == [(None, "CONFIRMED")]


def test_redelivered_messages_take_effect_once(shop, processor):
    record, order_id = shop.place("k1", [("A-1", 2)])

    processor.process([record])
    processor.process([record, record])
    redelivered = QueueRecord(message_id=record.message_id, body=record.body, receive_count=3)
    result = processor.process([redelivered])

    assert result.outcomes == Counter({"duplicate": 1})
    assert shop.database.fetch_json("SELECT count(*)::text FROM orders") == 1
    assert shop.stock()["A-1"] == (8, 2)
    assert shop.events(order_id) == [(None, "CONFIRMED")]


@pytest.mark.parametrize(
    ("lines", "amount", "reason"),
    [
        ([("Z-9", 1)], 100, "unknown SKU: Z-9"),
        ([("A-1", 1)], 999, "payment amount 999 does not equal the order total 1000 USD"),
        ([("B-2", 6)], None, "insufficient stock: B-2"),
    ],
)
def test_an_order_that_cannot_be_filled_is_rejected_with_a_reason(shop, processor, lines, amount, reason):
    record, order_id = shop.place("k1", lines, amount=amount)

    processor.process([record])

    order = OrderStore(shop.database).get_order(shop.client.id, order_id)
    assert (order["status"], order["rejection_reason"]) == ("REJECTED", reason)
    assert shop.stock()["B-2"] == (5, 0)
    assert shop.events(order_id) == [(None, "REJECTED")]


def test_stock_is_all_or_nothing_per_order(shop, processor):
    record, order_id = shop.place("k1", [("A-1", 1), ("B-2", 6)])

    processor.process([record])

    assert shop.status(order_id) == "REJECTED"
    assert shop.stock()["A-1"] == (10, 0)


def test_a_cancel_releases_the_reservation_once(shop, processor):
    record, order_id = shop.place("k1", [("A-1", 4)])
    processor.process([record])

    cancel = shop.cancel(order_id)
    processor.process([cancel])
    processor.process([cancel, shop.cancel(order_id)])

    assert shop.status(order_id) == "CANCELLED"
    assert shop.stock()["A-1"] == (10, 0)
    assert shop.events(order_id) == [(None, "CONFIRMED"), ("CONFIRMED", "CANCELLED")]


def test_a_cancel_that_arrives_first_keeps_the_order_from_being_confirmed(shop, processor):
    record, order_id = shop.place("k1", [("A-1", 4)])

    processor.process([shop.cancel(order_id)])
    processor.process([record])
    processor.process([record])

    assert shop.status(order_id) == "CANCELLED"
    assert shop.stock()["A-1"] == (10, 0)
    assert shop.events(order_id) == [(None, "CANCELLED"), ("CANCELLED", "CANCELLED")]
    order = OrderStore(shop.database).get_order(shop.client.id, order_id)
    assert order["lines"] and order["payment"]["amount"] == 4000


def test_a_cancel_and_its_order_in_one_batch_never_reserve(shop, processor):
    record, order_id = shop.place("k1", [("A-1", 4)])

    result = processor.process([shop.cancel(order_id), record])

    assert result.failed_message_ids == []
    assert shop.status(order_id) == "CANCELLED"
    assert shop.stock()["A-1"] == (10, 0)


def test_another_client_cannot_cancel_an_order(shop, processor):
    record, order_id = shop.place("k1", [("A-1", 1)])
    processor.process([record])

    processor.process([shop.cancel(order_id, client=shop.new_client())])

    assert shop.status(order_id) == "CONFIRMED"


def test_a_reused_key_with_another_body_never_overwrites_the_first_order(shop, processor):
    first, order_id = shop.place("k1", [("A-1", 1)])
    second, same_id = shop.place("k1", [("C-3", 5)])
    assert same_id == order_id

    processor.process([first])
    result = processor.process([second])

    assert result.outcomes == Counter({"key_reused": 1})
    order = OrderStore(shop.database).get_order(shop.client.id, order_id)
    assert [l["sku"] for l in order["lines"]] == ["A-1"]
    assert shop.stock()["C-3"] == (100, 0)


def test_a_poison_message_fails_alone(shop, processor):
    good, order_id = shop.place("k1", [("A-1", 1)])
    poison = QueueRecord(message_id="poison", body='{"schema_version": 99, "type": "order.place"}')
    garbage = QueueRecord(message_id="garbage", body="\x00not json")
    oversized = QueueRecord(message_id="oversized", body=good.body.replace("pi_k1", "pi_" + "x" * 250_000))

    result = processor.process([poison, good, garbage, oversized])

    assert sorted(result.failed_message_ids) == ["garbage", "oversized", "poison"]
    assert all(result.failure_reasons[m] for m in result.failed_message_ids)
    assert shop.status(order_id) == "CONFIRMED"


def test_a_batch_costs_a_fixed_number_of_statements(shop, database):
    processor = BatchProcessor(OrderStore(database), logger)
    batch = [shop.place(f"k{i}", [("A-1", 1), ("B-2", 0 + 1), ("C-3", 2)])[0] for i in range(5)]
    batch += [shop.place(f"r{i}", [("Z-9", 1)], amount=1)[0] for i in range(5)]
    with statements_sent(shop.database.engine) as new_orders:
        processor.process(batch)
    with statements_sent(shop.database.engine) as duplicates:
        processor.process(batch)

    assert len(new_orders) == 2  # read state, apply plan
    assert len(duplicates) == 1  # read state: nothing left to write


def test_the_audit_trail_is_append_only(shop, processor):
    record, order_id = shop.place("k1", [("A-1", 1)])
    processor.process([record])

    for statement in ("UPDATE order_events SET cause = 'edited'", "DELETE FROM order_events"):
        with pytest.raises(PermanentError, match="append-only"):
            shop.database.execute(statement)
    assert shop.events(order_id) == [(None, "CONFIRMED")]


def test_concurrent_workers_never_oversell_or_duplicate(database, worker_database):
    """8 workers take overlapping, duplicated, shuffled batches of orders for scarce stock."""
    initial = {"HOT-1": 40, "HOT-2": 25, "WARM-3": 200}
    shop = Shop(database, [(sku, 100, stock) for sku, stock in initial.items()])
    rng = random.Random(7)
    orders = []
    for i in range(300):
        lines = [(sku, rng.randint(1, 3)) for sku in rng.sample(sorted(initial), k=rng.randint(1, 3))]
        orders.append(shop.place(f"order-{i}", lines))
    cancels = [shop.cancel(order_id) for _, order_id in orders[::10]]
    messages = [record for record, _ in orders] * 3 + cancels * 2
    rng.shuffle(messages)
    batches = [messages[i:i + 10] for i in range(0, len(messages), 10)]
    failures: list[str] = []
    reasons: Counter[str] = Counter()
    attempts = Counter()

    def work(worker: int) -> None:
        processor = BatchProcessor(OrderStore(worker_database), logger)
        for batch in batches[worker::8]:
            result = processor.process(batch)
            failures.extend(result.failed_message_ids)
            reasons.update(result.failure_reasons.values())
            attempts["attempts"] += result.attempts
            attempts["batches"] += 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == [], f"failed messages, by reason: {dict(reasons)}"
    counts = database.fetch_json(
        "SELECT json_build_object('orders', (SELECT count(*) FROM orders),"
        " 'distinct', (SELECT count(DISTINCT id) FROM orders),"
        " 'confirmed', (SELECT count(*) FROM orders WHERE status = 'CONFIRMED'),"
        " 'duplicate_events', (SELECT count(*) FROM (SELECT 1 FROM order_events"
        "   GROUP BY order_id, from_status, to_status HAVING count(*) > 1) d))::text"
    )
    assert counts["orders"] == counts["distinct"] == len(orders)
    assert counts["duplicate_events"] == 0
    assert 0 < counts["confirmed"] < len(orders)  # scarce stock: some confirmed, some rejected
    reserved_by_orders = database.fetch_json(
        "SELECT COALESCE(json_object_agg(sku, held), '{}')::text FROM (SELECT key AS sku, sum(value::int) AS held"
        " FROM orders, jsonb_each_text(reservation) WHERE status = 'CONFIRMED' GROUP BY key) r"
    )
    for sku, (available, reserved) in shop.stock().items():
        assert available >= 0
        assert available + reserved == initial[sku]
        assert reserved == reserved_by_orders.get(sku, 0)


# --- a payment settles at most one order ---------------------------------------------------------

USED = "payment reference already used by another order: stripe pi_shared"


def order_row(shop: Shop, order_id) -> tuple[str, str | None]:
    return tuple(shop.database.fetch_json(
        "SELECT json_build_array(status, rejection_reason)::text FROM orders WHERE id = CAST(:id AS uuid)",
        {"id": str(order_id)}))


def test_two_orders_with_one_payment_in_one_batch_confirm_the_first_only(shop, processor):
    first, first_id = shop.place("k1", [("A-1", 1)], reference="pi_shared")
    second, second_id = shop.place("k2", [("A-1", 2)], reference="pi_shared")
    resent, _ = shop.place("k1", [("A-1", 1)], reference="pi_shared")  # the client's retry of the first

    result = processor.process([first, second, resent])

    assert result.failed_message_ids == []
    assert result.outcomes == Counter({"confirmed": 1, "rejected": 1, "duplicate": 1})
    assert order_row(shop, first_id) == ("CONFIRMED", None)
    assert order_row(shop, second_id) == ("REJECTED", USED)
    assert shop.events(second_id) == [(None, "REJECTED")]
    cause = shop.database.fetch_json(
        "SELECT to_json(cause)::text FROM order_events WHERE order_id = CAST(:id AS uuid)", {"id": str(second_id)})
    assert cause == USED
    assert shop.stock()["A-1"] == (9, 1)

    # Redelivered later, neither changes: the holder is not rejected by its own reference.
    assert processor.process([second, first]).outcomes == Counter({"duplicate": 2})
    assert order_row(shop, first_id) == ("CONFIRMED", None)


def test_another_clients_order_cannot_take_a_held_payment(shop, processor):
    mine, mine_id = shop.place("k1", [("A-1", 1)], reference="pi_shared")
    processor.process([mine])

    theirs, theirs_id = shop.place("k1", [("A-1", 1)], client=shop.new_client(), reference="pi_shared")
    processor.process([theirs])

    assert order_row(shop, theirs_id) == ("REJECTED", USED)
    assert order_row(shop, mine_id) == ("CONFIRMED", None)


def test_a_turned_down_order_frees_its_payment_for_a_retry(shop, processor):
    underpaid, underpaid_id = shop.place("k1", [("A-1", 1)], amount=1, reference="pi_shared")
    retry, retry_id = shop.place("k2", [("A-1", 1)], reference="pi_shared")
    processor.process([underpaid])
    processor.process([retry])
    assert order_row(shop, underpaid_id)[0] == "REJECTED"
    assert order_row(shop, retry_id) == ("CONFIRMED", None)

    # The confirmed one is cancelled: the reference is free again, from the next batch on.
    again, again_id = shop.place("k3", [("A-1", 1)], reference="pi_shared")
    processor.process([shop.cancel(retry_id), again])
    assert order_row(shop, again_id) == ("REJECTED", USED)
    last, last_id = shop.place("k4", [("A-1", 1)], reference="pi_shared")
    processor.process([last])
    assert order_row(shop, last_id) == ("CONFIRMED", None)
    assert shop.stock()["A-1"] == (9, 1)


def test_the_database_refuses_a_second_holder_of_a_payment(shop, processor):
    """The guard behind the plan: a writer that skipped the check is stopped by the unique index."""
    record, order_id = shop.place("k1", [("A-1", 1)], reference="pi_shared")
    processor.process([record])
    with pytest.raises(PermanentError, match="orders_payment_reference_held"):
        shop.database.execute(
            "INSERT INTO orders (id, client_id, status, payment_provider, payment_reference)"
            " SELECT gen_random_uuid(), client_id, 'CONFIRMED', payment_provider, payment_reference"
            " FROM orders WHERE id = CAST(:id AS uuid)", {"id": str(order_id)})
    # a turned-down order may share it
    shop.database.execute(
        "INSERT INTO orders (id, client_id, status, payment_provider, payment_reference)"
        " SELECT gen_random_uuid(), client_id, 'REJECTED', payment_provider, payment_reference"
        " FROM orders WHERE id = CAST(:id AS uuid)", {"id": str(order_id)})


class ReadThenWait(OrderStore):
    """Both workers read before either writes: each decides to take the same payment."""

    def __init__(self, database, barrier: threading.Barrier):
        super().__init__(database)
        self.barrier = barrier
        self.waited = False

    def read_batch_state(self, order_ids, skus, payments):
        state = super().read_batch_state(order_ids, skus, payments)
        if not self.waited:
            self.waited = True
            self.barrier.wait(timeout=30)
        return state


RACE_ROUNDS = 25


def test_concurrent_batches_with_one_payment_confirm_one_order(shop, worker_database):
    """Two workers on their own connections take one order each with the same payment, many times over."""
    rounds, retries = RACE_ROUNDS, 0
    for number in range(rounds):
        reference = f"pi_race_{number}"
        records = [shop.place(f"race-{number}-{side}", [("C-3", 1)], reference=reference) for side in range(2)]
        barrier = threading.Barrier(2)
        results: list = [None, None]
        errors: list[BaseException] = []

        def work(side: int, barrier=barrier, records=records, results=results, errors=errors) -> None:
            try:
                store = ReadThenWait(worker_database, barrier)
                results[side] = BatchProcessor(store, logger).process([records[side][0]])
            except BaseException as exc:  # surfaced below: a thread's exception would vanish
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(side,)) for side in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert errors == [] and all(not t.is_alive() for t in threads)
        assert [r.failed_message_ids for r in results] == [[], []]
        assert sorted(outcome for r in results for outcome in r.outcomes) == ["confirmed", "rejected"]
        rows = sorted(order_row(shop, order_id) for _, order_id in records)
        assert rows == [("CONFIRMED", None), ("REJECTED", f"payment reference already used by another order:"
                                                         f" stripe {reference}")]
        retries += sum(r.attempts for r in results) - 2
    # Both decided on the same read every round: the index, not the plan, settled each race.
    assert retries == rounds
    assert shop.stock()["C-3"] == (100 - rounds, rounds)
