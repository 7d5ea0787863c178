"""Dead-lettered order messages: why they failed, and putting them back or away."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from conveyor.ports import Database
from conveyor.services.access import Actor, Role
from conveyor.services.audit import record, require_reason

MAX_LISTED = 100

RECORD_FAILURES = """
INSERT INTO message_failures (message_id, reason, receive_count)
SELECT message_id, reason, receive_count
FROM jsonb_to_recordset(CAST(:failures AS jsonb)) AS f(message_id text, reason text, receive_count integer)
ON CONFLICT (message_id) DO UPDATE SET
    reason = EXCLUDED.reason, receive_count = EXCLUDED.receive_count, failed_at = now()
"""

REASONS = """
SELECT COALESCE(json_object_agg(message_id, json_build_object('reason', reason, 'failed_at', failed_at)), '{}')::text
FROM message_failures
WHERE message_id = ANY (ARRAY(SELECT jsonb_array_elements_text(CAST(:ids AS jsonb))))
"""


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    body: str
    receive_count: int
    sent_at: datetime | None
    attributes: dict[str, Any]  # SQS message attributes, e.g. the correlation id


@dataclass(frozen=True)
class QueueDepths:
    orders_visible: int
    orders_in_flight: int
    dead_letters: int


class DeadLetterQueue(Protocol):
    """The orders queue's DLQ. `ids` None means every message."""

    def peek(self, limit: int) -> list[DeadLetter]: ...

    def redrive(self, ids: set[str] | None) -> list[DeadLetter]: ...

    def delete(self, ids: set[str] | None) -> list[DeadLetter]: ...

    def depths(self) -> QueueDepths: ...


class FailureLog:
    """Where the worker writes why it failed each message: SQS carries no reason into the DLQ."""

    def __init__(self, database: Any):
        self.database = database

    def record(self, reasons: dict[str, str], receive_counts: dict[str, int]) -> None:
        """One statement for the whole batch, written only when some message failed."""
        if reasons:
            self.database.execute(RECORD_FAILURES, {"failures": json.dumps([
                {"message_id": message_id, "reason": reason, "receive_count": receive_counts.get(message_id, 1)}
                for message_id, reason in reasons.items()])})


def decoded(body: str) -> str:
    """The body as indented JSON when it is JSON, else as it came."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body


def list_dead_letters(queue: DeadLetterQueue, database: Database, actor: Actor,
                      limit: int = MAX_LISTED) -> list[dict[str, Any]]:
    actor.require(Role.VIEWER, "read dead letters")
    messages = queue.peek(limit)
    reasons = database.fetch_json(REASONS, {"ids": json.dumps([m.message_id for m in messages])})
    return [{
        "message_id": m.message_id, "body": decoded(m.body), "receive_count": m.receive_count, "sent_at": m.sent_at,
        "reason": (reasons.get(m.message_id) or {}).get("reason"),
        "failed_at": (reasons.get(m.message_id) or {}).get("failed_at"),
    } for m in messages]


def oldest_age_seconds(messages: list[DeadLetter], now: datetime | None = None) -> float | None:
    sent = [m.sent_at for m in messages if m.sent_at is not None]
    return ((now or datetime.now(UTC)) - min(sent)).total_seconds() if sent else None


def redrive(queue: DeadLetterQueue, database: Database, actor: Actor, ids: set[str] | None,
            reason: str | None = None) -> list[str]:
    """Send the chosen messages (all when `ids` is None) back to the orders queue."""
    actor.require(Role.OPERATOR, "redrive dead letters")
    moved = queue.redrive(ids)
    if moved:
        record(database, actor, "dlq.redrive", "queue:orders-dlq", {"message_ids": [m.message_id for m in moved]},
               {"redriven": len(moved)}, reason)
    return [m.message_id for m in moved]


def delete(queue: DeadLetterQueue, database: Database, actor: Actor, ids: set[str] | None,
           reason: str | None) -> list[str]:
    """Delete the chosen messages for good; their bodies stay in the audit log."""
    actor.require(Role.OPERATOR, "delete dead letters")
    reason = require_reason(reason, "delete dead letters")
    deleted = queue.delete(ids)
    if deleted:
        record(database, actor, "dlq.delete", "queue:orders-dlq",
               {"messages": [{"message_id": m.message_id, "body": m.body[:4000]} for m in deleted]},
               {"deleted": len(deleted)}, reason)
    return [m.message_id for m in deleted]
