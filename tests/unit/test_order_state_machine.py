"""The order state machine under any sequence of deliveries: hypothesis drives places, cancels,
redeliveries and reorderings through plan_batch, applied to a model of what APPLY_BATCH_PLAN does.
Orders draw their payment reference from a few, so clients retry with a payment already used."""
from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from conveyor.domain.orders import (
    ALLOWED_TRANSITIONS,
    HOLDS_PAYMENT_REFERENCE,
    CancelOrder,
    CatalogItem,
    KnownOrder,
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
# A cancel's placeholder filled in by its order: recorded, but not a change of status.
FILLED_PLACEHOLDER = (OrderStatus.CANCELLED, OrderStatus.CANCELLED)


class OrderLifecycle(RuleBasedStateMachine):
    @initialize(stock=st.fixed_dictionaries({"A": st.integers(0, 12), "B": st.integers(0, 12)}))
    def open_shop(self, stock):
        self.initial = dict(stock)
        self.available = dict(stock)
        self.reserved = Counter()
        self.orders: dict[uuid.UUID, dict] = {}  # what the orders table holds
        self.events: list[tuple] = []
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
        catalog = {sku: CatalogItem(sku, "USD", price, self.available[sku]) for sku, price in PRICES.items()}
        known = {order_id: KnownOrder(order_id, CLIENT, row["status"], row["fingerprint"])
                 for order_id, row in self.orders.items()}
        holders = {row["payment"]: order_id for order_id, row in self.orders.items()
                   if row["status"] in HOLDS_PAYMENT_REFERENCE and row["payment"] is not None}
        self._apply(plan_batch(batch, catalog, known, holders))

    def _apply(self, plan):
        """What APPLY_BATCH_PLAN does with a plan; effects follow only from rows it changed."""
        placed = {p.command.order_id for p in plan.placements}
        assert not placed & {c.command.order_id for c in plan.cancellations}, "one statement would write a row twice"
        for placement in plan.placements:
            order_id = placement.command.order_id
            row = self.orders.get(order_id)
            if row is None:
                self.orders[order_id] = {"status": placement.status, "fingerprint": placement.command.fingerprint,
                                         "reservation": placement.reservation,
                                         "payment": placement.command.payment.key}
                self.events.append((order_id, None, placement.status))
                for sku, quantity in placement.reservation.items():
                    self.available[sku] -= quantity
                    self.reserved[sku] += quantity
            elif row["fingerprint"] is None:
                row["fingerprint"] = placement.command.fingerprint
                row["payment"] = placement.command.payment.key
                self.events.append((order_id, *FILLED_PLACEHOLDER))
        for cancellation in plan.cancellations:
            order_id = cancellation.command.order_id
            self.cancel_applied.add(order_id)
            row = self.orders.get(order_id)
            if row is None:
                self.orders[order_id] = {"status": OrderStatus.CANCELLED, "fingerprint": None, "reservation": {},
                                         "payment": None}
                self.events.append((order_id, None, OrderStatus.CANCELLED))
            elif row["status"] is OrderStatus.CONFIRMED:
                row["status"] = OrderStatus.CANCELLED
                self.events.append((order_id, OrderStatus.CONFIRMED, OrderStatus.CANCELLED))
                for sku, quantity in row["reservation"].items():
                    self.available[sku] += quantity
                    self.reserved[sku] -= quantity

    @invariant()
    def stock_is_never_oversold_and_is_conserved(self):
        for sku in PRICES:
            assert self.available[sku] >= 0
            assert self.available[sku] + self.reserved[sku] == self.initial[sku]
            held = sum(row["reservation"].get(sku, 0) for row in self.orders.values()
                       if row["status"] is OrderStatus.CONFIRMED)
            assert self.reserved[sku] == held

    @invariant()
    def every_transition_is_allowed_and_recorded_once(self):
        for _, before, after in self.events:
            assert (before, after) in ALLOWED_TRANSITIONS or (before, after) == FILLED_PLACEHOLDER
        assert len(self.events) == len(set(self.events))

    @invariant()
    def a_payment_reference_is_held_by_one_order_at_most(self):
        held = [row["payment"] for row in self.orders.values() if row["status"] in HOLDS_PAYMENT_REFERENCE]
        assert len(held) == len(set(held))

    @invariant()
    def no_order_is_confirmed_after_its_cancel(self):
        for order_id in self.cancel_applied:
            assert self.orders[order_id]["status"] is not OrderStatus.CONFIRMED


OrderLifecycle.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestOrderLifecycle = OrderLifecycle.TestCase
