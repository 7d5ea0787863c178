"""The admin audit log: who did what, to what, before and after, and why. Append-only."""
from __future__ import annotations

import json
from typing import Any

from conveyor.ports import Database
from conveyor.services.access import Actor, Role

# Other services embed this in their own statement, so an action and its audit row commit together.
AUDIT_INSERT = """
INSERT INTO admin_audit (actor, action, target, before, after, reason)
VALUES (:audit_actor, :audit_action, :audit_target, CAST(:audit_before AS jsonb), CAST(:audit_after AS jsonb),
        :audit_reason)
"""

LIST_AUDIT = """
SELECT json_build_object('id', id, 'actor', actor, 'action', action, 'target', target, 'before', before,
                         'after', after, 'reason', reason, 'occurred_at', occurred_at)::text
FROM admin_audit
WHERE (CAST(:target AS text) IS NULL OR target = CAST(:target AS text))
  AND (CAST(:actor AS text) IS NULL OR actor = CAST(:actor AS text))
  AND (CAST(:before_id AS bigint) IS NULL OR id < CAST(:before_id AS bigint))
ORDER BY id DESC
LIMIT :limit
"""


def audit_params(actor: Actor, action: str, target: str, before: Any, after: Any, reason: str | None) -> dict[str, Any]:
    return {
        "audit_actor": actor.name, "audit_action": action, "audit_target": target,
        "audit_before": None if before is None else json.dumps(before, default=str),
        "audit_after": None if after is None else json.dumps(after, default=str),
        "audit_reason": reason,
    }


def record(database: Database, actor: Actor, action: str, target: str, before: Any = None, after: Any = None,
           reason: str | None = None) -> None:
    database.execute(AUDIT_INSERT, audit_params(actor, action, target, before, after, reason))


def entries(database: Database, actor: Actor, *, target: str | None = None, by: str | None = None,
            before_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first; `before_id` pages back. Admins only: the log names every user's actions."""
    actor.require(Role.ADMIN, "read the audit log")
    return database.fetch_json_rows(LIST_AUDIT, {"target": target or None, "actor": by or None,
                                                 "before_id": before_id, "limit": limit})


def require_reason(reason: str | None, action: str) -> str:
    text = (reason or "").strip()
    if not text:
        raise ValueError(f"give a reason to {action}: it goes in the audit log")
    if len(text) > 1000:
        raise ValueError("keep the reason under 1,000 characters")
    return text
