"""The catalog's stock as operators see and adjust it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from conveyor.ports import Database
from conveyor.services.access import Actor, Role
from conveyor.services.admin import import_catalog, read_catalog_csv
from conveyor.services.audit import audit_params, record, require_reason

MAX_ADJUSTMENT = 1_000_000_000

LIST_CATALOG = """
SELECT json_build_object('sku', sku, 'name', name, 'currency', currency, 'unit_price', unit_price,
                         'available', stock_available, 'reserved', stock_reserved, 'updated_at', updated_at)::text
FROM catalog
WHERE CAST(:q AS text) IS NULL OR sku ILIKE '%' || CAST(:q AS text) || '%' OR name ILIKE '%' || CAST(:q AS text) || '%'
ORDER BY sku
LIMIT :limit
"""

# One guarded statement: the change and its audit row commit together, and available stock
# (what is not reserved) never goes below zero, however many operators and workers race.
ADJUST_STOCK = """
WITH changed AS (
    UPDATE catalog SET stock_available = stock_available + :delta, updated_at = now()
    WHERE sku = :sku AND stock_available + :delta >= 0
    RETURNING sku, stock_available, stock_reserved
), audited AS (
    INSERT INTO admin_audit (actor, action, target, before, after, reason)
    SELECT :audit_actor, :audit_action, :audit_target,
           json_build_object('available', stock_available - :delta, 'reserved', stock_reserved),
           json_build_object('available', stock_available, 'reserved', stock_reserved), :audit_reason
    FROM changed
)
SELECT json_build_object(
    'changed', (SELECT json_build_object('sku', sku, 'available', stock_available, 'reserved', stock_reserved)
                FROM changed),
    'current', (SELECT json_build_object('available', stock_available, 'reserved', stock_reserved)
                FROM catalog WHERE sku = :sku)
)::text
"""


class StockError(ValueError):
    pass


def catalog(database: Database, actor: Actor, query: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    actor.require(Role.VIEWER, "read the catalog")
    return database.fetch_json_rows(LIST_CATALOG, {"q": (query or "").strip() or None, "limit": limit})


def adjust_stock(database: Database, actor: Actor, sku: str, delta: int, reason: str | None) -> dict[str, Any]:
    """Add `delta` (negative to remove) to the available stock of `sku`; reserved stock is never touched."""
    actor.require(Role.OPERATOR, "adjust stock")
    reason = require_reason(reason, "adjust stock")
    if delta == 0 or abs(delta) > MAX_ADJUSTMENT:
        raise StockError(f"the adjustment must be a non-zero whole number within ±{MAX_ADJUSTMENT:,}")
    result = database.fetch_json(ADJUST_STOCK, {
        "sku": sku, "delta": delta, **audit_params(actor, "stock.adjust", f"sku:{sku}", None, None, reason)})
    if result["changed"] is None:
        if result["current"] is None:
            raise StockError(f"no SKU {sku!r} in the catalog")
        raise StockError(f"{sku} has {result['current']['available']:,} available (and"
                         f" {result['current']['reserved']:,} reserved by orders): it cannot lose {-delta:,}")
    changed: dict[str, Any] = result["changed"]
    return changed


def import_stock_csv(database: Database, actor: Actor, path: Path, source_name: str, reason: str | None) -> int:
    actor.require(Role.OPERATOR, "import the catalog")
    reason = require_reason(reason, "import the catalog")
    items = read_catalog_csv(path)
    count = import_catalog(database, items)
    record(database, actor, "catalog.import", f"catalog:{source_name}", None,
           {"items": count, "skus": [item["sku"] for item in items[:50]]}, reason)
    return count


