"""Console users: argon2-hashed passwords, throttled sign-in, roles, and per-user API tokens."""
from __future__ import annotations

import functools
import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from conveyor.ports import Database
from conveyor.services.access import Actor, Role
from conveyor.services.audit import AUDIT_INSERT, audit_params

MIN_PASSWORD_LENGTH = 12
MAX_FAILURES = 5  # per name and address within THROTTLE_MINUTES
THROTTLE_MINUTES = 15
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
TOKEN_PREFIX = "cvu_"

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified when the name is unknown, so a wrong name costs as long as a wrong password.
    Made on first use: hashing takes 64 MiB and tens of milliseconds, not for every worker's import."""
    return _hasher.hash(secrets.token_urlsafe(16))

USER_JSON = "json_build_object('id', u.id, 'name', u.name, 'role', u.role, 'disabled', u.disabled_at IS NOT NULL," \
            " 'created_at', u.created_at)"

CREATE_USER = f"""
WITH created AS (
    INSERT INTO console_users (id, name, role, password_hash)
    VALUES (CAST(:id AS uuid), :name, :role, :password_hash)
    ON CONFLICT (name) DO NOTHING
    RETURNING *
), audited AS (
    INSERT INTO admin_audit (actor, action, target, before, after, reason)
    SELECT :audit_actor, :audit_action, :audit_target, NULL, CAST(:audit_after AS jsonb), :audit_reason FROM created
    RETURNING 1
)
SELECT COALESCE((SELECT {USER_JSON} FROM created u), 'null')::text
FROM (SELECT count(*) FROM audited) AS done
"""

FIND_FOR_LOGIN = """
SELECT json_build_object(
    'user', (SELECT json_build_object('id', id, 'name', name, 'role', role, 'password_hash', password_hash)
             FROM console_users WHERE name = :name AND disabled_at IS NULL),
    'recent_failures', (SELECT count(*) FROM console_login_failures
                        WHERE name = :name AND address = :address
                          AND failed_at > now() - make_interval(mins => :minutes))
)::text
"""

RECORD_FAILURE = """
WITH forgotten AS (DELETE FROM console_login_failures WHERE failed_at < now() - interval '1 day')
INSERT INTO console_login_failures (name, address) VALUES (:name, :address)
"""

CLEAR_FAILURES = "DELETE FROM console_login_failures WHERE name = :name AND address = :address"

UPDATE_HASH = "UPDATE console_users SET password_hash = :password_hash WHERE id = CAST(:id AS uuid)"

GET_USER = f"""
SELECT COALESCE((SELECT {USER_JSON} FROM console_users u
                 WHERE u.id = CAST(:id AS uuid) AND u.disabled_at IS NULL), 'null')::text
"""

LIST_USERS = f"SELECT {USER_JSON}::text FROM console_users u ORDER BY u.name"

COUNT_USERS = "SELECT to_json(count(*))::text FROM console_users"

CHANGE_USER = f"""
WITH before AS (SELECT {USER_JSON} AS body FROM console_users u WHERE u.id = CAST(:id AS uuid)),
changed AS (
    UPDATE console_users SET
        role = COALESCE(CAST(:role AS text), role),
        disabled_at = CASE WHEN CAST(:disabled AS boolean) IS NULL THEN disabled_at
                           WHEN CAST(:disabled AS boolean) THEN COALESCE(disabled_at, now()) ELSE NULL END
    WHERE id = CAST(:id AS uuid)
    RETURNING *
),
audited AS (
    INSERT INTO admin_audit (actor, action, target, before, after, reason)
    SELECT :audit_actor, :audit_action, :audit_target, (SELECT body FROM before), {USER_JSON.replace('u.', 'c.')},
           :audit_reason
    FROM changed c
    RETURNING 1
)
SELECT COALESCE((SELECT {USER_JSON.replace('u.', 'c.')} FROM changed c), 'null')::text
FROM (SELECT count(*) FROM audited) AS done
"""

CREATE_TOKEN = f"""
WITH created AS (
    INSERT INTO console_api_tokens (token_hash, user_id, label) VALUES (:token_hash, CAST(:user_id AS uuid), :label)
), audited AS ({AUDIT_INSERT})
SELECT 1
"""

ACTOR_FOR_TOKEN = """
SELECT COALESCE((
    SELECT json_build_object('id', u.id, 'name', u.name, 'role', u.role)
    FROM console_api_tokens t JOIN console_users u ON u.id = t.user_id
    WHERE t.token_hash = :token_hash AND t.revoked_at IS NULL AND u.disabled_at IS NULL
), 'null')::text
"""

LIST_TOKENS = """
SELECT json_build_object('id', left(t.token_hash, 12), 'label', t.label, 'user', u.name,
                         'created_at', t.created_at, 'revoked', t.revoked_at IS NOT NULL)::text
FROM console_api_tokens t JOIN console_users u ON u.id = t.user_id
WHERE CAST(:user_id AS uuid) IS NULL OR t.user_id = CAST(:user_id AS uuid)
ORDER BY t.created_at DESC
"""

REVOKE_TOKEN = """
WITH revoked AS (
    UPDATE console_api_tokens SET revoked_at = now()
    WHERE left(token_hash, 12) = :token_id AND revoked_at IS NULL
      AND (CAST(:user_id AS uuid) IS NULL OR user_id = CAST(:user_id AS uuid))
    RETURNING label
), audited AS (
    INSERT INTO admin_audit (actor, action, target, before, after, reason)
    SELECT :audit_actor, :audit_action, :audit_target, NULL, NULL, :audit_reason FROM revoked
)
SELECT to_json(count(*))::text FROM revoked
"""

SETTING = """
WITH created AS (
    INSERT INTO console_settings (name, value) VALUES (:name, :value) ON CONFLICT (name) DO NOTHING RETURNING value
)
SELECT to_json(COALESCE((SELECT value FROM created), (SELECT value FROM console_settings WHERE name = :name)))::text
"""


class UserError(ValueError):
    """The request cannot be done as asked; the message says what to change."""


class LoginRefused(Exception):
    """Wrong name or password: the message never says which."""


class LoginThrottled(LoginRefused):
    pass


@dataclass(frozen=True)
class ConsoleUser:
    id: str
    name: str
    role: Role

    @property
    def actor(self) -> Actor:
        return Actor(name=self.name, role=self.role, user_id=self.id)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 1024:
        raise UserError("the password is longer than 1,024 characters")
    return password


def create_user(database: Database, actor: Actor, name: str, role: Role, password: str) -> dict[str, Any]:
    actor.require(Role.ADMIN, "create users")
    if not NAME_PATTERN.match(name):
        raise UserError("a user name is 1 to 64 letters, digits, or . _ @ -")
    user_id = str(uuid.uuid4())
    created: dict[str, Any] = database.fetch_json(CREATE_USER, {
        "id": user_id, "name": name, "role": role.label, "password_hash": _hasher.hash(check_password(password)),
        **audit_params(actor, "user.create", f"user:{name}", None, {"name": name, "role": role.label}, None),
    })
    if created is None:
        raise UserError(f"a user named {name!r} already exists; choose another name")
    return created


def authenticate(database: Database, name: str, password: str, address: str) -> ConsoleUser:
    """The user, if the password is right and this name and address have not failed too often lately."""
    name, address = name.strip()[:64], address[:64]
    state = database.fetch_json(FIND_FOR_LOGIN, {"name": name, "address": address, "minutes": THROTTLE_MINUTES})
    if state["recent_failures"] >= MAX_FAILURES:
        raise LoginThrottled(f"too many failed sign-ins for this name from your address; wait {THROTTLE_MINUTES}"
                             " minutes, or ask an admin")
    row = state["user"]
    try:
        _hasher.verify(row["password_hash"] if row else _dummy_hash(), password)
        if row is None:
            raise VerificationError()
    except (VerificationError, InvalidHashError):
        database.execute(RECORD_FAILURE, {"name": name, "address": address})
        raise LoginRefused("wrong user name or password") from None
    database.execute(CLEAR_FAILURES, {"name": name, "address": address})
    if _hasher.check_needs_rehash(row["password_hash"]):
        database.execute(UPDATE_HASH, {"id": row["id"], "password_hash": _hasher.hash(password)})
    return ConsoleUser(id=row["id"], name=row["name"], role=Role.parse(row["role"]))


def get_user(database: Database, user_id: str) -> ConsoleUser | None:
    """An enabled user; None once disabled, so a disabled user's session ends at its next request."""
    try:
        uuid.UUID(user_id)
    except ValueError:
        return None
    row = database.fetch_json(GET_USER, {"id": user_id})
    return None if row is None else ConsoleUser(id=row["id"], name=row["name"], role=Role.parse(row["role"]))


def has_users(database: Database) -> bool:
    return bool(database.fetch_json(COUNT_USERS) > 0)


def list_users(database: Database, actor: Actor) -> list[dict[str, Any]]:
    actor.require(Role.ADMIN, "list users")
    return database.fetch_json_rows(LIST_USERS)


def change_user(database: Database, actor: Actor, user_id: str, *, role: Role | None = None,
                disabled: bool | None = None, reason: str | None = None) -> dict[str, Any]:
    actor.require(Role.ADMIN, "change users")
    if actor.user_id == user_id:
        raise UserError("you cannot change your own role or disable yourself; ask another admin")
    changed: dict[str, Any] = database.fetch_json(CHANGE_USER, {
        "id": user_id, "role": role.label if role else None, "disabled": disabled,
        **audit_params(actor, "user.change", f"user:{user_id}", None, None, reason),
    })
    if changed is None:
        raise UserError(f"no user {user_id}")
    return changed


def create_api_token(database: Database, actor: Actor, label: str) -> str:
    """A bearer token for the console's JSON API, acting as `actor`; returned once, stored as a hash."""
    if actor.user_id is None:
        raise UserError("only a signed-in user can hold API tokens")
    label = label.strip()[:100] or "API token"
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    database.fetch_json(CREATE_TOKEN, {
        "token_hash": hash_token(token), "user_id": actor.user_id, "label": label,
        **audit_params(actor, "token.create", f"user:{actor.name}", None, {"label": label}, None),
    })
    return token


def list_api_tokens(database: Database, actor: Actor) -> list[dict[str, Any]]:
    """Admins see every user's tokens; others their own."""
    return database.fetch_json_rows(LIST_TOKENS, {"user_id": None if actor.can(Role.ADMIN) else actor.user_id})


def revoke_api_token(database: Database, actor: Actor, token_id: str) -> None:
    revoked = database.fetch_json(REVOKE_TOKEN, {
        "token_id": token_id, "user_id": None if actor.can(Role.ADMIN) else actor.user_id,
        **audit_params(actor, "token.revoke", f"token:{token_id}", None, None, None),
    })
    if not revoked:
        raise UserError(f"no active token {token_id} that you may revoke")


def actor_for_token(database: Database, token: str) -> Actor | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = database.fetch_json(ACTOR_FOR_TOKEN, {"token_hash": hash_token(token)})
    return None if row is None else Actor(name=row["name"], role=Role.parse(row["role"]), user_id=row["id"])


def stored_secret(database: Database, name: str) -> str:
    """A random secret kept in the database, the same for every process that asks."""
    return str(database.fetch_json(SETTING, {"name": name, "value": secrets.token_urlsafe(48)}))
