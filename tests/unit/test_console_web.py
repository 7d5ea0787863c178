"""The console's pure helpers: redirects, money and time display, CSV safety, roles."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from conveyor.console.web import money, safe_next, when
from conveyor.services.access import Actor, Forbidden, Role
from conveyor.services.audit import require_reason
from conveyor.services.csv_export import csv_lines, safe_cell
from conveyor.services.order_queries import OrderFilter, OrderQueryError


@pytest.mark.parametrize("target, expected", [
    ("/orders?status=CONFIRMED", "/orders?status=CONFIRMED"),
    (None, "/"), ("", "/"), ("https://evil.example/", "/"), ("//evil.example", "/"), ("/\\evil.example", "/"),
    ("javascript:alert(1)", "/"), ("orders", "/"),
])
def test_sign_in_only_returns_to_this_site(target, expected):
    assert safe_next(target) == expected


@pytest.mark.parametrize("amount, currency, text", [
    (1250, "USD", "12.50 USD"), (-5, "USD", "-0.05 USD"), (2400, "JPY", "2,400 JPY"), (1234567, "KWD", "1,234.567 KWD"),
    (None, "USD", "—"), (10, None, "10"),
])
def test_money_is_shown_in_major_units_by_the_currency_exponent(amount, currency, text):
    assert money(amount, currency) == text


def test_times_are_utc_text_with_a_machine_readable_instant():
    paris = datetime(2026, 11, 23, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    assert str(when(paris)) == '<time datetime="2026-11-23T09:00:00Z" title="2026-11-23 09:00:00 UTC">2026-11-23 09:00:00 UTC</time>'
    assert "09:00:00 UTC" in str(when("2026-11-23T09:00:00+00:00"))
    assert str(when(None)) == "—"


@pytest.mark.parametrize("value, cell", [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@SUM(A1)", "'@SUM(A1)"), ("\t=x", "'\t=x"),
    ("pi_1", "pi_1"), (None, ""), (0, "0"),
])
def test_csv_cells_that_look_like_formulas_are_quoted(value, cell):
    assert safe_cell(value) == cell


def test_csv_streams_in_chunks():
    chunks = list(csv_lines(["n"], ([str(n) * 100] for n in range(2000))))
    assert len(chunks) > 1 and "".join(chunks).count("\n") == 2001


def test_roles_gate_actions():
    viewer = Actor("v", Role.VIEWER)
    with pytest.raises(Forbidden, match="v is a viewer and may not adjust stock: it needs the operator role"):
        viewer.require(Role.OPERATOR, "adjust stock")
    Actor("a", Role.ADMIN).require(Role.OPERATOR, "adjust stock")


def test_reasons_are_required_and_bounded():
    assert require_reason("  broken  ", "x") == "broken"
    with pytest.raises(ValueError):
        require_reason(None, "x")
    with pytest.raises(ValueError):
        require_reason("y" * 1001, "x")


def test_order_filters_are_checked():
    parsed = OrderFilter.parse(" pi_1 ", "CONFIRMED", "2026-11-01", "2026-11-02")
    params = parsed.params()
    assert (params["q"], params["q_uuid"], params["status"]) == ("pi_1", None, "CONFIRMED")
    assert params["since"] == datetime(2026, 11, 1, tzinfo=UTC).isoformat()
    assert params["until"] == datetime(2026, 11, 3, tzinfo=UTC).isoformat()  # the whole last day
    with pytest.raises(OrderQueryError):
        OrderFilter.parse(None, None, "11/01/2026", None)
