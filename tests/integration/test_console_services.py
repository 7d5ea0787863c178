"""The console's services against a real PostgreSQL: users, roles, stock, clients, orders, audit."""
from __future__ import annotations

import json
import threading
import uuid

import pytest

from conveyor.services import audit, clients, order_queries, stock, users
from conveyor.services.access import Actor, Forbidden, Role
from conveyor.services.admin import AdminError
from conveyor.services.csv_export import csv_lines, safe_cell
from conveyor.services.dead_letters import FailureLog, REASONS
from conveyor.services.ordering import Authenticator, Unauthorized
from conveyor.adapters.order_store import OrderStore
from conveyor.services.processing import BatchProcessor
from support import Shop

ADMIN = Actor(name="root-admin", role=Role.ADMIN)
OPERATOR = Actor(name="ops", role=Role.OPERATOR)
VIEWER = Actor(name="watcher", role=Role.VIEWER)
PASSWORD = "correct horse battery staple"


class Log:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def test_a_user_signs_in_with_the_right_password_only(database):
    users.create_user(database, ADMIN, "alice", Role.OPERATOR, PASSWORD)
    stored = database.fetch_json("SELECT to_json(password_hash)::text FROM console_users WHERE name = 'alice'")
    assert stored.startswith("$argon2id$") and PASSWORD not in stored

    user = users.authenticate(database, "alice", PASSWORD, "10.0.0.1")
    assert (user.name, user.role) == ("alice", Role.OPERATOR)
    with pytest.raises(users.LoginRefused, match="wrong user name or password"):
        users.authenticate(database, "alice", "not the password", "10.0.0.1")
    with pytest.raises(users.LoginRefused, match="wrong user name or password"):
        users.authenticate(database, "nobody", PASSWORD, "10.0.0.1")


def test_sign_in_is_throttled_per_name_and_address_after_failures(database):
    users.create_user(database, ADMIN, "bob", Role.VIEWER, PASSWORD)
    for _ in range(users.MAX_FAILURES):
        with pytest.raises(users.LoginRefused):
            users.authenticate(database, "bob", "guess", "10.0.0.2")
    # Even the right password is refused now, from that address...
    with pytest.raises(users.LoginThrottled, match="wait"):
        users.authenticate(database, "bob", PASSWORD, "10.0.0.2")
    # ...but not from another one.
    assert users.authenticate(database, "bob", PASSWORD, "10.0.0.3").name == "bob"


def test_only_admins_manage_users_and_weak_passwords_are_refused(database):
    with pytest.raises(Forbidden, match="needs the admin role"):
        users.create_user(database, OPERATOR, "carol", Role.VIEWER, PASSWORD)
    with pytest.raises(users.UserError, match="at least 12"):
        users.create_user(database, ADMIN, "carol", Role.VIEWER, "short")
    with pytest.raises(users.UserError, match="letters, digits"):
        users.create_user(database, ADMIN, "<script>", Role.VIEWER, PASSWORD)
    users.create_user(database, ADMIN, "carol", Role.VIEWER, PASSWORD)
    with pytest.raises(users.UserError, match="already exists"):
        users.create_user(database, ADMIN, "carol", Role.ADMIN, PASSWORD)


def test_a_disabled_user_loses_the_session_and_tokens(database):
    created = users.create_user(database, ADMIN, "dave", Role.OPERATOR, PASSWORD)
    dave = users.get_user(database, created["id"])
    token = users.create_api_token(database, dave.actor, "job")
    assert users.actor_for_token(database, token) == dave.actor
    assert users.actor_for_token(database, token + "x") is None

    users.change_user(database, ADMIN, created["id"], disabled=True, reason="left the team")
    assert users.get_user(database, created["id"]) is None
    assert users.actor_for_token(database, token) is None
    with pytest.raises(users.LoginRefused):
        users.authenticate(database, "dave", PASSWORD, "10.0.0.4")


def test_a_revoked_token_stops_working(database):
    created = users.create_user(database, ADMIN, "erin", Role.VIEWER, PASSWORD)
    erin = users.get_user(database, created["id"]).actor
    token = users.create_api_token(database, erin, "laptop")
    [listed] = users.list_api_tokens(database, erin)
    users.revoke_api_token(database, erin, listed["id"])
    assert users.actor_for_token(database, token) is None
    with pytest.raises(users.UserError):
        users.revoke_api_token(database, erin, listed["id"])


def test_stock_adjustment_never_takes_reserved_stock_and_is_audited(database):
    shop = Shop(database, [("A-1", 1000, 10)])
    record, _ = shop.place("k1", [("A-1", 4)])
    BatchProcessor(OrderStore(database), Log()).process([record])
    assert shop.stock()["A-1"] == (6, 4)

    with pytest.raises(Forbidden):
        stock.adjust_stock(database, VIEWER, "A-1", 1, "count")
    with pytest.raises(ValueError, match="reason"):
        stock.adjust_stock(database, OPERATOR, "A-1", 1, "  ")
    with pytest.raises(stock.StockError, match="6 available .* 4 reserved"):
        stock.adjust_stock(database, OPERATOR, "A-1", -7, "shrinkage")
    assert shop.stock()["A-1"] == (6, 4)

    assert stock.adjust_stock(database, OPERATOR, "A-1", -6, "water damage")["available"] == 0
    assert shop.stock()["A-1"] == (0, 4)
    with pytest.raises(stock.StockError, match="no SKU"):
        stock.adjust_stock(database, OPERATOR, "NOPE", 1, "typo")

    [entry] = audit.entries(database, ADMIN, target="sku:A-1")
    assert (entry["actor"], entry["action"], entry["reason"]) == ("ops", "stock.adjust", "water damage")
    assert (entry["before"], entry["after"]) == ({"available": 6, "reserved": 4}, {"available": 0, "reserved": 4})
    with pytest.raises(Forbidden):
        audit.entries(database, OPERATOR)


def test_concurrent_removals_never_drive_available_stock_negative(database):
    shop = Shop(database, [("B-2", 100, 50)])
    outcomes: list[str] = []

    def remove() -> None:
        try:
            stock.adjust_stock(database, OPERATOR, "B-2", -10, "race")
            outcomes.append("ok")
        except stock.StockError:
            outcomes.append("refused")

    threads = [threading.Thread(target=remove) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok"] * 5 + ["refused"] * 3
    assert shop.stock()["B-2"] == (0, 0)


def test_audit_log_is_append_only(database):
    audit.record(database, ADMIN, "test.action", "thing:1", None, {"x": 1}, "because")
    with pytest.raises(Exception, match="append-only"):
        database.execute("UPDATE admin_audit SET reason = 'forged'")
    with pytest.raises(Exception, match="append-only"):
        database.execute("DELETE FROM admin_audit")


def test_clients_are_listed_revoked_and_rotated_by_admins_only(database):
    client = clients.create(database, ADMIN, "acme")
    authenticator = Authenticator(OrderStore(database), ttl_seconds=0)
    assert authenticator.client_for(client.api_key).name == "acme"
    with pytest.raises(Forbidden):
        clients.list_clients(database, OPERATOR)

    rotated = clients.rotate(database, ADMIN, str(client.id), "leaked in a log")
    with pytest.raises(Unauthorized):
        authenticator.client_for(client.api_key)
    assert authenticator.client_for(rotated.api_key).name == "acme"

    clients.revoke(database, ADMIN, str(client.id), "contract ended")
    with pytest.raises(Unauthorized):
        authenticator.client_for(rotated.api_key)
    with pytest.raises(AdminError, match="already revoked"):
        clients.revoke(database, ADMIN, str(client.id))
    with pytest.raises(AdminError, match="not a client id"):
        clients.rotate(database, ADMIN, "'; DROP TABLE clients; --")
    [listed] = clients.list_clients(database, ADMIN)
    assert listed["revoked_at"] is not None
    actions = [e["action"] for e in audit.entries(database, ADMIN, target=f"client:{client.id}")]
    assert actions == ["client.revoke", "client.rotate", "client.create"]


def test_orders_are_found_by_id_reference_client_and_sku_and_paged_by_keyset(database):
    shop = Shop(database, [("A-1", 1000, 100), ("B-2", 500, 100)])
    records, ids = zip(*[shop.place(f"key-{i}", [("A-1" if i % 2 else "B-2", 1)]) for i in range(7)])
    BatchProcessor(OrderStore(database), Log()).process(list(records))

    def found(q=None, status=None):
        rows, _ = order_queries.search(database, VIEWER, order_queries.OrderFilter.parse(q, status, None, None))
        return {row["order_id"] for row in rows}

    assert found(str(ids[3])) == {str(ids[3])}
    assert found("pi_key-4") == {str(ids[4])}
    assert found("a-1") == {str(ids[i]) for i in (1, 3, 5)}
    assert found(shop.client.name[:10]) == {str(i) for i in ids}
    assert found(status="REJECTED") == set()

    seen, cursor = [], None
    while True:
        rows, cursor = order_queries.search(database, VIEWER, order_queries.OrderFilter(), cursor, limit=3)
        seen += [row["order_id"] for row in rows]
        if cursor is None:
            break
    assert sorted(seen) == sorted(str(i) for i in ids) and len(seen) == 7
    with pytest.raises(order_queries.OrderQueryError):
        order_queries.search(database, VIEWER, order_queries.OrderFilter(), "not-a-cursor")
    with pytest.raises(order_queries.OrderQueryError):
        order_queries.OrderFilter.parse(None, "DROP", None, None)


def test_order_export_reads_in_batches_and_guards_formulas(database, monkeypatch):
    shop = Shop(database, [("A-1", 1000, 100)])
    records = [shop.place(f"exp-{i}", [("A-1", 1)])[0] for i in range(5)]
    BatchProcessor(OrderStore(database), Log()).process(records)
    monkeypatch.setattr(order_queries, "EXPORT_BATCH", 2)
    rows = list(order_queries.export_rows(database, VIEWER, order_queries.OrderFilter()))
    assert len(rows) == 5 and len({row[0] for row in rows}) == 5
    text = "".join(csv_lines(["a", "b"], [["=HYPERLINK(\"x\")", "-1"], ["+sum", "@cmd"], ["plain", None]]))
    assert text.splitlines() == ["a,b", "\"'=HYPERLINK(\"\"x\"\")\",'-1", "'+sum,'@cmd", "plain,"]
    assert safe_cell(12) == "12"


def test_order_detail_has_lines_and_the_worker_timeline(database):
    shop = Shop(database, [("A-1", 1000, 100)])
    record, order_id = shop.place("detail", [("A-1", 2)])
    BatchProcessor(OrderStore(database), Log()).process([record])
    order = order_queries.detail(database, VIEWER, str(order_id))
    assert order["total_amount"] == 2000 and order["lines"][0]["line_total"] == 2000
    assert [(e["from"], e["to"]) for e in order["timeline"]] == [(None, "CONFIRMED")]
    assert order_queries.detail(database, VIEWER, "not-a-uuid") is None
    assert order_queries.detail(database, VIEWER, str(uuid.uuid4())) is None


def test_the_failure_log_keeps_the_latest_reason_per_message(database):
    log = FailureLog(database)
    log.record({"m-1": "not a valid order message", "m-2": "deadlock"}, {"m-1": 1, "m-2": 3})
    log.record({"m-1": "still not valid"}, {"m-1": 2})
    log.record({}, {})
    reasons = database.fetch_json(REASONS, {"ids": json.dumps(["m-1", "m-2", "m-3"])})
    assert {k: v["reason"] for k, v in reasons.items()} == {"m-1": "still not valid", "m-2": "deadlock"}


def test_roles_are_ordered():
    assert Role.parse("Operator") is Role.OPERATOR
    assert ADMIN.can(Role.OPERATOR) and OPERATOR.can(Role.VIEWER) and not VIEWER.can(Role.OPERATOR)
    with pytest.raises(ValueError, match="viewer, operator, admin"):
        Role.parse("root")
