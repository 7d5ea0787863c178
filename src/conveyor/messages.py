"""The queue messages the API sends and the worker reads (validated by conveyor.schemas)."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from conveyor.schemas import SCHEMA_VERSION


def place_message(
    *, order_id: uuid.UUID, client_id: uuid.UUID, idempotency_key: str, fingerprint: str,
    order: dict[str, Any], accepted_at: datetime,
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "order.place",
        "order_id": str(order_id),
        "client_id": str(client_id),
        "idempotency_key": idempotency_key,
        "fingerprint": fingerprint,
        "order": order,
        "accepted_at": accepted_at.isoformat(),
    }


def cancel_message(*, order_id: uuid.UUID, client_id: uuid.UUID, requested_at: datetime) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "order.cancel",
        "order_id": str(order_id),
        "client_id": str(client_id),
        "requested_at": requested_at.isoformat(),
    }
