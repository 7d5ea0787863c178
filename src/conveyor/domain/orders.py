"""Orders, the messages that change them, and the rules that decide their fate."""
from __future__ import annotations

import functools
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

class OrderStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


# An order in one of these states holds its payment reference: a payment settles at most one order,
# so another order with that (provider, reference) is rejected. A turned-down order frees it for a retry.
HOLDS_PAYMENT_REFERENCE = frozenset({OrderStatus.PENDING, OrderStatus.CONFIRMED})


# Every transition the worker may write; anything else is a bug.
ALLOWED_TRANSITIONS: frozenset[tuple[OrderStatus | None, OrderStatus]] = frozenset(
    {
        (None, OrderStatus.CONFIRMED),
        (None, OrderStatus.REJECTED),
        (None, OrderStatus.CANCELLED),
        (OrderStatus.CONFIRMED, OrderStatus.CANCELLED),
    }
)


@functools.lru_cache(maxsize=4096)  # a batch checks every message's order against its client
def _client_tag(client_id: uuid.UUID) -> bytes:
    return hashlib.sha256(b"conveyor-client:" + client_id.bytes).digest()[:6]


def order_id_for(client_id: uuid.UUID, idempotency_key: str) -> uuid.UUID:
    """A UUIDv8 derived from (client, Idempotency-Key): a retried POST maps to the same order.

    The first 48 bits are a tag of the client, so an order id can be checked against its
    caller without a lookup: nobody can cancel, or reserve the id of, another client's order.
    """
    digest = hashlib.sha256(client_id.bytes + idempotency_key.encode()).digest()
    raw = bytearray(_client_tag(client_id) + digest[:10])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8 (RFC 9562)
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
    return uuid.UUID(bytes=bytes(raw))


def belongs_to(order_id: uuid.UUID, client_id: uuid.UUID) -> bool:
    return order_id.bytes[:6] == _client_tag(client_id)


def request_fingerprint(order: dict[str, Any]) -> str:
    """A stable hash of an order request, to tell a retry from a reused key."""
    canonical = json.dumps(order, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


# The commands and values a batch builds by the hundred are NamedTuples: immutable like a frozen
# dataclass, and built in a third of the time (a frozen dataclass sets each field through
# object.__setattr__).


class Line(NamedTuple):
    sku: str
    quantity: int


PaymentKey = tuple[str, str]  # (payment provider, payment reference)


class Payment(NamedTuple):
    provider: str
    reference: str
    amount: int

    @property
    def key(self) -> PaymentKey:
        return (self.provider, self.reference)


class PlaceOrder(NamedTuple):
    """The worker's view of an accepted POST /orders."""

    message_id: str
    order_id: uuid.UUID
    client_id: uuid.UUID
    idempotency_key: str
    fingerprint: str
    currency: str
    lines: tuple[Line, ...]
    payment: Payment
    details: dict[str, Any]
    accepted_at: datetime
    correlation_id: str | None = None


class CancelOrder(NamedTuple):
    message_id: str
    order_id: uuid.UUID
    client_id: uuid.UUID
    requested_at: datetime
    correlation_id: str | None = None


Command = PlaceOrder | CancelOrder


class CatalogItem(NamedTuple):
    sku: str
    currency: str
    unit_price: int
    stock_available: int


class KnownOrder(NamedTuple):
    """What the database already holds for an order id."""

    order_id: uuid.UUID
    client_id: uuid.UUID
    status: OrderStatus
    fingerprint: str | None  # None: a cancel arrived before the order itself

    @property
    def placed(self) -> bool:
        return self.fingerprint is not None


class PricedLine(NamedTuple):
    line_no: int
    sku: str
    quantity: int
    unit_price: int | None  # None when the SKU is unknown


class Placement(NamedTuple):
    command: PlaceOrder
    status: OrderStatus
    rejection_reason: str | None
    lines: tuple[PricedLine, ...]
    total_amount: int | None
    reservation: dict[str, int]  # sku -> quantity held while CONFIRMED
    cause: str


class Cancellation(NamedTuple):
    command: CancelOrder


class Outcome(StrEnum):
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    CANCEL_REQUESTED = "cancel_requested"
    DUPLICATE = "duplicate"
    KEY_REUSED = "key_reused"
    NOT_CANCELLABLE = "not_cancellable"
    NOT_YOURS = "not_yours"


PLACEMENT_OUTCOMES = {
    OrderStatus.CONFIRMED: Outcome.CONFIRMED,
    OrderStatus.REJECTED: Outcome.REJECTED,
    OrderStatus.CANCELLED: Outcome.CANCELLED,
}


@dataclass
class BatchPlan:
    """The writes one batch needs, and what each message came to."""

    placements: list[Placement] = field(default_factory=list)
    cancellations: list[Cancellation] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    @property
    def has_writes(self) -> bool:
        return bool(self.placements or self.cancellations)


def plan_batch(
    commands: list[Command],
    catalog: dict[str, CatalogItem],
    known: dict[uuid.UUID, KnownOrder],
    payment_holders: dict[PaymentKey, uuid.UUID],
) -> BatchPlan:
    """Decide every command of a batch against one read of the database.

    Stock is allocated in batch order from the stock read; the database's
    non-negative stock constraint catches a concurrent worker that took it first.
    `payment_holders` maps the batch's payment references to the order holding each
    (HOLDS_PAYMENT_REFERENCE). A new order whose reference another order holds is
    rejected; within the batch, the first order in batch order that is confirmed takes
    the reference, as it takes stock. A cancel in the same batch does not free its
    order's reference for this batch. The database's unique index on held references
    catches a concurrent worker that took the reference first.
    """
    plan = BatchPlan()
    owned: list[Command] = []
    for command in commands:
        if belongs_to(command.order_id, command.client_id):
            owned.append(command)
        else:
            plan.outcomes[command.message_id] = Outcome.NOT_YOURS
    remaining = {sku: item.stock_available for sku, item in catalog.items()}
    cancelled_in_batch = {c.order_id for c in owned if isinstance(c, CancelOrder)}
    # Orders this batch records for the first time; a cancel for one is folded into its placement.
    new_in_batch = {
        c.order_id for c in owned
        if isinstance(c, PlaceOrder) and not (c.order_id in known and known[c.order_id].placed)
    }
    placed_in_batch: dict[uuid.UUID, PlaceOrder] = {}
    cancels_seen: set[uuid.UUID] = set()
    held = dict(payment_holders)  # grows as the batch's own orders take references

    for command in owned:
        if isinstance(command, PlaceOrder):
            earlier = known.get(command.order_id)
            first = placed_in_batch.get(command.order_id)
            if first is not None or (earlier is not None and earlier.placed):
                fingerprint = first.fingerprint if first else earlier.fingerprint  # type: ignore[union-attr]
                plan.outcomes[command.message_id] = (
                    Outcome.DUPLICATE if fingerprint == command.fingerprint else Outcome.KEY_REUSED
                )
                continue
            placed_in_batch[command.order_id] = command
            cancelled_first = earlier is not None or command.order_id in cancelled_in_batch
            placement = _place(command, catalog, remaining, cancelled_first, held)
            if placement.status in HOLDS_PAYMENT_REFERENCE:
                held[command.payment.key] = command.order_id
            plan.placements.append(placement)
            plan.outcomes[command.message_id] = PLACEMENT_OUTCOMES[placement.status]
        elif command.order_id in cancels_seen:
            plan.outcomes[command.message_id] = Outcome.DUPLICATE
        else:
            cancels_seen.add(command.order_id)
            if command.order_id in new_in_batch:
                plan.outcomes[command.message_id] = Outcome.CANCELLED
            else:
                plan.outcomes[command.message_id] = _plan_cancel(command, known.get(command.order_id), plan)
    return plan


def _plan_cancel(command: CancelOrder, earlier: KnownOrder | None, plan: BatchPlan) -> Outcome:
    if earlier is None:
        plan.cancellations.append(Cancellation(command))
        return Outcome.CANCEL_REQUESTED
    if earlier.status is OrderStatus.CANCELLED:
        return Outcome.DUPLICATE
    if earlier.status is OrderStatus.REJECTED:
        return Outcome.NOT_CANCELLABLE
    plan.cancellations.append(Cancellation(command))
    return Outcome.CANCELLED


def _place(
    command: PlaceOrder,
    catalog: dict[str, CatalogItem],
    remaining: dict[str, int],
    cancelled_first: bool,
    held: dict[PaymentKey, uuid.UUID],
) -> Placement:
    priced: list[PricedLine] = []
    wanted: dict[str, int] = {}
    total: int | None = 0
    for number, line in enumerate(command.lines, start=1):
        item = catalog.get(line.sku)
        if item is None:
            total = None
            priced.append(PricedLine(number, line.sku, line.quantity, None))
        else:
            if total is not None:
                total += item.unit_price * line.quantity
            priced.append(PricedLine(number, line.sku, line.quantity, item.unit_price))
        wanted[line.sku] = wanted.get(line.sku, 0) + line.quantity
    lines = tuple(priced)

    if cancelled_first:
        cause = "cancel requested before the order arrived"
        return Placement(command, OrderStatus.CANCELLED, None, lines, total, {}, cause)
    reason = rejection_reason(command, catalog, wanted, remaining, total, held)
    if reason is not None:
        return Placement(command, OrderStatus.REJECTED, reason, lines, total, {}, reason)
    for sku, quantity in wanted.items():
        remaining[sku] -= quantity
    return Placement(command, OrderStatus.CONFIRMED, None, lines, total, wanted, "stock reserved")


def rejection_reason(
    command: PlaceOrder,
    catalog: dict[str, CatalogItem],
    wanted: dict[str, int],
    remaining: dict[str, int],
    total: int | None,
    held: dict[PaymentKey, uuid.UUID],
) -> str | None:
    """Why the order cannot be confirmed, the first rule it breaks in this order; None if it can."""
    if total is None:
        return f"unknown SKU: {', '.join(sorted(sku for sku in wanted if sku not in catalog))}"
    other_currency = [sku for sku in wanted if catalog[sku].currency != command.currency]
    if other_currency:
        return f"SKU not sold in {command.currency}: {', '.join(sorted(other_currency))}"
    if command.payment.amount != total:
        return (
            f"payment amount {command.payment.amount} does not equal the order total {total}"
            f" {command.currency}"
        )
    holder = held.get(command.payment.key)
    if holder is not None and holder != command.order_id:
        # Names the reference, never the other order: it may be another client's.
        return f"payment reference already used by another order: {command.payment.provider} {command.payment.reference}"
    short = [sku for sku, quantity in wanted.items() if remaining[sku] < quantity]
    if short:
        return f"insufficient stock: {', '.join(sorted(short))}"
    return None
