"""Settlement report parsing: format detection, columns by name, exact minor units."""
from __future__ import annotations

import io

import pytest

from conveyor.reconciliation.formats import (
    STAGING_COLUMNS,
    MalformedRow,
    SettlementReader,
    SettlementReportError,
    amount_in_minor_units,
    detect_format,
)


def records(text: str, format: str | None = None) -> list[dict]:
    reader = SettlementReader(io.StringIO(text, newline=""), format)
    rows = [dict(zip(STAGING_COLUMNS, record)) for record in reader.records()]
    reader.raise_if_malformed()
    return rows


@pytest.mark.parametrize(("amount", "currency", "minor"), [
    ("12.50", "USD", 1250), ("12.5", "USD", 1250), ("12", "USD", 1200), ("-0.07", "USD", -7),
    ("12.500", "USD", 1250),  # trailing zeros beyond the exponent are still exact
    ("5000", "JPY", 5000), ("5000.00", "JPY", 5000), ("-300", "JPY", -300),
    ("12.345", "KWD", 12345), ("0.5", "KWD", 500), ("1.500", "BHD", 1500), ("-0.001", "BHD", -1),
    ("1E+2", "USD", 10000),
])
def test_amounts_become_exact_minor_units_by_currency_exponent(amount, currency, minor):
    assert amount_in_minor_units(amount, currency) == minor


@pytest.mark.parametrize(("amount", "currency"), [
    ("12.505", "USD"), ("1.5", "JPY"), ("12.3456", "KWD"), ("0.0001", "BHD"),
    ("12,50", "USD"), ("1,250.00", "USD"), ("", "USD"), ("abc", "USD"), ("NaN", "USD"), ("Infinity", "USD"),
    ("1.00", "XXX"),
])
def test_an_amount_that_needs_rounding_or_is_not_a_number_is_refused(amount, currency):
    with pytest.raises(MalformedRow):
        amount_in_minor_units(amount, currency)


STRIPE = (
    "\ufeffbalance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,description,"
    "charge_id,payment_intent_id\r\n"
    'txn_1,2026-10-01 09:12:00,usd,12.50,0.66,11.84,charge,"Order 1, ""gift""",ch_1,pi_1\r\n'
    "txn_2,2026-10-02 10:00:00,usd,-12.50,0.00,-12.50,refund,Refund,ch_1,pi_1\r\n"
    "txn_3,2026-10-02 11:00:00,jpy,5000,180,4820,charge,,ch_3,\r\n"
    "txn_4,2026-10-03 00:00:00,usd,-2.00,0.00,-2.00,fee,Radar,,\r\n"
    "txn_5,2026-10-04 00:00:00,usd,-100.00,0.00,-100.00,payout,,,\r\n"
    "txn_6,2026-10-05 00:00:00,usd,1.00,0.00,1.00,dispute_reversal,,ch_9,pi_9\r\n"
    "txn_7,2026-10-05 00:00:00,usd,0.10,0.00,0.10,adjustment,,,\r\n"
)


def test_a_stripe_export_with_bom_crlf_and_quoted_commas():
    rows = records(STRIPE)

    assert [row["record_type"] for row in rows] == [
        "payment", "refund", "payment", "fee", "payout", "chargeback_reversal", "other"]
    first = rows[0]
    assert first == {
        "line_no": 2, "record_type": "payment", "reference": "pi_1", "alt_reference": "ch_1", "currency": "USD",
        "gross": 1250, "fee": 66, "net_currency": "USD", "net": 1184, "created_at": "2026-10-01 09:12:00+00",
        "transaction_id": "txn_1",
    }
    assert rows[1]["gross"] == -1250
    # Without a PaymentIntent the charge id is the reference.
    assert (rows[2]["reference"], rows[2]["alt_reference"], rows[2]["gross"], rows[2]["fee"]) == ("ch_3", None, 5000, 180)
    # A fee row's money counts as fee, not gross.
    assert (rows[3]["gross"], rows[3]["fee"], rows[3]["net"]) == (0, 200, -200)


def test_columns_are_read_by_name_in_any_order_and_optional_ones_may_be_absent():
    text = "payment_intent_id,net,reporting_category,gross,currency\npi_1,9.70,charge,10.00,eur\n"

    [row] = records(text)

    assert (row["reference"], row["gross"], row["fee"], row["net"], row["created_at"]) == ("pi_1", 1000, 0, 970, None)


def test_an_adyen_settlement_details_report():
    text = (
        "Company Account,Merchant Account,Psp Reference,Merchant Reference,Creation Date,TimeZone,Type,"
        "Modification Reference,Gross Currency,Gross Debit (GC),Gross Credit (GC),Net Currency,Net Debit (NC),"
        "Net Credit (NC),Commission (NC),Markup (NC),Scheme Fees (NC),Interchange (NC),Batch Number\r\n"
        "Acme,AcmeEU,881600001,\"order-1, gift\",2026-10-01 10:00:00,CET,Settled,,KWD,,1.234,KWD,,1.200,0.010,0.004,0.010,0.010,1\r\n"
        "Acme,AcmeEU,881600001,order-1,2026-10-02 10:00:00,CET,Refunded,882600001,KWD,1.234,,KWD,1.234,,,,,,1\r\n"
        "Acme,AcmeEU,,,2026-10-03 10:00:00,CET,Fee,fee-1,,,,EUR,0.50,,,,,,1\r\n"
        "Acme,AcmeEU,,,2026-10-03 10:00:00,CET,MerchantPayout,payout-1,,,,EUR,100.00,,,,,,1\r\n"
        "Acme,AcmeEU,881600002,order-2,2026-10-03 10:00:00,CET,Chargeback,883600002,EUR,10.00,,EUR,10.00,,,,,,1\r\n"
    )

    rows = records(text)

    assert detect_format(text.splitlines()[0].split(",")) == "adyen"
    assert [row["record_type"] for row in rows] == ["payment", "refund", "fee", "payout", "chargeback"]
    assert (rows[0]["reference"], rows[0]["alt_reference"]) == ("881600001", "order-1, gift")
    assert (rows[0]["gross"], rows[0]["fee"], rows[0]["net"]) == (1234, 34, 1200)
    assert rows[0]["created_at"] == "2026-10-01 10:00:00 CET"
    assert (rows[1]["gross"], rows[1]["net"], rows[1]["transaction_id"]) == (-1234, -1234, "882600001")
    assert (rows[2]["currency"], rows[2]["gross"], rows[2]["fee"], rows[2]["net"]) == ("EUR", 0, 50, -50)
    assert rows[3]["net"] == -10000


def test_an_adyen_row_with_both_credit_and_debit_is_refused():
    text = ("Psp Reference,Type,Gross Currency,Gross Debit (GC),Gross Credit (GC)\n"
            "881,Settled,EUR,1.00,1.00\n")

    with pytest.raises(SettlementReportError, match="line 2: both Gross Credit and Gross Debit"):
        records(text)


def test_the_generic_format():
    text = "reference,currency,amount,type,fee,created_at\nG-1,bhd,1.250,payment,0.010,2026-10-01T10:00:00\n"

    [row] = records(text)

    assert (row["reference"], row["currency"], row["gross"], row["fee"], row["net"]) == ("G-1", "BHD", 1250, 10, 1240)
    assert row["created_at"] == "2026-10-01T10:00:00+00"


def test_every_malformed_row_is_reported_with_its_line_and_nothing_is_accepted():
    text = (
        "reference,currency,amount,type\n"
        "A,USD,1.00,payment\n"
        "B,USD,1.005,payment\n"
        "C,JPY,1.5,payment\n"
        "D,USD,1.00,gift\n"
        ",USD,1.00,payment\n"
    )

    with pytest.raises(SettlementReportError) as refused:
        records(text)

    message = str(refused.value)
    for line in ("line 3:", "line 4:", "line 5:", "line 6:"):
        assert line in message
    assert "line 2:" not in message
    assert "Fix or remove these rows" in message


@pytest.mark.parametrize(("header", "expected"), [
    ("balance_transaction_id,created_utc,currency,gross,fee,net,reporting_category", "stripe"),
    ("Company Account,Psp Reference,Merchant Reference,Type,Gross Currency,Gross Credit (GC)", "adyen"),
    ("  Psp Reference , TYPE ,Net Currency", "adyen"),
    ("reference,currency,amount", "generic"),
])
def test_the_format_is_detected_from_the_header(header, expected):
    assert detect_format(header.split(",")) == expected


def test_stripes_all_activity_export_is_refused_with_the_report_to_use_instead():
    with pytest.raises(SettlementReportError, match="Balance change from activity"):
        detect_format(["id", "Type", "Source", "Amount", "Fee", "Net", "Currency"])


def test_an_unknown_header_asks_for_a_format():
    with pytest.raises(SettlementReportError, match="--format"):
        records("date,what,how much\n2026-10-01,coffee,3\n")


def test_a_forced_format_needs_its_columns():
    with pytest.raises(SettlementReportError, match="no column"):
        records("reference,currency,amount\nA,USD,1\n", format="stripe")


def test_an_empty_report_and_a_non_utf8_report_are_refused():
    with pytest.raises(SettlementReportError, match="empty"):
        records("")
    reader_input = io.TextIOWrapper(io.BytesIO("reference,currency,amount\nA,USD,1\nCaf\xe9,USD,1\n".encode("latin-1")),
                                    encoding="utf-8-sig", newline="")
    with pytest.raises(SettlementReportError, match="UTF-8"):
        list(SettlementReader(reader_input).records())


def test_a_generic_report_is_read_through_a_column_mapping():
    text = "Order Ref,Paid,Ccy,Kind\nINV-1,1.250,bhd,refund\n"
    reader = SettlementReader(io.StringIO(text, newline=""), column_map={
        "reference": "order ref", "amount": " PAID ", "currency": "Ccy", "type": "Kind"})

    [row] = [dict(zip(STAGING_COLUMNS, record)) for record in reader.records()]

    assert reader.format == "generic"
    assert reader.column_map == {"amount": "paid", "currency": "ccy", "reference": "order ref", "type": "kind"}
    assert (row["record_type"], row["reference"], row["currency"], row["gross"]) == ("refund", "INV-1", "BHD", 1250)


@pytest.mark.parametrize(("format", "column_map", "message"), [
    ("stripe", {"reference": "Order Ref"}, "generic format only"),
    (None, {"order": "Order Ref"}, "unknown field"),
    (None, {"reference": " "}, "empty column name"),
    (None, {"reference": "Invoice"}, "no column.*invoice"),
])
def test_a_column_mapping_that_does_not_fit_is_refused(format, column_map, message):
    with pytest.raises(SettlementReportError, match=message):
        SettlementReader(io.StringIO("Order Ref,Paid,Ccy\nINV-1,1,USD\n", newline=""), format, column_map)
