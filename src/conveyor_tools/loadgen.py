"""`conveyor load`: place orders through the HTTP API and measure accepted-to-settled latency."""
from __future__ import annotations

import json
import random
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import requests
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from conveyor_tools.local.database import STATE_DIR_NAME


class LoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadSettings:
    orders: int = 1000
    concurrency: int = 16
    duplicates: float = 0.1
    api_url: str | None = None
    api_key: str | None = None
    settle_timeout: float = 120.0
    currency: str = "USD"


@dataclass
class Placed:
    order_id: str
    duplicate_sent: bool = False
    duplicate_suppressed: bool = False


def _local_stack(settings: LoadSettings) -> tuple[str, str]:
    state = Path.cwd() / STATE_DIR_NAME
    api_url, api_key = settings.api_url, settings.api_key
    if api_url is None:
        stack_file = state / "stack.json"
        if not stack_file.exists():
            raise LoadError("no running `conveyor dev` in this folder: start it, or pass --api-url and --api-key")
        api_url = json.loads(stack_file.read_text())["api_url"]
    if api_key is None:
        key_file = state / "demo-api-key"
        if not key_file.exists():
            raise LoadError("no demo key in this folder: pass --api-key (see `conveyor clients create`)")
        api_key = key_file.read_text().strip()
    return api_url.rstrip("/"), api_key


def _catalog(currency: str) -> list[tuple[str, int]]:
    from conveyor_tools.local.database import open_command_database

    database = open_command_database()
    items = database.fetch_json(
        "SELECT COALESCE(json_agg(json_build_array(sku, unit_price) ORDER BY sku), '[]')::text"
        " FROM catalog WHERE currency = :currency AND stock_available > 1000",
        {"currency": currency},
    )
    database.dispose()
    if not items:
        raise LoadError(f"no {currency} catalog items with stock: import some with `conveyor catalog import`")
    return [(sku, price) for sku, price in items]


def _order(catalog: list[tuple[str, int]], rng: random.Random, currency: str) -> dict:
    chosen = rng.sample(catalog, k=min(len(catalog), rng.randint(1, 3)))
    lines = [{"sku": sku, "quantity": rng.randint(1, 3)} for sku, _ in chosen]
    amount = sum(price * line["quantity"] for (_, price), line in zip(chosen, lines))
    return {
        "currency": currency,
        "lines": lines,
        "payment": {"provider": "stripe", "reference": f"pi_{uuid.uuid4().hex[:24]}", "amount": amount},
    }


def run_load(settings: LoadSettings, console: Console) -> dict:
    api_url, api_key = _local_stack(settings)
    catalog = _catalog(settings.currency)
    rng = random.Random()
    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers.update({"X-Api-Key": api_key, "Content-Type": "application/json"})
        return local.session

    def post(body: str, key: str) -> str:
        response = session().post(f"{api_url}/orders", data=body, headers={"Idempotency-Key": key}, timeout=30)
        if response.status_code != 202:
            raise LoadError(f"POST /orders answered {response.status_code}: {response.text[:300]}")
        return response.json()["order_id"]

    def place(index: int) -> Placed:
        key = f"load-{uuid.uuid4()}"
        body = json.dumps(_order(catalog, rng, settings.currency))
        placed = Placed(order_id=post(body, key))
        if rng.random() < settings.duplicates:
            placed.duplicate_sent = True
            placed.duplicate_suppressed = post(body, key) == placed.order_id
        return placed

    def fetch(order_id: str) -> dict:
        response = session().get(f"{api_url}/orders/{order_id}", timeout=30)
        if response.status_code == 404:
            return {"status": "PENDING"}
        response.raise_for_status()
        return response.json()

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    started = time.monotonic()
    settled: dict[str, dict] = {}
    with Progress(*columns, console=console) as progress, ThreadPoolExecutor(settings.concurrency) as pool:
        placing = progress.add_task("placing", total=settings.orders)
        placed: list[Placed] = []
        for result in pool.map(place, range(settings.orders)):
            placed.append(result)
            progress.advance(placing)
        settling = progress.add_task("settling", total=len(placed))
        pending = [p.order_id for p in placed]
        deadline = time.monotonic() + settings.settle_timeout
        while pending and time.monotonic() < deadline:
            still = []
            for order_id, order in zip(pending, pool.map(fetch, pending)):
                if order["status"] == "PENDING":
                    still.append(order_id)
                else:
                    settled[order_id] = order
                    progress.advance(settling)
            pending = still
            if pending:
                time.sleep(0.2)
    elapsed = time.monotonic() - started

    latencies = sorted(
        (datetime.fromisoformat(o["created_at"]) - datetime.fromisoformat(o["accepted_at"])).total_seconds() * 1000
        for o in settled.values()
        if o.get("accepted_at")
    )
    statuses = [o["status"] for o in settled.values()]

    def percentile(q: int) -> float | None:
        if len(latencies) < 2:
            return round(latencies[0], 1) if latencies else None
        return round(statistics.quantiles(latencies, n=100, method="inclusive")[q - 1], 1)

    summary = {
        "placed": len(placed),
        "settled": len(settled),
        "unsettled": len(placed) - len(settled),
        "confirmed": statuses.count("CONFIRMED"),
        "rejected": statuses.count("REJECTED"),
        "cancelled": statuses.count("CANCELLED"),
        "duplicates_sent": sum(p.duplicate_sent for p in placed),
        "duplicates_suppressed": sum(p.duplicate_suppressed for p in placed),
        "seconds": round(elapsed, 2),
        "throughput_orders_per_s": round(len(settled) / elapsed, 1) if elapsed else None,
        "latency_ms": {"p50": percentile(50), "p95": percentile(95), "p99": percentile(99)},
    }
    console.print(
        f"placed {summary['placed']}, confirmed {summary['confirmed']}, rejected {summary['rejected']}, "
        f"duplicates suppressed {summary['duplicates_suppressed']}/{summary['duplicates_sent']}, "
        f"{summary['throughput_orders_per_s']} orders/s, accepted→settled p50 {summary['latency_ms']['p50']} ms, "
        f"p95 {summary['latency_ms']['p95']} ms, p99 {summary['latency_ms']['p99']} ms"
    )
    if summary["unsettled"]:
        console.print(f"[yellow]{summary['unsettled']} order(s) did not settle within {settings.settle_timeout:.0f} s; check the worker logs and the DLQ[/yellow]")
    return summary
