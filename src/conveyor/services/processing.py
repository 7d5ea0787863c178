"""What the worker does with a batch of queue messages: decide once, write once."""
from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from collections.abc import Callable

from pydantic import ValidationError

from conveyor.domain.orders import (
    CancelOrder,
    Command,
    Line,
    Payment,
    PlaceOrder,
    plan_batch,
)
from conveyor.errors import PermanentError, RetryableConflict, TransientError
from conveyor.ports import Logger, OrderStore
from conveyor.schemas import PlaceOrderMessage, QueueMessage, field_path

MAX_ATTEMPTS = 6


@dataclass(frozen=True)
class QueueRecord:
    message_id: str
    body: str
    correlation_id: str | None = None
    receive_count: int = 1


@dataclass
class BatchResult:
    failed_message_ids: list[str] = field(default_factory=list)
    failure_reasons: dict[str, str] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    settle_latencies_ms: list[float] = field(default_factory=list)  # accepted by the API -> recorded


class BatchProcessor:
    def __init__(self, store: OrderStore, logger: Logger, sleep: Callable[[float], None] = time.sleep):
        self.store = store
        self.logger = logger
        self.sleep = sleep

    def process(self, records: list[QueueRecord]) -> BatchResult:
        """Apply a batch; the result names only the messages SQS should deliver again."""
        result = BatchResult()
        commands: list[Command] = []
        for record in records:
            try:
                commands.append(parse_command(record))
            except ValueError as exc:
                # A message that can never succeed: fail it alone, so redrive takes it to the DLQ.
                self.logger.error(
                    "unprocessable message",
                    extra={"message_id": record.message_id, "correlation_id": record.correlation_id,
                           "receive_count": record.receive_count, "reason": str(exc)[:500]},
                )
                result.failed_message_ids.append(record.message_id)
                result.failure_reasons[record.message_id] = str(exc)[:500]
                result.outcomes["unprocessable"] += 1
        if not commands:
            return result
        try:
            with self.store.pinned():
                self._apply(commands, result)
        except (TransientError, PermanentError) as exc:
            if isinstance(exc, TransientError) or len(commands) == 1:
                # Unreachable or still contended: the whole batch goes back to the queue.
                self._fail(commands, result, exc)
                return result
            # One bad command must not sink the others: isolate it.
            self.logger.warning("batch failed; applying its messages one by one",
                                extra={"reason": str(exc)[:500], "correlation_ids": _correlation_ids(commands)})
            for command in commands:
                try:
                    self._apply([command], result)
                except (TransientError, PermanentError) as single_exc:
                    self._fail([command], result, single_exc)
        return result

    def _apply(self, commands: list[Command], result: BatchResult) -> None:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            result.attempts += 1
            catalog, known, payment_holders = self.store.read_batch_state(
                [c.order_id for c in commands],
                [line.sku for c in commands if isinstance(c, PlaceOrder) for line in c.lines],
                [c.payment.key for c in commands if isinstance(c, PlaceOrder)],
            )
            plan = plan_batch(commands, catalog, known, payment_holders)
            try:
                if plan.has_writes:
                    self.store.apply(plan)
            except RetryableConflict as exc:
                if attempt == MAX_ATTEMPTS:
                    raise
                self.logger.info("retrying batch", extra={"reason": exc.reason, "attempt": attempt,
                                                          "correlation_ids": _correlation_ids(commands)})
                self.sleep(random.uniform(0, 0.01 * 2**attempt))
                continue
            settled_at = datetime.now(UTC)
            result.settle_latencies_ms.extend(
                (settled_at - p.command.accepted_at).total_seconds() * 1000 for p in plan.placements
            )
            for command in commands:
                outcome = plan.outcomes[command.message_id]
                result.outcomes[outcome.value] += 1
                self.logger.info(
                    "order message processed",
                    extra={"message_id": command.message_id, "correlation_id": command.correlation_id,
                           "order_id": str(command.order_id), "outcome": outcome.value},
                )
            return

    def _fail(self, commands: list[Command], result: BatchResult, exc: BaseException) -> None:
        self.logger.error(
            "messages failed and will be delivered again",
            extra={"message_ids": [c.message_id for c in commands], "correlation_ids": _correlation_ids(commands),
                   "reason": str(exc)[:500]},
        )
        result.failed_message_ids.extend(c.message_id for c in commands)
        result.failure_reasons.update((c.message_id, str(exc)[:500]) for c in commands)
        result.outcomes["failed"] += len(commands)


def _correlation_ids(commands: list[Command]) -> list[str]:
    """A batch-level line names every request it concerns, so each one can be traced."""
    return sorted({c.correlation_id for c in commands if c.correlation_id})


def parse_command(record: QueueRecord) -> Command:
    try:
        message = QueueMessage.validate_json(record.body)
    except ValidationError as exc:
        raise ValueError(f"not a valid order message: {describe_invalid(exc)}") from None
    if isinstance(message, PlaceOrderMessage):
        order = message.order
        return PlaceOrder(
            message_id=record.message_id,
            order_id=message.order_id,
            client_id=message.client_id,
            idempotency_key=message.idempotency_key,
            fingerprint=message.fingerprint,
            currency=order.currency,
            lines=tuple([Line(line.sku, line.quantity) for line in order.lines]),
            payment=Payment(order.payment.provider, order.payment.reference, order.payment.amount),
            details=order.model_dump(mode="json", include={"customer", "shipping_address"}, exclude_none=True),
            accepted_at=message.accepted_at,
            correlation_id=record.correlation_id,
        )
    return CancelOrder(
        message_id=record.message_id,
        order_id=message.order_id,
        client_id=message.client_id,
        requested_at=message.requested_at,
        correlation_id=record.correlation_id,
    )


MESSAGE_TYPES = ("order.place", "order.cancel")


def describe_invalid(exc: ValidationError, shown: int = 3) -> str:
    """What is wrong with a message, field by field, without quoting what it holds."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    described = []
    for error in errors[:shown]:
        location = tuple(error["loc"])
        kind = ""
        if location and location[0] in MESSAGE_TYPES:  # the union's tag: say it once, after the field
            kind, location = f" (as {location[0]})", location[1:]
        described.append(f"{field_path(location) if location else 'message'}: {error['msg']}{kind}")
    more = f"; and {len(errors) - shown} more" if len(errors) > shown else ""
    return "; ".join(described) + more
