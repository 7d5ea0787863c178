"""Settlement report parsing: format detection, columns by name, exact minor units."""
from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from conveyor.reconciliation.formats import (
    ADYEN_RECORD_TYPES,
    ADYEN_TIME_ZONES,
    AMBIGUOUS_TIME_ZONES,
    MAX_NOTED_LINES,
    MAX_UNMAPPED_TYPES,
    MORE_UNMAPPED_TYPES,
    STAGING_COLUMNS,
    MalformedRow,
    ReadingNotes,
    SettlementReader,
    SettlementReportError,
    amount_in_minor_units,
    detect_format,
    open_report,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "settlement"


def records(text: str, format: str | None = None, timezone: str | None = None) -> list[dict]:
    return read(SettlementReader(io.StringIO(text, newline=""), format, timezone=timezone))


def read(reader: SettlementReader) -> list[dict]:
    rows = [dict(zip(STAGING_COLUMNS, record)) for record in reader.records()]
    reader.raise_if_malformed()
    return rows


def fixture(name: str, format: str | None = None, timezone: str | None = None) -> tuple[SettlementReader, list[dict]]:
    with open_report(FIXTURES / name) as text:
        reader = SettlementReader(text, format, timezone=timezone)
        return reader, read(reader)


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
    assert rows[0]["created_at"] == "2026-10-01 10:00:00+01:00"  # CET, from Adyen's own abbreviation
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


def test_an_unknown_header_asks_for_a_format_and_names_the_expected_columns_not_the_files():
    with pytest.raises(SettlementReportError, match="--format") as refused:
        records("date,secret-column-name,how much\n2026-10-01,coffee,3\n")

    assert "balance_transaction_id" in str(refused.value) and "Psp Reference" in str(refused.value)
    assert "secret-column-name" not in str(refused.value)


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


# --- Stripe: local times, source_id, categories --------------------------------------------------


def test_a_stripe_report_with_created_in_its_time_zone_is_read_in_the_zone_given():
    reader, rows = fixture("stripe_itemized_local_times.csv", timezone="America/New_York")

    assert reader.format == "stripe" and reader.timezone == "America/New_York"
    assert reader.timestamp_problem is None
    assert rows[0]["created_at"] == "2026-10-01 09:12:00-04:00"  # EDT
    # 1 November 2026 01:30 happens twice in New York (clocks go back at 02:00): the first, EDT, is taken.
    assert [row["created_at"] for row in rows[-3:]] == [
        "2026-10-31 23:30:00-04:00", "2026-11-01 01:30:00-04:00", "2026-11-01 02:00:00-05:00"]


def test_a_stripe_report_with_created_and_no_time_zone_says_to_give_one_or_a_cutoff():
    reader, rows = fixture("stripe_itemized_local_times.csv")

    assert reader.timezone is None
    assert "--timezone" in reader.timestamp_problem and "--cutoff" in reader.timestamp_problem
    assert {row["created_at"] for row in rows} == {None}  # never guessed


def test_created_utc_wins_over_created_and_needs_no_time_zone():
    text = "created_utc,created,currency,gross,reporting_category,charge_id\n2026-10-01 13:12:00,2026-10-01 09:12:00,usd,1.00,charge,ch_1\n"

    reader = SettlementReader(io.StringIO(text, newline=""), timezone="America/New_York")
    [row] = read(reader)

    assert row["created_at"] == "2026-10-01 13:12:00+00"
    assert reader.timezone is None  # not used, so not part of what the report says


def test_a_stripe_report_without_any_timestamp_column_needs_a_cutoff():
    reader = SettlementReader(io.StringIO("currency,gross,reporting_category,charge_id\n", newline=""))

    assert "--cutoff" in reader.timestamp_problem


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", "Europe/Berlin\x00"])
def test_an_unknown_time_zone_is_refused(zone):
    with pytest.raises(SettlementReportError, match="IANA time zone"):
        SettlementReader(io.StringIO("reference,currency,amount\n", newline=""), timezone=zone)


def test_a_charges_source_id_is_its_charge_id_when_the_report_has_no_payment_intent_or_charge_id():
    reader, rows = fixture("stripe_itemized_local_times.csv", timezone="America/New_York")

    assert [(row["record_type"], row["reference"]) for row in rows] == [
        ("payment", "ch_1"), ("payment", "py_2"), ("payment", "ch_3"), ("fee", None), ("other", None),
        ("other", None), ("payout", None)]


def test_a_refund_whose_source_id_is_not_a_charge_is_refused_with_what_to_export():
    text = "currency,gross,reporting_category,source_id,created_utc\nusd,-1.00,refund,re_1,2026-10-01 00:00:00\n"

    with pytest.raises(SettlementReportError, match="line 2: a refund row whose source_id is not a charge.*charge_id"):
        records(text)


def test_a_stripe_category_nobody_mapped_is_counted_by_name_and_read_as_other():
    reader, rows = fixture("stripe_itemized_local_times.csv", timezone="America/New_York")

    assert reader.notes.unmapped_types == {"gift_card_sale": 1}  # climate_order_refund is mapped, to other
    assert rows[5]["record_type"] == "other"


def test_stripe_rows_whose_gross_fee_and_net_disagree_are_noted_by_line():
    reader, _ = fixture("stripe_itemized_local_times.csv", timezone="America/New_York")

    assert reader.notes.inconsistent_rows_result()["lines"] == [4]
    assert reader.notes.inconsistent_count == 1


# --- Adyen: record types, time zones, costs -------------------------------------------------------


def test_every_line_of_an_adyen_settlement_details_report_is_read_as_adyen_means_it():
    reader, rows = fixture("settlement_detail_report_batch_12.csv")

    kinds = {row["line_no"]: row["record_type"] for row in rows}
    assert [kinds[line] for line in range(2, 18)] == [
        "payment", "payment", "refund", "chargeback",
        "fee", "fee", "fee", "fee",  # Fee, MiscCosts, InvoiceDeduction, PaymentCost: all costs
        "other", "other", "other",  # DepositCorrection, Balancetransfer, ManualCorrected
        "payment", "refund",  # settled and refunded outside Adyen, with info
        "other", "other",  # FutureThing: nobody mapped it
        "payout"]
    costs = {row["line_no"]: (row["gross"], row["fee"], row["net"]) for row in rows if row["record_type"] == "fee"}
    assert costs == {6: (0, 150, -150), 7: (0, 75, -75), 8: (0, 2000, -2000), 9: (0, 5, -5)}
    assert reader.notes.unmapped_types == {"FutureThing": 2}
    assert reader.notes.inconsistent_rows_result()["lines"] == [3]  # 50.00 - 1.00 of fees is not 48.00
    assert rows[0]["created_at"] == "2026-10-01 10:00:00-07:00"  # PDT


def test_adyens_documented_types_are_all_mapped_on_purpose():
    documented = {
        "Settled", "Refunded", "Chargeback", "SecondChargeback", "ChargebackReversed", "RefundedReversed",
        "Fee", "MiscCosts", "MerchantPayout", "DepositCorrection", "InvoiceDeduction", "MatchedStatement",
        "ManualCorrected", "AuthorisationSchemeFee", "BankInstructionReturned", "InternalCompanyPayout",
        "PaymentCost", "Balancetransfer", "SettledBulk", "RefundedBulk", "SettledExternallyWithInfo",
        "RefundedExternallyWithInfo", "ChargebackExternallyWithInfo", "ChargebackReversedExternallyWithInfo",
    }
    assert documented <= set(ADYEN_RECORD_TYPES)
    assert {ADYEN_RECORD_TYPES[kind] for kind in ("Fee", "MiscCosts", "InvoiceDeduction", "PaymentCost")} == {"fee"}


def test_adyen_types_match_whatever_their_case():
    text = "Psp Reference,Type,Net Currency,Net Credit (NC)\n881,  settled ,EUR,1.00\n,MISCCOSTS,EUR,-0.10\n"

    assert [row["record_type"] for row in records(text)] == ["payment", "fee"]


@pytest.mark.parametrize(("abbreviation", "zone", "when"), [
    ("CET", "Europe/Amsterdam", "2026-01-15 12:00"), ("CEST", "Europe/Amsterdam", "2026-07-15 12:00"),
    ("BST", "Europe/London", "2026-07-15 12:00"), ("GMT", "Europe/London", "2026-01-15 12:00"),
    ("PST", "America/Los_Angeles", "2026-01-15 12:00"), ("PDT", "America/Los_Angeles", "2026-07-15 12:00"),
    ("EST", "America/New_York", "2026-01-15 12:00"), ("EDT", "America/New_York", "2026-07-15 12:00"),
    ("MSK", "Europe/Moscow", "2026-07-15 12:00"), ("SGT", "Asia/Singapore", "2026-07-15 12:00"),
    ("JST", "Asia/Tokyo", "2026-07-15 12:00"), ("AEST", "Australia/Sydney", "2026-07-15 12:00"),
    ("AEDT", "Australia/Sydney", "2026-01-15 12:00"), ("NZDT", "Pacific/Auckland", "2026-01-15 12:00"),
    ("BRT", "America/Sao_Paulo", "2026-07-15 12:00"), ("NST", "America/St_Johns", "2026-01-15 12:00"),
    ("ACST", "Australia/Adelaide", "2026-07-15 12:00"), ("BDT", "Asia/Dhaka", "2026-07-15 12:00"),
])
def test_each_adyen_time_zone_abbreviation_is_the_offset_of_its_zone(abbreviation, zone, when):
    offset = datetime.fromisoformat(when).replace(tzinfo=ZoneInfo(zone)).strftime("%z")
    assert ADYEN_TIME_ZONES[abbreviation][0] == f"{offset[:3]}:{offset[3:]}"


ADYEN_ROW = "Psp Reference,Type,Creation Date,TimeZone,Net Currency,Net Credit (NC)\n881,Settled,2026-10-01 10:00:00,{},EUR,1.00\n"


@pytest.mark.parametrize("abbreviation", sorted(AMBIGUOUS_TIME_ZONES))
def test_an_ambiguous_adyen_time_zone_is_refused_with_its_line_unless_a_zone_is_given(abbreviation):
    with pytest.raises(SettlementReportError, match=f"line 2: TimeZone {abbreviation} is ambiguous.*--timezone"):
        records(ADYEN_ROW.format(abbreviation))


@pytest.mark.parametrize(("abbreviation", "zone", "created_at"), [
    ("IST", "Asia/Kolkata", "2026-10-01 10:00:00+05:30"),
    ("IST", "Asia/Jerusalem", "2026-10-01 10:00:00+03:00"),  # IDT in October: refused below
    ("CST", "Asia/Shanghai", "2026-10-01 10:00:00+08:00"),
    ("CST", "America/Chicago", None),  # CDT in October
    ("PST", "Asia/Manila", "2026-10-01 10:00:00+08:00"),
    ("AST", "Asia/Riyadh", "2026-10-01 10:00:00+03:00"),  # the time zone database names it "+03"
])
def test_a_zone_given_decides_an_adyen_abbreviation_when_it_is_one_the_abbreviation_can_mean(
        abbreviation, zone, created_at):
    text = ADYEN_ROW.format(abbreviation)
    if created_at is None or zone == "Asia/Jerusalem":
        with pytest.raises(SettlementReportError, match=f"line 2: TimeZone '{abbreviation}' does not match"):
            records(text, timezone=zone)
    else:
        assert records(text, timezone=zone)[0]["created_at"] == created_at


@pytest.mark.parametrize(("cell", "message"), [("XYZ", "not an abbreviation Conveyor knows"), ("", "TimeZone is empty")])
def test_an_unknown_or_empty_adyen_time_zone_is_refused_with_its_line(cell, message):
    with pytest.raises(SettlementReportError, match=f"line 2: .*{message}"):
        records(ADYEN_ROW.format(cell))


def test_an_adyen_report_without_a_timezone_column_needs_a_zone_or_a_cutoff():
    text = "Psp Reference,Type,Creation Date,Net Currency,Net Credit (NC)\n881,Settled,2026-10-01 10:00:00,EUR,1.00\n"

    without = SettlementReader(io.StringIO(text, newline=""))
    assert "--timezone" in without.timestamp_problem and "--cutoff" in without.timestamp_problem
    assert read(without)[0]["created_at"] is None
    assert records(text, timezone="Europe/Amsterdam")[0]["created_at"] == "2026-10-01 10:00:00+02:00"


# --- Reports of another kind ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "report", "instead"), [
    ("adyen_payment_accounting_report.csv", "Payment accounting report", "Settlement details report"),
    ("stripe_all_activity.csv", "All activity", "Balance change from activity"),
    ("stripe_payouts_itemized.csv", "payouts export", "Balance change from activity"),
    ("stripe_dashboard_payouts.csv", "payouts export", "Payout reconciliation"),
])
@pytest.mark.parametrize("format", [None, "stripe", "adyen"])
def test_another_kind_of_report_is_named_with_the_one_to_download_even_when_a_format_is_forced(
        name, report, instead, format):
    with pytest.raises(SettlementReportError) as refused:
        fixture(name, format)

    message = str(refused.value)
    assert report in message and instead in message
    assert "Export it again with these columns" not in message
    assert "8816000000000001" not in message and "txn_1" not in message and "po_1" not in message


def test_a_generic_csv_with_columns_like_another_reports_is_still_generic():
    assert detect_format(["reference", "currency", "amount", "id", "type", "source"]) == "generic"


def test_a_stripe_summary_report_asks_for_the_itemized_one():
    with pytest.raises(SettlementReportError, match="summary report.*itemized"):
        records("reporting_category,currency,count,gross,fee,net\ncharge,usd,3,30.00,1.20,28.80\n")


# --- Notes stay bounded ------------------------------------------------------------------------------


def test_notes_stay_bounded_and_merge_across_readers():
    first, second = ReadingNotes(), ReadingNotes()
    for line in range(100, 200):
        first.inconsistent(line)
    for line in range(2, 60):
        second.inconsistent(line)
    for n in range(MAX_UNMAPPED_TYPES + 10):
        first.unmapped(f"Type{n}")
    second.unmapped("Type0")
    second.unmapped("x" * 500)

    first.merge(second.as_dict())

    assert first.inconsistent_count == 158
    assert first.inconsistent_rows_result()["lines"] == list(range(2, 2 + MAX_NOTED_LINES))
    assert first.unmapped_types["Type0"] == 2
    assert first.unmapped_types[MORE_UNMAPPED_TYPES] == 11
    assert len(first.unmapped_types) == MAX_UNMAPPED_TYPES + 1
    assert all(len(name) <= 80 for name in first.unmapped_types)
