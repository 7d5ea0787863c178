"""Money: ISO 4217 exponents and exact conversion to integer minor units."""
from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.domain.money import (
    ISO_4217_CODES,
    MoneyError,
    currency_exponent,
    is_currency,
    to_minor_units,
)
from conveyor.schemas import MAX_AMOUNT


@pytest.mark.parametrize(
    ("code", "exponent"),
    [("JPY", 0), ("ISK", 0), ("KRW", 0), ("USD", 2), ("EUR", 2), ("GBP", 2), ("KWD", 3), ("BHD", 3),
     ("OMR", 3), ("TND", 3)],
)
def test_currency_exponents(code, exponent):
    assert is_currency(code)
    assert currency_exponent(code) == exponent


@pytest.mark.parametrize("code", ["usd", "XXQ", "US", "USDD", "", "XXX", " USD"])
def test_unknown_currency_codes_are_refused(code):
    assert not is_currency(code)
    with pytest.raises(MoneyError, match="unknown ISO 4217 currency code"):
        currency_exponent(code)
    with pytest.raises(MoneyError):
        to_minor_units("1", code)


def test_every_known_code_is_three_upper_case_letters_with_a_known_exponent():
    assert len(ISO_4217_CODES) > 150
    for code in ISO_4217_CODES:
        assert len(code) == 3 and code.isascii() and code.isupper()
        assert currency_exponent(code) in (0, 2, 3)


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("12.50", "USD", 1250),
        ("12.5", "USD", 1250),
        ("0.01", "USD", 1),
        ("0", "USD", 0),
        ("5000", "JPY", 5000),
        ("5000.0", "JPY", 5000),
        ("1.234", "KWD", 1234),
        ("0.001", "BHD", 1),
        ("1e2", "USD", 10000),
        ("-3.20", "EUR", -320),
        ("999999999999.99", "USD", 99999999999999),
        (Decimal("7.77"), "USD", 777),
    ],
)
def test_to_minor_units_is_exact(amount, currency, minor):
    result = to_minor_units(amount, currency)
    assert result == minor
    assert type(result) is int


@pytest.mark.parametrize(
    ("amount", "currency"),
    [("12.501", "USD"), ("0.001", "USD"), ("1.5", "JPY"), ("0.1", "ISK"), ("1.2345", "KWD"),
     ("1e-3", "USD"), (Decimal("0.005"), "EUR")],
)
def test_too_many_decimals_are_refused_not_rounded(amount, currency):
    with pytest.raises(MoneyError, match="decimal places"):
        to_minor_units(amount, currency)


@pytest.mark.parametrize("amount", ["NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf", Decimal("NaN"), Decimal("Infinity")])
def test_non_finite_amounts_are_refused(amount):
    with pytest.raises(MoneyError, match="finite"):
        to_minor_units(amount, "USD")


@pytest.mark.parametrize("amount", ["", "abc", "1,50", "12.50 USD", "$1"])
def test_non_decimal_strings_are_refused(amount):
    with pytest.raises(MoneyError, match="not a decimal amount"):
        to_minor_units(amount, "USD")


@pytest.mark.parametrize(
    ("amount", "currency"),
    [("1.00000000000000000000000000001", "USD"), ("1234567890123456789012345678.9", "JPY")],
)
def test_long_amounts_are_not_rounded(amount, currency):
    with pytest.raises(MoneyError):
        to_minor_units(amount, currency)


def _as_decimal_string(minor: int, exponent: int) -> str:
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor)).rjust(exponent + 1, "0")
    return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}" if exponent else f"{sign}{digits}"


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(ISO_4217_CODES)),
    st.integers(min_value=-MAX_AMOUNT, max_value=MAX_AMOUNT),
)
def test_minor_units_round_trip_through_a_decimal_string(currency, minor):
    exponent = currency_exponent(currency)
    text = _as_decimal_string(minor, exponent)
    assert to_minor_units(text, currency) == minor
    # and via Decimal's own rendering of the same value
    assert to_minor_units(str(Decimal(minor).scaleb(-exponent)), currency) == minor


@given(st.sampled_from(["USD", "KWD"]), st.integers(min_value=0, max_value=MAX_AMOUNT))
def test_one_more_decimal_digit_is_refused(currency, minor):
    text = _as_decimal_string(minor, currency_exponent(currency)) + "1"
    with pytest.raises(MoneyError):
        to_minor_units(text, currency)
