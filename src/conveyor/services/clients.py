"""API clients as admins manage them, from the console and the CLI alike."""
from __future__ import annotations

import secrets
import uuid
from typing import Any

from conveyor.ports import Database
from conveyor.services.access import Actor, Role
from conveyor.services.admin import AdminError, ApiKeyRegistry, NewClient, create_client
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
    WHERE (id = CAST(:id AS uuid) OR name = :name) AND revoked_at IS NULL
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


def create(database: Database, actor: Actor, name: str, registry: ApiKeyRegistry | None = None) -> NewClient:
    """A new client; its key is returned once, stored only as a hash (and in the gateway's registry, if any)."""
    actor.require(Role.ADMIN, "create API clients")
    client = create_client(database, name.strip(), registry=registry)
    record(database, actor, "client.create", f"client:{client.id}", None, {"name": client.name}, None)
    return client


def revoke(database: Database, actor: Actor, client: str, reason: str | None = None,
           registry: ApiKeyRegistry | None = None) -> str:
    """Stop a client's key working, named by id or by name: its hash replaced, and removed from the gateway."""
    actor.require(Role.ADMIN, "revoke API clients")
    client_id = _client_id_or_none(client)
    name = database.fetch_json(REVOKE_CLIENT, {
        "id": client_id, "name": None if client_id else client,
        **audit_params(actor, "client.revoke", f"client:{client}", None, None, reason)})
    removed = registry.revoke(name or client) if registry is not None else 0
    if name is None and not removed:
        raise AdminError(f"no active client {client!r}: it does not exist or is already revoked")
    return name or client


def rotate(database: Database, actor: Actor, client_id: str, reason: str | None = None,
           registry: ApiKeyRegistry | None = None) -> NewClient:
    """A new key for the client; the old one stops working (within the API's 60 s key cache)."""
    actor.require(Role.ADMIN, "rotate API keys")
    key = "cvk_" + secrets.token_urlsafe(32)
    name = database.fetch_json(ROTATE_CLIENT, {
        "id": _client_id(client_id), "key_hash": hash_api_key(key),
        **audit_params(actor, "client.rotate", f"client:{client_id}", None, None, reason)})
    if name is None:
        raise AdminError(f"no active client {client_id}: it does not exist or was revoked")
    if registry is not None:
        registry.revoke(name)
        registry.register(name, key)
    return NewClient(id=uuid.UUID(client_id), name=name, api_key=key)


def _client_id_or_none(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _client_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise AdminError(f"{value!r} is not a client id") from None
