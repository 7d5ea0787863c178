"""The console's pages through Flask's test client against a real PostgreSQL: sign-in, CSRF, roles, escaping."""
from __future__ import annotations

import re
import uuid

import pytest

from conveyor.adapters.order_store import OrderStore
from conveyor.console.app import Services, create_app
from conveyor.console.settings import DatabaseSettings
from conveyor.services import users
from conveyor.services.access import Actor, Role
from conveyor.services.processing import BatchProcessor
from support import Shop

PASSWORD = "a long enough password"
ROOT = Actor(name="setup", role=Role.ADMIN)


class Log:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@pytest.fixture
def app(database, database_url, monkeypatch, tmp_path):
    monkeypatch.setenv("CONVEYOR_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.delenv("CONSOLE_ADMIN_TOKEN", raising=False)
    for name, role in (("ada", Role.ADMIN), ("otto", Role.OPERATOR), ("vera", Role.VIEWER)):
        users.create_user(database, ROOT, name, role, PASSWORD)
    services = Services(lambda: DatabaseSettings(direct_url=database_url))
    yield create_app(services)
    services.drain(10)


def csrf(page: bytes) -> str:
    return re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()


def sign_in(client, name: str, password: str = PASSWORD, **extra):
    token = csrf(client.get("/login").data)
    return client.post("/login", data={"csrf_token": token, "name": name, "password": password, **extra})


def test_pages_need_a_session_and_sign_in_lands_where_asked(app):
    client = app.test_client()
    answer = client.get("/orders?status=CONFIRMED")
    assert answer.status_code == 302 and "/login?next=" in answer.location
    signed = sign_in(client, "vera", next="/orders?status=CONFIRMED")
    assert signed.status_code == 302 and signed.location == "/orders?status=CONFIRMED"
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.get("/orders").status_code == 200


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"])
def test_sign_in_never_redirects_off_site(app, target):
    answer = sign_in(app.test_client(), "vera", next=target)
    assert answer.status_code == 302 and answer.location == "/"


def test_the_session_cookie_is_secure_over_https(app):
    client = app.test_client()
    token = csrf(client.get("/login", base_url="https://localhost").data)
    answer = client.post("/login", base_url="https://localhost",
                         data={"csrf_token": token, "name": "vera", "password": PASSWORD})
    assert "Secure" in answer.headers["Set-Cookie"]


def test_a_wrong_password_is_refused_and_posts_need_the_csrf_token(app):
    client = app.test_client()
    refused = sign_in(client, "vera", "wrong password!")
    assert refused.status_code == 401 and b"wrong user name or password" in refused.data
    forged = client.post("/login", data={"name": "vera", "password": PASSWORD})
    assert forged.status_code == 400 and b"Form expired" in forged.data
    sign_in(client, "otto")
    no_token = client.post("/stock/A-1/adjust", data={"delta": "5", "reason": "x"})
    assert no_token.status_code == 400


def test_sign_out_ends_the_session(app):
    client = app.test_client()
    sign_in(client, "otto")
    page = client.get("/")
    assert page.status_code == 200
    client.post("/logout", data={"csrf_token": csrf(page.data)})
    assert client.get("/").status_code == 302


def test_a_viewer_sees_no_actions_and_is_refused_when_posting_anyway(app, database):
    Shop(database, [("A-1", 100, 10)])
    client = app.test_client()
    sign_in(client, "vera")
    page = client.get("/stock")
    assert page.status_code == 200 and b"A-1" in page.data and b"Adjust" not in page.data
    refused = client.post("/stock/A-1/adjust", data={"csrf_token": csrf(page.data), "delta": "5", "reason": "x"})
    assert refused.status_code == 403 and b"viewer" in refused.data
    assert client.get("/audit").status_code == 403
    assert client.get("/clients").status_code == 403
    assert client.get("/users").status_code == 403
    assert database.fetch_json("SELECT to_json(stock_available)::text FROM catalog WHERE sku = 'A-1'") == 10


def test_an_operator_adjusts_stock_and_an_admin_reads_it_in_the_audit_log(app, database):
    Shop(database, [("A-1", 100, 10)])
    operator = app.test_client()
    sign_in(operator, "otto")
    page = operator.get("/stock")
    operator.post("/stock/A-1/adjust", data={"csrf_token": csrf(page.data), "delta": "-3", "reason": "broken <b>jar</b>"})
    assert b"7 available now" in operator.get("/stock").data
    admin = app.test_client()
    sign_in(admin, "ada")
    log = admin.get("/audit").data
    assert b"stock.adjust" in log and b"broken &lt;b&gt;jar&lt;/b&gt;" in log and b"<b>jar" not in log


def test_orders_are_searched_shown_and_exported(app, database):
    shop = Shop(database, [("A-1", 1000, 10)])
    record, order_id = shop.place("=cmd|calc", [("A-1", 2)])
    BatchProcessor(OrderStore(database), Log()).process([record])
    client = app.test_client()
    sign_in(client, "vera")
    listing = client.get("/orders", query_string={"q": "pi_=cmd|calc"})
    assert str(order_id)[:8].encode() in listing.data
    detail = client.get(f"/orders/{order_id}")
    assert detail.status_code == 200 and b"CONFIRMED" in detail.data and b"20.00 USD" in detail.data
    assert b"Cancel order" not in detail.data  # a viewer
    export = client.get("/orders.csv", query_string={"status": "CONFIRMED"})
    assert export.mimetype == "text/csv"
    lines = export.data.decode().splitlines()
    assert lines[0].startswith("order_id,") and len(lines) == 2 and "'pi_=cmd|calc" not in lines[1]
    assert client.get(f"/orders/{uuid.uuid4()}").status_code == 404
    assert client.get("/orders", query_string={"since": "yesterday"}).status_code == 200


def test_an_admin_creates_a_client_and_sees_its_key_once(app, database):
    client = app.test_client()
    sign_in(client, "ada")
    page = client.get("/clients")
    created = client.post("/clients", data={"csrf_token": csrf(page.data), "name": "acme <script>"})
    key = re.search(rb"<code class=\"secret\">(cvk_[^<]+)</code>", created.data).group(1)
    assert b"acme &lt;script&gt;" in created.data
    assert key not in client.get("/clients").data


def test_a_users_api_token_acts_with_its_role(app, database):
    client = app.test_client()
    sign_in(client, "vera")
    page = client.get("/account")
    made = client.post("/account", data={"csrf_token": csrf(page.data), "label": "script"})
    token = re.search(rb"(cvu_[A-Za-z0-9_-]+)", made.data).group(1).decode()
    api = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    assert api.get(f"/api/reconciliations/{uuid.uuid4()}", headers=auth).status_code == 404
    refused = api.post("/api/reconciliations", headers=auth, json={"source": "/nope.csv"})
    assert refused.status_code == 403
