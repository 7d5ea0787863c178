"""plan_batch and the order id / fingerprint helpers: pure domain rules, no database."""
from __future__ import annotations

import itertools
import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.domain.orders import (
    ALLOWED_TRANSITIONS,
    CancelOrder,
    CatalogItem,
    KnownOrder,
    Line,
    OrderStatus,
    Outcome,
    Payment,
    PlaceOrder,
    belongs_to,
    order_id_for,
    plan_batch,
    request_fingerprint,
)

CLIENT_A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
CLIENT_B = uuid.UUID("00000000-0000-4000-8000-00000000000b")
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

_message_ids = itertools.count(1)


def catalog_of(*items: tuple[str, str, int, int]) -> dict[str, CatalogItem]:
    """(sku, currency, unit_price, stock) tuples -> the catalog dict plan_batch reads."""
    return {sku: CatalogItem(sku, currency, price, stock) for sku, currency, price, stock in items}


CATALOG = catalog_of(("APPLE", "USD", 150, 10), ("PEAR", "USD", 200, 3), ("SUSHI", "JPY", 900, 5))


def place(
    key: str = "k1",
    *,
    client: uuid.UUID = CLIENT_A,
    lines: list[tuple[str, int]] | None = None,
    currency: str = "USD",
    amount: int | None = None,
    fingerprint: str | None = None,
    catalog: dict[str, CatalogItem] = CATALOG,
    order_id: uuid.UUID | None = None,
    reference: str | None = None,
) -> PlaceOrder:
    lines = lines if lines is not None else [("APPLE", 2)]
    if amount is None:  # the correct total, when every SKU is known
        amount = sum(catalog[s].unit_price * q for s, q in lines if s in catalog)
    return PlaceOrder(
        message_id=f"m{next(_message_ids)}",
        order_id=order_id or order_id_for(client, key),
        client_id=client,
        idempotency_key=key,
        fingerprint=fingerprint or f"fp-{key}",
        currency=currency,
        lines=tuple(Line(s, q) for s, q in lines),
        payment=Payment("stripe", reference or f"pi_{key}", amount),
        details={},
        accepted_at=NOW,
    )


def cancel(order_id: uuid.UUID, *, client: uuid.UUID = CLIENT_A) -> CancelOrder:
    return CancelOrder(
        message_id=f"m{next(_message_ids)}", order_id=order_id, client_id=client, requested_at=NOW
    )


def known(
    order_id: uuid.UUID, status: OrderStatus, *, client: uuid.UUID = CLIENT_A, fingerprint: str | None = "fp-k1"
) -> dict[uuid.UUID, KnownOrder]:
    return {order_id: KnownOrder(order_id, client, status, fingerprint)}


# --- order ids and fingerprints -------------------------------------------------------------


def test_order_id_is_deterministic_and_depends_on_client_and_key():
    assert order_id_for(CLIENT_A, "k1") == order_id_for(CLIENT_A, "k1")
    assert order_id_for(CLIENT_A, "k1") != order_id_for(CLIENT_B, "k1")
    assert order_id_for(CLIENT_A, "k1") != order_id_for(CLIENT_A, "k2")
    assert order_id_for(CLIENT_A, "k1").version == 8
    assert belongs_to(order_id_for(CLIENT_A, "k1"), CLIENT_A)
    assert not belongs_to(order_id_for(CLIENT_A, "k1"), CLIENT_B)


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_order_ids_of_distinct_keys_differ(key1, key2):
    assert (order_id_for(CLIENT_A, key1) == order_id_for(CLIENT_A, key2)) == (key1 == key2)


def test_fingerprint_ignores_key_order_but_not_values():
    one = {"currency": "USD", "lines": [{"sku": "A", "quantity": 1}], "payment": {"amount": 5, "provider": "x"}}
    two = {"payment": {"provider": "x", "amount": 5}, "lines": [{"quantity": 1, "sku": "A"}], "currency": "USD"}
    assert request_fingerprint(one) == request_fingerprint(two)
    assert len(request_fingerprint(one)) == 64
    changed = {**one, "payment": {"amount": 6, "provider": "x"}}
    assert request_fingerprint(changed) != request_fingerprint(one)
    # line order is meaningful (line numbers), so it does change the fingerprint
    reordered = {**one, "lines": [{"sku": "B", "quantity": 1}, {"sku": "A", "quantity": 1}]}
    swapped = {**one, "lines": [{"sku": "A", "quantity": 1}, {"sku": "B", "quantity": 1}]}
    assert request_fingerprint(reordered) != request_fingerprint(swapped)


@settings(deadline=None)  # a busy machine can take 200 ms over one example
@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=8))
def test_fingerprint_is_insensitive_to_insertion_order(document):
    reversed_document = dict(reversed(list(document.items())))
    assert request_fingerprint(document) == request_fingerprint(reversed_document)


# --- placing --------------------------------------------------------------------------------


def test_confirms_with_stock_and_reserves_exactly_the_wanted_quantities():
    command = place(lines=[("APPLE", 2), ("PEAR", 1), ("APPLE", 3)])
    plan = plan_batch([command], CATALOG, {}, {})
    assert plan.outcomes == {command.message_id: Outcome.CONFIRMED}
    [placement] = plan.placements
    assert placement.status is OrderStatus.CONFIRMED
    assert placement.rejection_reason is None
    assert placement.reservation == {"APPLE": 5, "PEAR": 1}  # APPLE aggregated over two lines
    assert placement.total_amount == 5 * 150 + 200
    assert [(l.line_no, l.sku, l.quantity, l.unit_price) for l in placement.lines] == [
        (1, "APPLE", 2, 150), (2, "PEAR", 1, 200), (3, "APPLE", 3, 150),
    ]
    assert plan.cancellations == []
    assert plan.has_writes


def test_exactly_all_remaining_stock_can_be_taken():
    command = place(lines=[("PEAR", 2), ("PEAR", 1)])  # PEAR stock is 3
    plan = plan_batch([command], CATALOG, {}, {})
    assert plan.placements[0].status is OrderStatus.CONFIRMED
    assert plan.placements[0].reservation == {"PEAR": 3}


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (place(lines=[("APPLE", 1), ("NOPE", 1), ("ALSO-NOPE", 2)]), "unknown SKU: ALSO-NOPE, NOPE"),
        (place(lines=[("APPLE", 1), ("SUSHI", 1)], amount=1050), "SKU not sold in USD: SUSHI"),
        (place(lines=[("APPLE", 2)], amount=299), "payment amount 299 does not equal the order total 300 USD"),
        (place(lines=[("APPLE", 2)], amount=301), "payment amount 301 does not equal the order total 300 USD"),
        (place(lines=[("PEAR", 2), ("PEAR", 2)]), "insufficient stock: PEAR"),
        (place(lines=[("APPLE", 11)]), "insufficient stock: APPLE"),
    ],
    ids=["unknown-sku", "other-currency", "underpaid", "overpaid", "aggregated-short", "short"],
)
def test_rejects_with_a_clear_reason(command, reason):
    plan = plan_batch([command], CATALOG, {}, {})
    assert plan.outcomes == {command.message_id: Outcome.REJECTED}
    [placement] = plan.placements
    assert placement.status is OrderStatus.REJECTED
    assert placement.rejection_reason == reason
    assert placement.cause == reason
    assert placement.reservation == {}


def test_unknown_sku_has_no_unit_price_and_no_total():
    plan = plan_batch([place(lines=[("APPLE", 1), ("NOPE", 1)])], CATALOG, {}, {})
    placement = plan.placements[0]
    assert [l.unit_price for l in placement.lines] == [150, None]
    assert placement.total_amount is None


def test_stock_is_allocated_in_batch_order():
    first = place("k1", lines=[("PEAR", 2)])
    second = place("k2", lines=[("PEAR", 2)])
    third = place("k3", lines=[("PEAR", 1)])
    plan = plan_batch([first, second, third], CATALOG, {}, {})
    assert [plan.outcomes[c.message_id] for c in (first, second, third)] == [
        Outcome.CONFIRMED, Outcome.REJECTED, Outcome.CONFIRMED,
    ]
    assert plan.placements[1].rejection_reason == "insufficient stock: PEAR"
    assert sum(p.reservation.get("PEAR", 0) for p in plan.placements) == 3

    # the same orders the other way round: the small one goes first, then one of the big ones
    plan = plan_batch([third, second, first], CATALOG, {}, {})
    assert [plan.outcomes[c.message_id] for c in (third, second, first)] == [
        Outcome.CONFIRMED, Outcome.CONFIRMED, Outcome.REJECTED,
    ]


def test_a_rejected_order_takes_no_stock():
    underpaid = place("k1", lines=[("PEAR", 3)], amount=1)
    paid = place("k2", lines=[("PEAR", 3)])
    plan = plan_batch([underpaid, paid], CATALOG, {}, {})
    assert plan.outcomes[underpaid.message_id] is Outcome.REJECTED
    assert plan.outcomes[paid.message_id] is Outcome.CONFIRMED


def test_duplicate_of_a_known_order_is_ignored():
    command = place("k1", fingerprint="fp-k1")
    for status in (OrderStatus.CONFIRMED, OrderStatus.REJECTED, OrderStatus.CANCELLED):
        plan = plan_batch([command], CATALOG, known(command.order_id, status, fingerprint="fp-k1"), {})
        assert plan.outcomes == {command.message_id: Outcome.DUPLICATE}
        assert not plan.has_writes


def test_duplicate_within_the_batch_is_placed_once():
    first = place("k1")
    again = place("k1")
    plan = plan_batch([first, again], CATALOG, {}, {})
    assert plan.outcomes == {first.message_id: Outcome.CONFIRMED, again.message_id: Outcome.DUPLICATE}
    assert len(plan.placements) == 1
    assert plan.placements[0].command is first
    assert plan.placements[0].reservation == {"APPLE": 2}  # not reserved twice


def test_same_key_with_a_different_body_is_key_reused():
    command = place("k1", fingerprint="fp-other")
    plan = plan_batch([command], CATALOG, known(command.order_id, OrderStatus.CONFIRMED, fingerprint="fp-k1"), {})
    assert plan.outcomes == {command.message_id: Outcome.KEY_REUSED}
    assert not plan.has_writes

    first = place("k2", fingerprint="fp-1")
    second = place("k2", fingerprint="fp-2", lines=[("PEAR", 1)])
    plan = plan_batch([first, second], CATALOG, {}, {})
    assert plan.outcomes == {first.message_id: Outcome.CONFIRMED, second.message_id: Outcome.KEY_REUSED}
    assert [p.command for p in plan.placements] == [first]


def test_place_after_a_cancel_placeholder_is_recorded_cancelled_without_stock():
    command = place("k1")
    placeholder = known(command.order_id, OrderStatus.CANCELLED, fingerprint=None)
    plan = plan_batch([command], CATALOG, placeholder, {})
    assert plan.outcomes == {command.message_id: Outcome.CANCELLED}
    [placement] = plan.placements
    assert placement.status is OrderStatus.CANCELLED
    assert placement.reservation == {}
    assert placement.rejection_reason is None
    assert placement.total_amount == 300  # still priced, so the stored order is complete
    assert plan.cancellations == []


def test_a_command_for_an_order_id_of_another_client_is_refused():
    foreign_place = place("k1", client=CLIENT_B, order_id=order_id_for(CLIENT_A, "k1"))
    foreign_cancel = cancel(order_id_for(CLIENT_A, "k2"), client=CLIENT_B)
    plan = plan_batch([foreign_place, foreign_cancel], CATALOG, {}, {})
    assert plan.outcomes == {foreign_place.message_id: Outcome.NOT_YOURS, foreign_cancel.message_id: Outcome.NOT_YOURS}
    assert not plan.has_writes  # in particular, no placeholder squats on the owner's id


# --- cancelling -----------------------------------------------------------------------------


def test_cancel_of_a_confirmed_order_produces_a_cancellation():
    order_id = order_id_for(CLIENT_A, "k1")
    command = cancel(order_id)
    plan = plan_batch([command], CATALOG, known(order_id, OrderStatus.CONFIRMED), {})
    assert plan.outcomes == {command.message_id: Outcome.CANCELLED}
    assert [c.command for c in plan.cancellations] == [command]
    assert plan.placements == []


@pytest.mark.parametrize(
    ("status", "client", "outcome"),
    [
        (OrderStatus.REJECTED, CLIENT_A, Outcome.NOT_CANCELLABLE),
        (OrderStatus.CANCELLED, CLIENT_A, Outcome.DUPLICATE),
        (OrderStatus.CONFIRMED, CLIENT_B, Outcome.NOT_YOURS),
        (OrderStatus.CANCELLED, CLIENT_B, Outcome.NOT_YOURS),
    ],
    ids=["rejected", "already-cancelled", "other-clients-confirmed", "other-clients-cancelled"],
)
def test_cancel_that_changes_nothing(status, client, outcome):
    order_id = order_id_for(CLIENT_A, "k1")
    command = cancel(order_id, client=client)
    plan = plan_batch([command], CATALOG, known(order_id, status, client=CLIENT_A), {})
    assert plan.outcomes == {command.message_id: outcome}
    assert not plan.has_writes


def test_cancel_of_an_unknown_order_leaves_a_tombstone():
    order_id = order_id_for(CLIENT_A, "never-seen")
    command = cancel(order_id)
    plan = plan_batch([command], CATALOG, {}, {})
    assert plan.outcomes == {command.message_id: Outcome.CANCEL_REQUESTED}
    assert [c.command for c in plan.cancellations] == [command]
    assert plan.placements == []


def test_a_repeated_cancel_in_one_batch_is_a_duplicate():
    order_id = order_id_for(CLIENT_A, "k1")
    first, second = cancel(order_id), cancel(order_id)
    plan = plan_batch([first, second], CATALOG, known(order_id, OrderStatus.CONFIRMED), {})
    assert plan.outcomes == {first.message_id: Outcome.CANCELLED, second.message_id: Outcome.DUPLICATE}
    assert len(plan.cancellations) == 1


@pytest.mark.parametrize("cancel_first", [True, False], ids=["cancel-then-place", "place-then-cancel"])
def test_place_and_cancel_of_a_new_order_in_one_batch(cancel_first):
    order = place("k1", lines=[("PEAR", 3)])
    stop = cancel(order.order_id)
    later = place("k2", lines=[("PEAR", 3)])  # would be short of PEAR if the cancelled order held it
    commands = [stop, order, later] if cancel_first else [order, stop, later]
    plan = plan_batch(commands, CATALOG, {}, {})
    assert plan.outcomes == {
        order.message_id: Outcome.CANCELLED,
        stop.message_id: Outcome.CANCELLED,
        later.message_id: Outcome.CONFIRMED,
    }
    assert plan.cancellations == []
    cancelled = [p for p in plan.placements if p.command is order]
    assert len(cancelled) == 1
    assert cancelled[0].status is OrderStatus.CANCELLED
    assert cancelled[0].reservation == {}


def test_cancel_place_cancel_for_a_new_order():
    order = place("k1")
    first, second = cancel(order.order_id), cancel(order.order_id)
    plan = plan_batch([first, order, second], CATALOG, {}, {})
    assert plan.outcomes[order.message_id] is Outcome.CANCELLED
    assert plan.outcomes[first.message_id] is Outcome.CANCELLED
    assert plan.outcomes[second.message_id] is Outcome.DUPLICATE
    assert plan.cancellations == []
    assert [p.status for p in plan.placements] == [OrderStatus.CANCELLED]


@pytest.mark.parametrize("cancel_first", [True, False], ids=["cancel-then-place", "place-then-cancel"])
def test_another_clients_cancel_in_the_same_batch_does_not_cancel_a_new_order(cancel_first):
    order = place("k1", client=CLIENT_A)
    foreign = cancel(order.order_id, client=CLIENT_B)
    plan = plan_batch([foreign, order] if cancel_first else [order, foreign], CATALOG, {}, {})
    assert plan.outcomes[order.message_id] is Outcome.CONFIRMED
    assert plan.placements[0].reservation == {"APPLE": 2}


def test_owners_cancel_after_a_foreign_cancel_in_the_same_batch_still_cancels():
    order_id = order_id_for(CLIENT_A, "k1")
    foreign, own = cancel(order_id, client=CLIENT_B), cancel(order_id, client=CLIENT_A)
    plan = plan_batch([foreign, own], CATALOG, known(order_id, OrderStatus.CONFIRMED), {})
    assert plan.outcomes[foreign.message_id] is Outcome.NOT_YOURS
    assert plan.outcomes[own.message_id] is Outcome.CANCELLED
    assert [c.command for c in plan.cancellations] == [own]


def test_duplicate_place_and_cancel_of_a_known_confirmed_order():
    command = place("k1", fingerprint="fp-k1")
    stop = cancel(command.order_id)
    plan = plan_batch([command, stop], CATALOG, known(command.order_id, OrderStatus.CONFIRMED), {})
    assert plan.outcomes == {command.message_id: Outcome.DUPLICATE, stop.message_id: Outcome.CANCELLED}
    assert plan.placements == []
    assert [c.command for c in plan.cancellations] == [stop]


def test_empty_batch_plans_nothing():
    plan = plan_batch([], CATALOG, {}, {})
    assert not plan.has_writes
    assert plan.outcomes == {}


# --- payment references -----------------------------------------------------------------------

HELD_ELSEWHERE = uuid.UUID("00000000-0000-4000-8000-00000000bbbb")
USED = "payment reference already used by another order: stripe pi_shared"


def test_an_order_whose_payment_reference_another_order_holds_is_rejected():
    command = place("k1", reference="pi_shared")
    plan = plan_batch([command], CATALOG, {}, {("stripe", "pi_shared"): HELD_ELSEWHERE})
    assert plan.outcomes == {command.message_id: Outcome.REJECTED}
    [placement] = plan.placements
    assert (placement.status, placement.rejection_reason, placement.cause) == (OrderStatus.REJECTED, USED, USED)
    assert placement.reservation == {}
    assert str(HELD_ELSEWHERE) not in USED  # never names the other order: it may be another client's


def test_a_reference_is_held_per_provider():
    command = place("k1", reference="pi_shared")
    plan = plan_batch([command], CATALOG, {}, {("adyen", "pi_shared"): HELD_ELSEWHERE})
    assert plan.outcomes == {command.message_id: Outcome.CONFIRMED}


def test_the_order_holding_the_reference_is_not_rejected_by_it():
    command = place("k1", reference="pi_shared", fingerprint="fp-k1")
    holders = {("stripe", "pi_shared"): command.order_id}
    plan = plan_batch([command], CATALOG, known(command.order_id, OrderStatus.CONFIRMED), holders)
    assert plan.outcomes == {command.message_id: Outcome.DUPLICATE}
    # The holder is only ever this order itself: placing it is not a second use of its payment.
    plan = plan_batch([command], CATALOG, {}, holders)
    assert plan.outcomes == {command.message_id: Outcome.CONFIRMED}


def test_the_first_confirmed_order_of_a_batch_takes_the_reference():
    first = place("k1", reference="pi_shared")
    second = place("k2", reference="pi_shared")
    plan = plan_batch([first, second], CATALOG, {}, {})
    assert [plan.outcomes[c.message_id] for c in (first, second)] == [Outcome.CONFIRMED, Outcome.REJECTED]
    assert plan.placements[1].rejection_reason == USED
    assert plan.placements[1].reservation == {}

    # batch order decides, as it does for stock
    plan = plan_batch([second, first], CATALOG, {}, {})
    assert [plan.outcomes[c.message_id] for c in (second, first)] == [Outcome.CONFIRMED, Outcome.REJECTED]


def test_a_redelivery_within_the_batch_does_not_reject_itself():
    order = place("k1", reference="pi_shared")
    redelivered = place("k1", reference="pi_shared")  # another message id, same order and body
    plan = plan_batch([order, redelivered], CATALOG, {}, {})
    assert plan.outcomes == {order.message_id: Outcome.CONFIRMED, redelivered.message_id: Outcome.DUPLICATE}


def test_an_order_turned_down_in_the_batch_leaves_the_reference_free():
    underpaid = place("k1", reference="pi_shared", amount=1)
    retry = place("k2", reference="pi_shared")
    plan = plan_batch([underpaid, retry], CATALOG, {}, {})
    assert [plan.outcomes[c.message_id] for c in (underpaid, retry)] == [Outcome.REJECTED, Outcome.CONFIRMED]

    out_of_stock = place("k3", reference="pi_other", lines=[("PEAR", 4)])
    smaller = place("k4", reference="pi_other", lines=[("PEAR", 1)])
    plan = plan_batch([out_of_stock, smaller], CATALOG, {}, {})
    assert [plan.outcomes[c.message_id] for c in (out_of_stock, smaller)] == [Outcome.REJECTED, Outcome.CONFIRMED]


def test_an_order_cancelled_before_it_arrived_takes_no_reference():
    order = place("k1", reference="pi_shared")
    retry = place("k2", reference="pi_shared")
    plan = plan_batch([cancel(order.order_id), order, retry], CATALOG, {}, {})
    assert [plan.outcomes[c.message_id] for c in (order, retry)] == [Outcome.CANCELLED, Outcome.CONFIRMED]


def test_a_cancel_in_the_same_batch_does_not_free_the_reference_for_that_batch():
    holder = place("k1", reference="pi_shared")
    retry = place("k2", reference="pi_shared")
    plan = plan_batch([cancel(holder.order_id), retry], CATALOG, known(holder.order_id, OrderStatus.CONFIRMED),
                      {("stripe", "pi_shared"): holder.order_id})
    assert plan.outcomes[retry.message_id] is Outcome.REJECTED
    assert [c.command.order_id for c in plan.cancellations] == [holder.order_id]


def test_a_cancelled_order_never_needs_the_reference():
    """Its cancel came first: it is recorded CANCELLED whoever holds the reference."""
    order = place("k1", reference="pi_shared")
    placeholder = known(order.order_id, OrderStatus.CANCELLED, fingerprint=None)
    plan = plan_batch([order], CATALOG, placeholder, {("stripe", "pi_shared"): HELD_ELSEWHERE})
    assert plan.outcomes == {order.message_id: Outcome.CANCELLED}


def test_other_reasons_come_first_and_stock_after():
    unknown = place("k1", reference="pi_shared", lines=[("NOPE", 1)])
    short = place("k2", reference="pi_shared", lines=[("PEAR", 9)])
    plan = plan_batch([unknown, short], CATALOG, {}, {("stripe", "pi_shared"): HELD_ELSEWHERE})
    assert [p.rejection_reason for p in plan.placements] == ["unknown SKU: NOPE", USED]


# --- properties -----------------------------------------------------------------------------

SKUS = ["S1", "S2", "S3"]
CURRENCIES = ["USD", "EUR"]
REFERENCES = ["r1", "r2"]


@st.composite
def scenarios(draw):
    catalog = {
        sku: CatalogItem(
            sku,
            draw(st.sampled_from(CURRENCIES)),
            draw(st.integers(0, 5)),
            draw(st.integers(0, 8)),
        )
        for sku in draw(st.lists(st.sampled_from(SKUS), unique=True, max_size=3))
    }
    clients = [CLIENT_A, CLIENT_B]
    keys = ["k1", "k2", "k3", "k4"]
    # every order id belongs to one client; messages may still come from the other one
    owners = {key: draw(st.sampled_from(clients)) for key in keys}
    ids = {key: order_id_for(owners[key], key) for key in keys}

    known_orders: dict[uuid.UUID, KnownOrder] = {}
    for key in keys:
        kind = draw(st.sampled_from(["none", "none", "placed", "placeholder"]))
        row_client = owners[key]  # rows are written only for commands their owner sent
        if kind == "placed":
            status = draw(st.sampled_from([OrderStatus.CONFIRMED, OrderStatus.REJECTED, OrderStatus.CANCELLED]))
            known_orders[ids[key]] = KnownOrder(ids[key], row_client, status, draw(st.sampled_from(["f1", "f2"])))
        elif kind == "placeholder":
            known_orders[ids[key]] = KnownOrder(ids[key], row_client, OrderStatus.CANCELLED, None)

    commands = []
    for number in range(draw(st.integers(0, 10))):
        key = draw(st.sampled_from(keys))
        if draw(st.booleans()):
            currency = draw(st.sampled_from(CURRENCIES))
            lines = draw(st.lists(st.tuples(st.sampled_from(SKUS + ["UNKNOWN"]), st.integers(1, 6)), min_size=1, max_size=4))
            total = sum(catalog[s].unit_price * q for s, q in lines if s in catalog)
            amount = total if draw(st.integers(0, 4)) else draw(st.integers(0, 50))
            commands.append(PlaceOrder(
                message_id=f"p{number}", order_id=ids[key], client_id=owners[key], idempotency_key=key,
                fingerprint=draw(st.sampled_from(["f1", "f2"])), currency=currency,
                lines=tuple(Line(s, q) for s, q in lines),
                payment=Payment("generic", draw(st.sampled_from(REFERENCES)), amount),
                details={}, accepted_at=NOW,
            ))
        else:
            client = draw(st.sampled_from([owners[key], owners[key], CLIENT_A, CLIENT_B]))
            commands.append(CancelOrder(message_id=f"c{number}", order_id=ids[key], client_id=client, requested_at=NOW))
    holders = {("generic", reference): draw(st.sampled_from(list(ids.values())))
               for reference in draw(st.lists(st.sampled_from(REFERENCES), unique=True))}
    return catalog, known_orders, holders, commands


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_plan_invariants(scenario):
    catalog, known_orders, holders, commands = scenario
    plan = plan_batch(commands, catalog, known_orders, holders)

    # every message gets exactly one outcome
    assert set(plan.outcomes) == {c.message_id for c in commands}
    assert len(plan.outcomes) == len(commands)

    # never reserves more than the stock read
    reserved: Counter[str] = Counter()
    for placement in plan.placements:
        reserved.update(placement.reservation)
    for sku, quantity in reserved.items():
        assert sku in catalog
        assert quantity <= catalog[sku].stock_available

    # at most one placement per order id, none for an order already placed,
    # and none that is also cancelled by a separate write
    placed_ids = [p.command.order_id for p in plan.placements]
    assert len(placed_ids) == len(set(placed_ids))
    assert not any(known_orders[i].placed for i in placed_ids if i in known_orders)
    cancelled_ids = [c.command.order_id for c in plan.cancellations]
    assert len(cancelled_ids) == len(set(cancelled_ids))
    assert not set(placed_ids) & set(cancelled_ids)

    # CONFIRMED placements, and only they, hold stock; each holds exactly its lines
    for placement in plan.placements:
        wanted: Counter[str] = Counter()
        for line in placement.command.lines:
            wanted[line.sku] += line.quantity
        if placement.status is OrderStatus.CONFIRMED:
            assert placement.reservation == dict(wanted)
            assert placement.rejection_reason is None
        else:
            assert placement.reservation == {}
        assert (None, placement.status) in ALLOWED_TRANSITIONS
        assert plan.outcomes[placement.command.message_id].value == placement.status.value.lower()
        if placement.status is OrderStatus.REJECTED:
            assert placement.rejection_reason

    # a payment reference is taken by at most one order: never by a second one in the batch,
    # never from another order that holds it
    taken = [p.command.payment.key for p in plan.placements if p.status is OrderStatus.CONFIRMED]
    assert len(taken) == len(set(taken))
    for placement in plan.placements:
        holder = holders.get(placement.command.payment.key)
        if placement.status is OrderStatus.CONFIRMED:
            assert holder in (None, placement.command.order_id)

    # a cancellation is either a tombstone for an unknown order or a CONFIRMED -> CANCELLED by its owner
    for cancellation in plan.cancellations:
        earlier = known_orders.get(cancellation.command.order_id)
        if earlier is None:
            assert plan.outcomes[cancellation.command.message_id] is Outcome.CANCEL_REQUESTED
        else:
            assert earlier.status is OrderStatus.CONFIRMED
            assert earlier.client_id == cancellation.command.client_id
            assert plan.outcomes[cancellation.command.message_id] is Outcome.CANCELLED

    # no writes, no outcomes that claim a write happened
    written = {p.command.message_id for p in plan.placements} | {c.command.message_id for c in plan.cancellations}
    for message_id, outcome in plan.outcomes.items():
        if outcome in (Outcome.DUPLICATE, Outcome.KEY_REUSED, Outcome.NOT_CANCELLABLE):
            assert message_id not in written


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=12),
    st.integers(0, 20),
)
def test_batch_order_allocation_is_greedy(quantities, stock):
    """Each order is confirmed exactly when what is left after the earlier confirmed ones suffices."""
    catalog = catalog_of(("X", "USD", 1, stock))
    commands = [place(f"k{i}", lines=[("X", q)], catalog=catalog) for i, q in enumerate(quantities)]
    plan = plan_batch(commands, catalog, {}, {})
    left = stock
    for command, quantity in zip(commands, quantities):
        expected = Outcome.CONFIRMED if quantity <= left else Outcome.REJECTED
        assert plan.outcomes[command.message_id] is expected
        if expected is Outcome.CONFIRMED:
            left -= quantity
