"""API clients as admins manage them, from the console and the CLI alike."""
from __future__ import annotations

import secrets
import uuid
from typing import Any

from conveyor.adapters.database import Database
from conveyor.services.access import Actor, Role
from conveyor.services.admin import AdminError, NewClient, create_client
from conveyor.services.audit import audit_params, record
from conveyor.services.ordering import hash_api_key

LIST_CLIENTS = """
SELECT json_build_object('id', c.id, 'name', c.name, 'created_at', c.created_at, 'revoked_at', c.revoked_at,
                         'orders', (SELECT count(*) FROM orders o WHERE o.client_id = c.id))::text
FROM clients c
ORDER BY c.revoked_at IS NOT NULL, c.name
"""

# A revoked key's hash is replaced by one no key has, so the API's key lookup needs no change.
REVOKE_CLIENT = """
WITH changed AS (
    UPDATE clients SET revoked_at = now(), api_key_hash = 'revoked:' || id
    WHERE id = CAST(:id AS uuid) AND revoked_at IS NULL
    RETURNING name
), audited AS (
    INSERT INTO admin_audit (actor, action, target, before, after, reason)
    SELECT :audit_actor, :audit_action, :audit_target, json_build_object('name', name, 'revoked', false),
           json_build_object('name', name, 'revoked', true), :audit_reason
    FROM changed
)
SELECT to_json((SELECT name FROM changed))::text
"""

ROTATE_CLIENT = """
WITH changed AS (
    UPDATE clients SET api_key_hash = :key_hash
    WHERE id = CAST(:id AS uuid) AND revoked_at IS NULL
    RETURNING name
), audited AS (
    INSERT INTO admin_audit (actor, action, target, before, after, reason)
    SELECT :audit_actor, :audit_action, :audit_target, NULL, json_build_object('name', name, 'key', 'rotated'),
           :audit_reason
    FROM changed
)
SELECT to_json((SELECT name FROM changed))::text
"""


def list_clients(database: Database, actor: Actor) -> list[dict[str, Any]]:
    actor.require(Role.ADMIN, "manage API clients")
    return database.fetch_json_rows(LIST_CLIENTS)


def create(database: Database, actor: Actor, name: str) -> NewClient:
    """A new client; its key is returned once and stored only as a hash."""
    actor.require(Role.ADMIN, "create API clients")
    client = create_client(database, name.strip())
    record(database, actor, "client.create", f"client:{client.id}", None, {"name": client.name}, None)
    return client


def revoke(database: Database, actor: Actor, client_id: str, reason: str | None = None) -> str:
    actor.require(Role.ADMIN, "revoke API clients")
    name = database.fetch_json(REVOKE_CLIENT, {
        "id": _client_id(client_id), **audit_params(actor, "client.revoke", f"client:{client_id}", None, None, reason)})
    if name is None:
        raise AdminError(f"no active client {client_id}: it does not exist or is already revoked")
    return name


def rotate(database: Database, actor: Actor, client_id: str, reason: str | None = None) -> NewClient:
    """A new key for the client; the old one stops working (within the API's 60 s key cache)."""
    actor.require(Role.ADMIN, "rotate API keys")
    key = "cvk_" + secrets.token_urlsafe(32)
    name = database.fetch_json(ROTATE_CLIENT, {
        "id": _client_id(client_id), "key_hash": hash_api_key(key),
        **audit_params(actor, "client.rotate", f"client:{client_id}", None, None, reason)})
    if name is None:
        raise AdminError(f"no active client {client_id}: it does not exist or was revoked")
    return NewClient(id=uuid.UUID(client_id), name=name, api_key=key)


def _client_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise AdminError(f"{value!r} is not a client id") from None
