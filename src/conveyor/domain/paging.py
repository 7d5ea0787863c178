"""Keyset page cursors: the (created_at, id) of a page's last row, opaque to clients."""
from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime

Position = tuple[str, str]  # (created_at as ISO 8601, id)


class InvalidCursor(ValueError):
    """Not a cursor this service handed out."""


def encode_cursor(position: Position) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode()


def decode_cursor(cursor: str) -> Position:
    try:
        created_at, row_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        datetime.fromisoformat(created_at)
        uuid.UUID(row_id)
    except (ValueError, TypeError, AttributeError, binascii.Error):
        raise InvalidCursor("not a cursor this service returned") from None
    return created_at, row_id
