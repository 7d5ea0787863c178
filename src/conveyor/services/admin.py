"""Operator tasks: clients and the catalog."""
from __future__ import annotations

import csv
import json
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from conveyor.ports import Database
from conveyor.domain.money import is_currency
from conveyor.services.ordering import hash_api_key

CATALOG_COLUMNS = ("sku", "name", "currency", "unit_price", "stock")

CREATE_CLIENT = """
INSERT INTO clients (id, name, api_key_hash)
VALUES (CAST(:id AS uuid), :name, :key_hash)
ON CONFLICT (name) DO NOTHING
"""

# A revoked client keeps its row (its orders reference it); no SHA-256 hex digest equals this hash.
UPSERT_CATALOG = """
INSERT INTO catalog AS c (sku, name, currency, unit_price, stock_available)
SELECT sku, name, currency, unit_price, stock
FROM jsonb_to_recordset(CAST(:items AS jsonb))
    AS item(sku text, name text, currency text, unit_price bigint, stock integer)
ON CONFLICT (sku) DO UPDATE SET
    name = EXCLUDED.name,
    currency = EXCLUDED.currency,
    unit_price = EXCLUDED.unit_price,
    stock_available = EXCLUDED.stock_available,
    updated_at = now()
"""


class AdminError(ValueError):
    pass


@dataclass(frozen=True)
class NewClient:
    id: uuid.UUID
    name: str
    api_key: str


class ApiKeyRegistry(Protocol):
    """Where the stage's gateway validates keys (API Gateway under a usage plan on AWS)."""

    def register(self, name: str, api_key: str) -> None: ...

    def revoke(self, name: str) -> int: ...


def create_client(database: Database, name: str, api_key: str | None = None,
                  registry: ApiKeyRegistry | None = None) -> NewClient:
    """Create a client; its key is returned once and stored only as a hash (and in the registry, if any)."""
    if not name.strip():
        raise AdminError("a client needs a non-empty name")
    key = api_key or "cvk_" + secrets.token_urlsafe(32)
    client = NewClient(id=uuid.uuid4(), name=name, api_key=key)
    created = database.execute(
        CREATE_CLIENT, {"id": str(client.id), "name": name, "key_hash": hash_api_key(key)}
    )
    if created == 0:
        raise AdminError(f"a client named {name!r} already exists; choose another name")
    if registry is not None:
        try:
            registry.register(name, key)
        except AdminError:
            # The gateway would refuse the key: leave no client that can never be used.
            database.execute("DELETE FROM clients WHERE id = CAST(:id AS uuid)", {"id": str(client.id)})
            raise
    return client


def read_catalog_csv(path: Path) -> list[dict[str, Any]]:
    """Parse and check a catalog CSV (sku,name,currency,unit_price,stock) by header name."""
    items: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CATALOG_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise AdminError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(CATALOG_COLUMNS)}")
        for row in reader:
            line = reader.line_num
            try:
                item = _catalog_item(row)
            except ValueError as exc:
                errors.append(f"{path}:{line}: {exc}")
                continue
            if item["sku"] in items:
                errors.append(f"{path}:{line}: SKU {item['sku']} appears twice")
            items[item["sku"]] = item
    if errors:
        raise AdminError("\n".join(errors[:20]) + ("\n..." if len(errors) > 20 else ""))
    return list(items.values())


def _catalog_item(row: dict[str, str]) -> dict[str, Any]:
    sku = (row["sku"] or "").strip()
    currency = (row["currency"] or "").strip()
    if not sku or len(sku) > 64:
        raise ValueError("sku must be 1 to 64 characters")
    if not is_currency(currency):
        raise ValueError(f"{currency!r} is not an ISO 4217 currency code")
    for column in ("unit_price", "stock"):
        value = (row[column] or "").strip()
        if not value.isdigit():
            raise ValueError(f"{column} must be a whole number >= 0 (minor units for unit_price), got {value!r}")
    return {
        "sku": sku,
        "name": (row["name"] or sku).strip(),
        "currency": currency,
        "unit_price": int(row["unit_price"]),
        "stock": int(row["stock"]),
    }


def import_catalog(database: Database, items: list[dict[str, Any]]) -> int:
    """Insert or update catalog items in one statement; stock sets what is available now."""
    if not items:
        return 0
    database.execute(UPSERT_CATALOG, {"items": json.dumps(items)})
    return len(items)
