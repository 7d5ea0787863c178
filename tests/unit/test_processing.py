"""BatchProcessor against a fake store, and the catalog CSV reader."""
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fakes import InMemoryOrderStore

from conveyor.domain.orders import BatchPlan, OrderStatus, order_id_for, request_fingerprint
from conveyor.errors import TransientError, database_error
from conveyor.services.admin import AdminError, read_catalog_csv
from conveyor.services.processing import MAX_ATTEMPTS, BatchProcessor, QueueRecord, parse_command

CLIENT = uuid.UUID("00000000-0000-4000-8000-0000000000c1")
ACCEPTED = datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC).isoformat()


def db_error(sqlstate: str) -> Exception:
    """What either database adapter raises for a statement PostgreSQL refused with `sqlstate`."""
    return database_error(f"refused with SQLSTATE {sqlstate}", sqlstate)


def place_body(key: str, lines: list[tuple[str, int]], amount: int, reference: str | None = None,
               **overrides: Any) -> str:
    order = {
        "currency": "USD",
        "lines": [{"sku": s, "quantity": q} for s, q in lines],
        "payment": {"provider": "stripe", "reference": reference or f"pi-{key}", "amount": amount},
    }
    message = {
        "schema_version": 1,
        "type": "order.place",
        "order_id": str(order_id_for(CLIENT, key)),
        "client_id": str(CLIENT),
        "idempotency_key": key,
        "fingerprint": request_fingerprint(order),
        "order": order,
        "accepted_at": ACCEPTED,
    }
    message.update(overrides)
    return json.dumps(message)


def cancel_body(key: str) -> str:
    return json.dumps({
        "schema_version": 1, "type": "order.cancel", "order_id": str(order_id_for(CLIENT, key)),
        "client_id": str(CLIENT), "requested_at": ACCEPTED,
    })


def record(message_id: str, body: str) -> QueueRecord:
    return QueueRecord(message_id=message_id, body=body, correlation_id=f"corr-{message_id}")


class Logger:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _log(self, level: str, message: str, extra: dict[str, Any] | None = None) -> None:
        self.records.append((level, message, extra or {}))

    def info(self, message, extra=None):
        self._log("info", message, extra)

    def warning(self, message, extra=None):
        self._log("warning", message, extra)

    def error(self, message, extra=None):
        self._log("error", message, extra)

    def messages(self, level: str) -> list[str]:
        return [m for lvl, m, _ in self.records if lvl == level]


@pytest.fixture
def store() -> InMemoryOrderStore:
    return InMemoryOrderStore(prices={"APPLE": 100, "PEAR": 250}, stock={"APPLE": 10, "PEAR": 3})


@pytest.fixture
def logger() -> Logger:
    return Logger()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def processor(store, logger, sleeps) -> BatchProcessor:
    return BatchProcessor(store, logger, sleep=sleeps.append)


def test_a_clean_batch_is_applied_in_one_write(processor, store):
    result = processor.process([
        record("m1", place_body("k1", [("APPLE", 2)], 200)),
        record("m2", place_body("k2", [("PEAR", 1), ("APPLE", 1)], 350)),
        record("m3", cancel_body("k1")),
    ])
    assert result.failed_message_ids == []
    assert result.outcomes == {"cancelled": 2, "confirmed": 1}  # k1 placed and cancelled in one batch
    assert result.attempts == 1
    assert len(store.reads) == 1 and len(store.applied) == 1
    assert store.available == {"APPLE": 9, "PEAR": 2}


def test_bad_messages_fail_alone_while_the_rest_is_applied(processor, store, logger):
    records = [
        record("good-1", place_body("k1", [("APPLE", 1)], 100)),
        record("not-json", "{this is not json"),
        record("v2", place_body("k2", [("APPLE", 1)], 100, schema_version=2)),
        record("wrong-type", place_body("k3", [("APPLE", 1)], 100, type="order.ship")),
        record("no-lines", place_body("k4", [], 0)),
        record("good-2", cancel_body("k9")),
    ]
    result = processor.process(records)
    assert sorted(result.failed_message_ids) == ["no-lines", "not-json", "v2", "wrong-type"]
    assert result.outcomes == {"unprocessable": 4, "confirmed": 1, "cancel_requested": 1}
    [(order_ids, skus)] = store.reads
    assert set(order_ids) == {order_id_for(CLIENT, "k1"), order_id_for(CLIENT, "k9")}
    assert skus == ["APPLE"]
    [plan] = store.applied
    assert [p.command.message_id for p in plan.placements] == ["good-1"]
    assert [c.command.message_id for c in plan.cancellations] == ["good-2"]
    unprocessable = [extra for lvl, m, extra in logger.records if m == "unprocessable message"]
    assert sorted(e["message_id"] for e in unprocessable) == sorted(result.failed_message_ids)
    assert all(e["correlation_id"] == f"corr-{e['message_id']}" and e["reason"] for e in unprocessable)


def test_a_batch_of_only_bad_messages_touches_no_database(processor, store):
    result = processor.process([record("a", "[]"), record("b", "")])
    assert result.failed_message_ids == ["a", "b"]
    assert store.reads == [] and store.attempted == []


def test_parse_command_carries_the_message_fields():
    command = parse_command(record("m1", place_body("k1", [("APPLE", 2), ("PEAR", 1)], 450)))
    assert command.message_id == "m1" and command.correlation_id == "corr-m1"
    assert command.order_id == order_id_for(CLIENT, "k1")
    assert [(l.sku, l.quantity) for l in command.lines] == [("APPLE", 2), ("PEAR", 1)]
    assert command.payment.amount == 450 and command.currency == "USD"
    assert command.accepted_at.tzinfo is not None
    with pytest.raises(ValueError, match="not a valid order message"):
        parse_command(record("m2", place_body("k1", [("APPLE", 1)], 100, accepted_at="2025-01-01T00:00:00")))


def test_a_deadlock_is_retried_with_a_fresh_read(processor, store, sleeps, logger):
    failures = [db_error("40P01")]

    def concurrent_worker_then_deadlock(plan: BatchPlan) -> None:
        if failures:
            store.available["PEAR"] = 1  # another worker took PEAR meanwhile
            raise failures.pop()

    store.before_apply = concurrent_worker_then_deadlock
    result = processor.process([
        record("m1", place_body("k1", [("PEAR", 2)], 500)),
        record("m2", place_body("k2", [("APPLE", 1)], 100)),
    ])
    assert result.failed_message_ids == []
    assert result.attempts == 2
    assert len(store.reads) == 2
    first, second = store.attempted
    assert first.placements[0].status is OrderStatus.CONFIRMED
    # decided again on the fresh read: PEAR is now short
    assert second.placements[0].status is OrderStatus.REJECTED
    assert second.placements[0].rejection_reason == "insufficient stock: PEAR"
    assert result.outcomes == {"rejected": 1, "confirmed": 1}
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.02
    assert [e["reason"] for lvl, m, e in logger.records if m == "retrying batch"] == ["deadlock"]


@pytest.mark.parametrize("sqlstate", ["40001", "23514"])
def test_other_retryable_states_are_retried(processor, store, sqlstate):
    failures = [db_error(sqlstate)]

    def fail_once(plan: BatchPlan) -> None:
        if failures:
            raise failures.pop()

    store.before_apply = fail_once
    result = processor.process([record("m1", place_body("k1", [("APPLE", 1)], 100))])
    assert result.failed_message_ids == []
    assert result.outcomes == {"confirmed": 1}
    assert len(store.applied) == 1 and len(store.attempted) == 2


def test_a_persistent_deadlock_gives_up_and_fails_the_whole_batch(processor, store, sleeps):
    def always(plan):
        raise db_error("40P01")

    store.before_apply = always
    result = processor.process([
        record("m1", place_body("k1", [("APPLE", 1)], 100)),
        record("m2", place_body("k2", [("APPLE", 1)], 100)),
    ])
    assert result.failed_message_ids == ["m1", "m2"]
    assert result.outcomes == {"failed": 2}
    assert result.attempts == MAX_ATTEMPTS
    assert len(sleeps) == MAX_ATTEMPTS - 1
    assert store.applied == []


def test_a_non_retryable_error_falls_back_to_one_by_one(processor, store, logger):
    poison = order_id_for(CLIENT, "poison")

    def reject_poison(plan: BatchPlan) -> None:
        ids = {p.command.order_id for p in plan.placements} | {c.command.order_id for c in plan.cancellations}
        if poison in ids:
            raise db_error("22P05")  # e.g. untranslatable character

    store.before_apply = reject_poison
    result = processor.process([
        record("m1", place_body("k1", [("APPLE", 1)], 100)),
        record("bad", place_body("poison", [("APPLE", 1)], 100)),
        record("m3", place_body("k3", [("PEAR", 3)], 750)),
    ])
    assert result.failed_message_ids == ["bad"]
    assert result.outcomes == {"confirmed": 2, "failed": 1}
    assert [len(p.placements) for p in store.applied] == [1, 1]
    assert store.available == {"APPLE": 9, "PEAR": 0}
    assert logger.messages("warning") == ["batch failed; applying its messages one by one"]
    assert poison not in store.orders


def test_a_non_retryable_error_of_a_single_message_fails_it_without_fallback(processor, store, logger):
    def always(plan):
        raise db_error("23505")

    store.before_apply = always
    result = processor.process([record("m1", place_body("k1", [("APPLE", 1)], 100))])
    assert result.failed_message_ids == ["m1"]
    assert result.attempts == 1
    assert logger.messages("warning") == []


def test_a_lost_connection_fails_the_whole_batch_without_fallback(processor, store, logger):
    def drop(plan):
        raise db_error("08006")

    store.before_apply = drop
    result = processor.process([
        record("m1", place_body("k1", [("APPLE", 1)], 100)),
        record("m2", place_body("k2", [("APPLE", 1)], 100)),
    ])
    assert result.failed_message_ids == ["m1", "m2"]
    assert len(store.attempted) == 1
    assert logger.messages("warning") == []


def test_a_connection_error_fails_every_message(processor, store, logger):
    store.read_error = TransientError("the database is unreachable: connection refused")
    result = processor.process([
        record("m1", place_body("k1", [("APPLE", 1)], 100)),
        record("junk", "nope"),
        record("m3", cancel_body("k1")),
    ])
    assert sorted(result.failed_message_ids) == ["junk", "m1", "m3"]
    assert result.outcomes == {"failed": 2, "unprocessable": 1}
    assert store.attempted == []
    [failed] = [e for lvl, m, e in logger.records if m == "messages failed and will be delivered again"]
    assert failed["message_ids"] == ["m1", "m3"]


def test_a_redelivered_batch_is_idempotent(processor, store):
    records = [record("m1", place_body("k1", [("APPLE", 4)], 400))]
    assert processor.process(records).outcomes == {"confirmed": 1}
    assert processor.process(records).outcomes == {"duplicate": 1}
    assert store.available["APPLE"] == 6
    assert len(store.applied) == 1  # the duplicate planned no write


# --- read_catalog_csv ---------------------------------------------------------------------


def write(tmp_path: Path, text: str, *, bom: bool = False, crlf: bool = False) -> Path:
    path = tmp_path / "catalog.csv"
    if crlf:
        text = text.replace("\n", "\r\n")
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


def test_catalog_with_bom_crlf_and_quoted_comma_parses(tmp_path):
    path = write(
        tmp_path,
        'sku,name,currency,unit_price,stock\nAPPLE,"Apple, Granny Smith",USD,150,10\n'
        'SUSHI,Sushi,JPY,900,0\n\n',
        bom=True, crlf=True,
    )
    assert read_catalog_csv(path) == [
        {"sku": "APPLE", "name": "Apple, Granny Smith", "currency": "USD", "unit_price": 150, "stock": 10},
        {"sku": "SUSHI", "name": "Sushi", "currency": "JPY", "unit_price": 900, "stock": 0},
    ]


def test_catalog_columns_are_found_by_name(tmp_path):
    path = write(tmp_path, "stock,unit_price,currency,name,sku\n5,25,EUR,Pear,PEAR\n")
    assert read_catalog_csv(path) == [
        {"sku": "PEAR", "name": "Pear", "currency": "EUR", "unit_price": 25, "stock": 5},
    ]


def test_catalog_missing_column_is_named(tmp_path):
    path = write(tmp_path, "sku,name,currency,unit_price\nAPPLE,Apple,USD,150\n")
    with pytest.raises(AdminError, match="missing column\\(s\\) stock"):
        read_catalog_csv(path)


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("PEAR,Pear,usd,100,1", "'usd' is not an ISO 4217 currency code"),
        ("PEAR,Pear,XXQ,100,1", "'XXQ' is not an ISO 4217 currency code"),
        ("PEAR,Pear,USD,-100,1", "unit_price must be a whole number"),
        ("PEAR,Pear,USD,1.50,1", "unit_price must be a whole number"),
        ("PEAR,Pear,USD,,1", "unit_price must be a whole number"),
        ("PEAR,Pear,USD,100,-1", "stock must be a whole number"),
        ("PEAR,Pear,USD,100,lots", "stock must be a whole number"),
        (",Nameless,USD,100,1", "sku must be 1 to 64 characters"),
        ("PEAR,Pear,USD", "unit_price must be a whole number"),  # short row: missing trailing fields
    ],
)
def test_catalog_bad_rows_are_reported_with_their_line(tmp_path, row, problem):
    path = write(tmp_path, f"sku,name,currency,unit_price,stock\nAPPLE,Apple,USD,150,10\n{row}\n")
    with pytest.raises(AdminError) as info:
        read_catalog_csv(path)
    message = str(info.value)
    assert f"{path}:3:" in message
    assert problem in message


def test_catalog_duplicate_sku_is_reported_with_its_line(tmp_path):
    path = write(tmp_path, "sku,name,currency,unit_price,stock\nA,a,USD,1,1\nB,b,USD,1,1\nA,again,USD,2,2\n")
    with pytest.raises(AdminError, match=r"catalog\.csv:4: SKU A appears twice"):
        read_catalog_csv(path)


def test_catalog_reports_every_bad_line(tmp_path):
    path = write(tmp_path, "sku,name,currency,unit_price,stock\nA,a,usd,1,1\nB,b,USD,x,1\nC,c,USD,1,1\n")
    with pytest.raises(AdminError) as info:
        read_catalog_csv(path)
    lines = str(info.value).splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [f"{path}:2", f"{path}:3"]


def test_a_payment_reference_taken_by_a_concurrent_batch_is_decided_again_and_rejected(processor, store, logger):
    rival = order_id_for(CLIENT, "rival")

    def concurrent_batch_took_the_reference(plan: BatchPlan) -> None:
        if rival not in store.orders:
            store.add(CLIENT, rival, "CONFIRMED", "fp-rival")
            store.orders[rival]["payment"] = ("stripe", "pi_shared")

    store.before_apply = concurrent_batch_took_the_reference
    result = processor.process([
        record("m1", place_body("k1", [("APPLE", 1)], 100, reference="pi_shared")),
        record("m2", place_body("k2", [("APPLE", 1)], 100)),
    ])

    assert result.failed_message_ids == []
    assert result.outcomes == {"rejected": 1, "confirmed": 1}
    first, second = store.attempted
    assert first.placements[0].status is OrderStatus.CONFIRMED
    assert (second.placements[0].status, second.placements[0].rejection_reason) == (
        OrderStatus.REJECTED, "payment reference already used by another order: stripe pi_shared")
    assert [e["reason"] for lvl, m, e in logger.records if m == "retrying batch"] == [
        "payment reference taken by a concurrent worker"]


@pytest.mark.parametrize(("body", "reason"), [
    (json.dumps({"schema_version": 1, "type": "order.cancel", "order_id": "x-secret-x", "client_id": str(CLIENT),
                 "requested_at": "2025-01-01T00:00:00Z"}),
     "not a valid order message: order_id: Input should be a valid UUID"),
    ('{"schema_version": 99, "type": "order.place", "hidden": "x-secret-x"}',
     "not a valid order message: hidden: Extra inputs are not permitted (as order.place); schema_version: Input"
     " should be 1 (as order.place); order_id: Field required (as order.place); and 5 more"),
    ('"x-secret-x"', "not a valid order message: message: Input should be an object"),
    ("\x00x-secret-x", "not a valid order message: message: Invalid JSON"),
])
def test_an_invalid_message_is_described_field_by_field_without_its_content(body, reason):
    with pytest.raises(ValueError) as invalid:
        parse_command(record("m1", body))
    assert str(invalid.value).startswith(reason)
    assert "secret" not in str(invalid.value)
