"""The order state machine under any sequence of deliveries: hypothesis drives places, cancels,
redeliveries and reorderings through plan_batch, applied to the in-memory model of what
APPLY_BATCH_PLAN does (tests/fakes.py, the one the worker's unit tests use). Orders draw their payment reference from a few, so clients retry with a payment already used."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from fakes import FILLED_PLACEHOLDER, InMemoryOrderStore

from conveyor.domain.orders import (
    ALLOWED_TRANSITIONS,
    HOLDS_PAYMENT_REFERENCE,
    CancelOrder,
    Line,
    OrderStatus,
    Payment,
    PlaceOrder,
    order_id_for,
    plan_batch,
)

CLIENT = uuid.UUID("00000000-0000-4000-8000-0000000000c1")
PRICES = {"A": 100, "B": 250}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class OrderLifecycle(RuleBasedStateMachine):
    @initialize(stock=st.fixed_dictionaries({"A": st.integers(0, 12), "B": st.integers(0, 12)}))
    def open_shop(self, stock):
        self.initial = dict(stock)
        self.store = InMemoryOrderStore(prices=PRICES, stock=stock)
        self.sent: list[PlaceOrder | CancelOrder] = []  # every message the API sent, redeliverable
        self.cancel_applied: set[uuid.UUID] = set()
        self.keys = 0

    # Mostly orders that could be filled, so stock runs short; now and then an unknown SKU or a wrong amount.
    @rule(lines=st.lists(st.tuples(st.sampled_from(["A", "B", "A", "B", "Z"]), st.integers(1, 4)),
                         min_size=1, max_size=3),
          wrong_amount=st.integers(0, 9).map(lambda n: n == 0),
          reference=st.sampled_from(["pi_1", "pi_2", "pi_3"]))
    def place(self, lines, wrong_amount, reference):
        self.keys += 1
        key = f"k{self.keys}"
        amount = sum(PRICES.get(sku, 0) * quantity for sku, quantity in lines) + (1 if wrong_amount else 0)
        self.sent.append(PlaceOrder(
            message_id=f"m{len(self.sent)}", order_id=order_id_for(CLIENT, key), client_id=CLIENT,
            idempotency_key=key, fingerprint=f"fp-{key}", currency="USD",
            lines=tuple(Line(sku, quantity) for sku, quantity in lines),
            payment=Payment("stripe", reference, amount), details={}, accepted_at=NOW))

    @rule(data=st.data())
    def cancel(self, data):
        if not self.keys:
            return
        key = f"k{data.draw(st.integers(1, self.keys))}"
        self.sent.append(CancelOrder(message_id=f"m{len(self.sent)}", order_id=order_id_for(CLIENT, key),
                                     client_id=CLIENT, requested_at=NOW))

    @rule(data=st.data())
    def deliver(self, data):
        """A batch of any sent messages, in any order, duplicates included: at-least-once, unordered."""
        if not self.sent:
            return
        batch = data.draw(st.lists(st.sampled_from(self.sent), min_size=1, max_size=10))
        places = [c for c in batch if isinstance(c, PlaceOrder)]
        catalog, known, holders = self.store.read_batch_state(
            [c.order_id for c in batch], [line.sku for c in places for line in c.lines], [c.payment.key for c in places])
        plan = plan_batch(batch, catalog, known, holders)
        self.store.apply(plan)  # one worker: nothing races it, so neither constraint fires
        self.cancel_applied |= {c.command.order_id for c in plan.cancellations}

    @invariant()
    def stock_is_never_oversold_and_is_conserved(self):
        store = self.store
        for sku in PRICES:
            assert store.available[sku] >= 0
            assert store.available[sku] + store.reserved[sku] == self.initial[sku]
            held = sum(row["reservation"].get(sku, 0) for row in store.orders.values()
                       if row["status"] is OrderStatus.CONFIRMED)
            assert store.reserved[sku] == held

    @invariant()
    def every_transition_is_allowed_and_recorded_once(self):
        for _, before, after in self.store.events:
            assert (before, after) in ALLOWED_TRANSITIONS or (before, after) == FILLED_PLACEHOLDER
        assert len(self.store.events) == len(set(self.store.events))

    @invariant()
    def a_payment_reference_is_held_by_one_order_at_most(self):
        held = [row.get("payment") for row in self.store.orders.values() if row["status"] in HOLDS_PAYMENT_REFERENCE]
        assert len(held) == len(set(held))

    @invariant()
    def no_order_is_confirmed_after_its_cancel(self):
        for order_id in self.cancel_applied:
            assert self.store.orders[order_id]["status"] is not OrderStatus.CONFIRMED


OrderLifecycle.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestOrderLifecycle = OrderLifecycle.TestCase
