"""Settlement report formats: detect one from its header and turn its rows into settlement records.

No database, and no I/O beyond the text stream it is given (`open_report` opens one). Columns are found by
header name (case and surrounding spaces ignored), never by position, because every
account chooses its own columns. Amounts become exact integer minor units; an amount
that does not fit its currency's exponent is refused, never rounded. Timestamps become
text with an explicit UTC offset, so PostgreSQL never guesses a time zone.

A settlement record is a tuple in STAGING_COLUMNS order, ready for COPY. What reading notices
without refusing the report (types nobody mapped, rows whose amounts disagree) is kept in
`ReadingNotes`. Messages name columns and report kinds, never a line of the file.
"""
from __future__ import annotations

import csv
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from conveyor.domain.money import MoneyError, currency_exponent, to_minor_units

FORMATS = ("stripe", "adyen", "generic")
# Which orders.payment_provider a report settles.
PROVIDER_OF_FORMAT = {"stripe": "stripe", "adyen": "adyen", "generic": "generic"}

# What a settlement row is. Payments are matched to orders; refunds, chargebacks and
# their reversals ("returns") are matched to orders too; the rest only count in totals.
PAYMENT = "payment"
REFUND = "refund"
CHARGEBACK = "chargeback"
CHARGEBACK_REVERSAL = "chargeback_reversal"
FEE = "fee"
PAYOUT = "payout"
OTHER = "other"
RECORD_TYPES = (PAYMENT, REFUND, CHARGEBACK, CHARGEBACK_REVERSAL, FEE, PAYOUT, OTHER)

STAGING_COLUMNS = (
    "line_no", "record_type", "reference", "alt_reference", "currency", "gross",
    "fee", "net_currency", "net", "created_at", "transaction_id",
)

# Stripe's reporting categories (docs.stripe.com/reports/reporting-categories), each on purpose.
# A category missing here is read as `other` and named in the run's `unmapped_types`.
STRIPE_RECORD_TYPES = {
    "charge": PAYMENT, "payment": PAYMENT,
    "refund": REFUND, "refund_failure": REFUND, "charge_failure": REFUND,
    "dispute": CHARGEBACK, "dispute_reversal": CHARGEBACK_REVERSAL,
    "fee": FEE, "network_cost": FEE, "tax": FEE,
    "payout": PAYOUT, "payout_reversal": PAYOUT,
    **dict.fromkeys((
        "adjustment", "other_adjustment", "partial_capture_reversal", "transfer", "transfer_reversal",
        "connect_collection_transfer", "connect_reserved_funds", "platform_earning", "platform_earning_refund",
        "topup", "topup_reversal", "risk_reserved_funds", "unreconciled_customer_funds", "advance",
        "advance_funding", "anticipation_repayment", "climate_order_purchase", "climate_order_refund",
        "contribution", "financing_paydown", "financing_paydown_reversal", "financing_payout",
        "financing_payout_reversal", "issuing_authorization_hold", "issuing_authorization_release",
        "issuing_dispute", "issuing_transaction", "obligation_inbound", "obligation_outbound",
        "obligation_reversal_inbound", "obligation_reversal_outbound", "payment_network_reserve_hold",
        "payment_network_reserve_release",
    ), OTHER),
}

# The journal types Adyen documents for the Settlement details report's `Type` column, each
# on purpose. Costs count in fees. Installments settle (or refund) a payment in parts, so an
# order paid in installments shows as a duplicate settlement: on purpose, it needs a look.
# A type missing here is read as `other` and named in the run's `unmapped_types`.
ADYEN_RECORD_TYPES = {
    **dict.fromkeys(("Settled", "SettledBulk", "SettledExternallyWithInfo", "SettledInstallment",
                     "SettledInstallmentExternallyWithInfo"), PAYMENT),
    **dict.fromkeys(("Refunded", "RefundedBulk", "RefundedExternallyWithInfo", "RefundedInstallment",
                     "RefundedInstallmentExternallyWithInfo", "RefundedReversed"), REFUND),
    **dict.fromkeys(("Chargeback", "SecondChargeback", "ChargebackExternallyWithInfo"), CHARGEBACK),
    **dict.fromkeys(("ChargebackReversed", "SecondChargebackReversed", "ChargebackReversedExternallyWithInfo"),
                    CHARGEBACK_REVERSAL),
    **dict.fromkeys(("Fee", "InvoiceDeduction", "MiscCosts", "PaymentCost", "AuthorisationSchemeFee",
                     "AdvancementCommissionExternallyWithInfo"), FEE),
    # Money to the merchant's bank, and a payout the bank sent back.
    **dict.fromkeys(("MerchantPayout", "BankInstructionReturned", "InternalCompanyPayout", "AcquirerPayout"),
                    PAYOUT),
    # Balance movements that settle no order: deposits, corrections, transfers, reserves, payouts to shoppers.
    **dict.fromkeys(("DepositCorrection", "ManualCorrected", "MatchedStatement", "Balancetransfer",
                     "ReserveAdjustment", "MerchantPayin", "MerchantPayinReversed", "EpaPaid", "PaidOut",
                     "PaidOutReversed", "AdjustmentExternallyWithInfo"), OTHER),
}
_ADYEN_RECORD_TYPES_BY_NAME = {kind.lower(): record_type for kind, record_type in ADYEN_RECORD_TYPES.items()}
ADYEN_FEE_COLUMNS = ("commission (nc)", "markup (nc)", "scheme fees (nc)", "interchange (nc)")

# Adyen's `TimeZone` column: the abbreviation of the account's time zone at that time, so it
# already says whether daylight saving applies, and stands for a fixed UTC offset. Explicit,
# never PostgreSQL's timezone_abbreviations (whose default reads IST as Israel). Each lists the
# offsets it can stand for; the first is what it means unless --timezone names a zone using another.
ADYEN_TIME_ZONES: dict[str, tuple[str, ...]] = {
    "UTC": ("+00:00",), "GMT": ("+00:00",), "WET": ("+00:00",), "WEST": ("+01:00",),
    "BST": ("+01:00",),  # British Summer Time (Bangladesh is BDT in Adyen's and Java's names)
    "CET": ("+01:00",), "CEST": ("+02:00",), "EET": ("+02:00",), "EEST": ("+03:00",), "MSK": ("+03:00",),
    "WAT": ("+01:00",), "CAT": ("+02:00",), "SAST": ("+02:00",), "EAT": ("+03:00",), "IDT": ("+03:00",),
    "GST": ("+04:00",),  # Gulf Standard Time
    "PKT": ("+05:00",), "BDT": ("+06:00",), "ICT": ("+07:00",), "WIB": ("+07:00",), "SGT": ("+08:00",),
    "HKT": ("+08:00",), "MYT": ("+08:00",), "PHT": ("+08:00",), "AWST": ("+08:00",), "JST": ("+09:00",),
    "KST": ("+09:00",), "ACST": ("+09:30",), "ACDT": ("+10:30",), "AEST": ("+10:00",), "AEDT": ("+11:00",),
    "NZST": ("+12:00",), "NZDT": ("+13:00",),
    "EST": ("-05:00",), "EDT": ("-04:00",), "MST": ("-07:00",), "MDT": ("-06:00",),
    "PST": ("-08:00", "+08:00"),  # US Pacific; also Philippine Standard Time, read so with --timezone Asia/Manila
    "PDT": ("-07:00",), "AKST": ("-09:00",), "AKDT": ("-08:00",), "HST": ("-10:00",),
    "ADT": ("-03:00",), "NST": ("-03:30",), "NDT": ("-02:30",), "BRT": ("-03:00",), "ART": ("-03:00",),
    "CLT": ("-04:00",), "CLST": ("-03:00",), "COT": ("-05:00",), "PET": ("-05:00",),
    # Ambiguous: refused unless --timezone names the zone (AMBIGUOUS_TIME_ZONES).
    "IST": ("+05:30", "+02:00", "+01:00"),  # India, Israel, Irish Summer Time
    "CST": ("-06:00", "+08:00", "-05:00"),  # US Central, China, Cuba
    "CDT": ("-05:00", "-04:00"),  # US Central daylight, Cuba daylight
    "AST": ("-04:00", "+03:00"),  # Atlantic, Arabia
}
AMBIGUOUS_TIME_ZONES = frozenset({"IST", "CST", "CDT", "AST"})
_ADYEN_OFFSETS = {name: offsets[0] for name, offsets in ADYEN_TIME_ZONES.items() if name not in AMBIGUOUS_TIME_ZONES}

# The generic CSV's fields, read from the columns of the same names unless a column mapping
# names others; only the first three are required. See README.
GENERIC_COLUMNS = {
    "reference": "the order's payment reference",
    "currency": "ISO 4217 code",
    "amount": "decimal major units; refunds and payouts negative",
    "type": f"one of {', '.join(RECORD_TYPES)} (default payment)",
    "alt_reference": "a second reference tried when `reference` matches no order",
    "fee": "decimal major units the provider kept (default 0)",
    "net": "decimal major units (default amount - fee)",
    "created_at": "ISO 8601 timestamp; without an offset, UTC (or the --timezone given)",
    "transaction_id": "the provider's id for this row",
}
GENERIC_REQUIRED = ("reference", "currency", "amount")

MAX_REPORTED_ERRORS = 20
MAX_NOTED_LINES = 20  # line numbers kept of rows whose amounts disagree (all are counted)
MAX_UNMAPPED_TYPES = 50  # distinct type names kept; the rest are counted together
MORE_UNMAPPED_TYPES = "(more types)"
_MAX_TYPE_NAME = 80

# Exports that are not a settlement report, recognised by their header: what they are and what to download.
ADYEN_PAYMENT_ACCOUNTING = (
    "this is Adyen's Payment accounting report, which lists every status change of each payment (Received,"
    " Authorised, SentForSettle, …), not what a payout settled. Download the Settlement details report instead"
    " (Customer Area: Reports > Settlement details, one file per payout batch, settlement_detail_report_batch_N.csv)."
)
STRIPE_ALL_ACTIVITY = (
    "this looks like Stripe's 'All activity' (balance transactions) export, which does not say which payment each"
    " row settles. Download Reports > Balance > 'Balance change from activity' (itemized) instead."
)
STRIPE_PAYOUTS = (
    "this is a Stripe payouts export (one row per payout to your bank), which does not say which payments each payout"
    " settles. Download Reports > Balance > 'Balance change from activity' (itemized), or Reports > Payout"
    " reconciliation (itemized), instead."
)
STRIPE_SUMMARY = (
    "this is a Stripe summary report (one row per reporting category), not one row per balance transaction."
    " Download the itemized version: Reports > Balance > 'Balance change from activity' (itemized)."
)


class SettlementReportError(ValueError):
    """A report that cannot be reconciled as given; the message says what to fix."""


class MalformedRow(ValueError):
    pass


def normalise(name: str) -> str:
    # A byte-order mark survives decoding as plain "utf-8"; it is not whitespace to str.strip().
    return name.replace("\ufeff", "").strip().lower()


def open_report(path: Path) -> TextIO:
    """A report file as text for SettlementReader."""
    # utf-8-sig drops a byte-order mark; newline="" lets csv handle CRLF and quoted newlines.
    return path.open(encoding="utf-8-sig", newline="")


def another_kind_of_report(header: list[str]) -> str | None:
    """Why a header is another export of a provider, not its settlement report (None when it is not one)."""
    names = {normalise(name) for name in header}
    if {"psp reference", "record type"} <= names and "type" not in names:
        return ADYEN_PAYMENT_ACCOUNTING
    if {"id", "type", "source", "amount"} <= names:
        return STRIPE_ALL_ACTIVITY
    if "payout_id" in names and names & {"payout_status", "payout_expected_arrival_date"}:
        return STRIPE_PAYOUTS
    if {"id", "amount"} <= names and any(name.startswith("arrival date") for name in names):
        return STRIPE_PAYOUTS  # the Dashboard's Payouts > Export
    if {"reporting_category", "count"} <= names and "balance_transaction_id" not in names:
        return STRIPE_SUMMARY
    return None


def detect_format(header: list[str]) -> str:
    names = {normalise(name) for name in header}
    refusal = another_kind_of_report(header)
    if refusal and not {"reference", "currency", "amount"} <= names:  # a generic CSV may hold any other columns
        raise SettlementReportError(refusal)
    if {"balance_transaction_id", "reporting_category"} <= names or {"reporting_category", "gross"} <= names:
        return "stripe"
    if {"psp reference", "type"} <= names and ("gross currency" in names or "net currency" in names):
        return "adyen"
    if {"reference", "currency", "amount"} <= names:
        return "generic"
    raise SettlementReportError(
        "cannot tell the report's format from its header. Expected a Stripe itemized balance change export"
        " (balance_transaction_id, reporting_category, currency, gross, fee, net, …), an Adyen Settlement details"
        " report (Psp Reference, Type, Gross Currency, Net Currency, …), or a generic CSV with columns"
        " reference,currency,amount; or pass the format explicitly (--format, or \"format\" in the API),"
        " or map a generic report's columns (--map reference=COLUMN, or \"columns\" in the API)."
    )


def check_timezone(name: str | None) -> ZoneInfo | None:
    """The IANA time zone `name` (e.g. Europe/Berlin); None for none."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise SettlementReportError(
            f"unknown time zone {name[:64]!r}: give an IANA time zone name such as Europe/Berlin or America/New_York"
        ) from None


def amount_in_minor_units(text: str, currency: str) -> int:
    """Exact minor units of a decimal amount, refusing (MalformedRow) any that would need rounding."""
    try:
        exponent = currency_exponent(currency)
    except MoneyError as exc:
        raise MalformedRow(str(exc)) from None
    return _minor_units(text, currency, exponent)


def _minor_units(text: str, currency: str, exponent: int) -> int:
    # Plain amounts such as `-12.50` take a fast path of string tests (a report has
    # millions of them); everything else, and every refusal, goes through `money.to_minor_units`.
    whole, dot, fraction = text.partition(".")
    padding = exponent - len(fraction)
    if (padding >= 0 and text.isascii() and (fraction.isdigit() or not dot)
            and (whole.isdigit() or (whole[:1] == "-" and whole[1:].isdigit()))):
        return int(whole + fraction + _ZEROS[padding])
    try:
        return to_minor_units(text, currency)
    except MoneyError as exc:
        raise MalformedRow(f"amount {text!r}: {exc}") from None


_ZEROS = ("", "0", "00", "000")  # exponents run from 0 to 3


class ReadingNotes:
    """What reading a report noticed without refusing it: types nobody mapped, rows whose amounts disagree."""

    def __init__(self) -> None:
        self.unmapped_types: dict[str, int] = {}
        self.inconsistent_lines: list[int] = []
        self.inconsistent_count = 0

    def unmapped(self, kind: str) -> None:
        name = kind.strip()[:_MAX_TYPE_NAME] or "(empty)"
        if name not in self.unmapped_types and len(self.unmapped_types) >= MAX_UNMAPPED_TYPES:
            name = MORE_UNMAPPED_TYPES
        self.unmapped_types[name] = self.unmapped_types.get(name, 0) + 1

    def inconsistent(self, line_no: int) -> None:
        self.inconsistent_count += 1
        if len(self.inconsistent_lines) < MAX_NOTED_LINES:
            self.inconsistent_lines.append(line_no)

    def as_dict(self) -> dict[str, Any]:
        return {"unmapped_types": self.unmapped_types, "inconsistent_lines": self.inconsistent_lines,
                "inconsistent_count": self.inconsistent_count}

    def merge(self, other: Mapping[str, Any]) -> None:
        """Add what another reader of the same report noticed (`as_dict`), e.g. in another process."""
        for name, count in other["unmapped_types"].items():
            if name not in self.unmapped_types and len(self.unmapped_types) >= MAX_UNMAPPED_TYPES:
                name = MORE_UNMAPPED_TYPES
            self.unmapped_types[name] = self.unmapped_types.get(name, 0) + count
        self.inconsistent_lines = sorted(self.inconsistent_lines + list(other["inconsistent_lines"]))[:MAX_NOTED_LINES]
        self.inconsistent_count += other["inconsistent_count"]

    def unmapped_types_result(self) -> dict[str, int]:
        """Each unmapped type with its row count, most rows first."""
        return dict(sorted(self.unmapped_types.items(), key=lambda item: (-item[1], item[0])))

    def inconsistent_rows_result(self) -> dict[str, Any] | None:
        """{"count", "lines" (the first MAX_NOTED_LINES), "message"}, or None when every row adds up."""
        if not self.inconsistent_count:
            return None
        return {"count": self.inconsistent_count, "lines": sorted(self.inconsistent_lines),
                "message": "gross minus fee is not net on these rows; they were reconciled as given: check them"
                           " with the provider"}


class _Columns:
    """Positions of named columns in one report's header, read from a row in one call."""

    def __init__(self, header: list[str]):
        self.width = len(header)
        self.positions: dict[str, int] = {}
        for position, name in enumerate(header):
            self.positions.setdefault(normalise(name), position)

    def __contains__(self, name: str) -> bool:
        return name in self.positions

    def require(self, report: str, *names: str) -> None:
        missing = [name for name in names if name not in self.positions]
        if missing:
            raise SettlementReportError(
                f"the {report} report has no column(s) {', '.join(missing)}."
                " Export it again with these columns included"
                + (", or map its own columns (--map FIELD=COLUMN, or \"columns\" in the API)." if report == "generic"
                   else ".")
            )

    def reader(self, *names: str | None) -> Callable[[list[str]], tuple[str, ...]]:
        """A function returning those columns of a row, '' for a column the report lacks (or None)."""
        # A missing column reads the empty field `fit` appends after the last real one.
        pick = operator.itemgetter(*(self.positions.get(name, self.width) for name in names))
        width = self.width

        def read(fields: list[str]) -> tuple[str, ...]:
            if len(fields) != width:
                fields = (fields + [""] * width)[:width]
            fields.append("")
            return pick(fields)

        return read


def _currency(code: str) -> tuple[str, int]:
    """An ISO 4217 code (any case, spaces ignored) and its exponent."""
    try:
        return _KNOWN_CURRENCIES[code]
    except KeyError:
        pass
    normalised = code.strip().upper()
    try:
        exponent = currency_exponent(normalised)
    except MoneyError as exc:
        raise MalformedRow(str(exc)) from None
    if len(_KNOWN_CURRENCIES) < 1000:
        _KNOWN_CURRENCIES[code] = (normalised, exponent)
    return normalised, exponent


_KNOWN_CURRENCIES: dict[str, tuple[str, int]] = {}


def _optional_amount(text: str, currency: str, exponent: int) -> int:
    return _minor_units(text, currency, exponent) if text else 0


class _LocalTimes:
    """Wall-clock times of one IANA zone ('2026-10-01 09:12:00'), as the UTC offset each had then."""

    _MAX_CACHED = 100_000

    def __init__(self, zone: ZoneInfo):
        self.zone = zone
        self._offsets: dict[str, str] = {}  # by minute: offsets change on whole minutes

    def offset(self, text: str) -> str:
        minute = text[:16]
        try:
            return self._offsets[minute]
        except KeyError:
            pass
        offset = _offset_text(self.zone.utcoffset(_local_time(minute)))
        if len(self._offsets) >= self._MAX_CACHED:
            self._offsets.clear()
        self._offsets[minute] = offset
        return offset


def _local_time(text: str) -> datetime:
    try:
        local = datetime.fromisoformat(text)
    except ValueError:
        raise MalformedRow("a timestamp is not a date and time like 2026-10-01 09:12:00") from None
    if local.tzinfo is not None:
        raise MalformedRow("a timestamp that should be local time carries an offset")
    return local


def _offset_text(offset: timedelta) -> str:
    seconds = int(offset.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{sign}{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")


CHARGE_ID_PREFIXES = ("ch_", "py_")  # source_id of a card charge, or of another payment method's payment


class _StripeRows:
    def __init__(self, columns: _Columns, notes: ReadingNotes, zone: ZoneInfo | None):
        columns.require("Stripe", "currency", "gross", "reporting_category")
        self.notes = notes
        # A report without payment_intent_id and charge_id still says a charge's id: its source_id.
        self.charge_from_source = (
            "payment_intent_id" not in columns and "charge_id" not in columns and "source_id" in columns)
        if "payment_intent_id" not in columns and "charge_id" not in columns and not self.charge_from_source:
            raise SettlementReportError(
                "the Stripe report has neither payment_intent_id, charge_id nor source_id, so no row can be"
                " matched to an order. Export it again with payment_intent_id (and charge_id) included."
            )
        # created_utc is exact; created is in the time zone the report was run in, which the file does not say.
        self.local_times = None
        self.uses_timezone = False
        self.timestamp_problem = None
        if "created_utc" in columns:
            created = "created_utc"
        elif "created" in columns and zone is not None:
            created, self.local_times, self.uses_timezone = "created", _LocalTimes(zone), True
        else:
            created = None
            self.timestamp_problem = (
                "the Stripe report's created column is in the time zone the report was run in, which the file does"
                " not say. Give that zone with --timezone (e.g. --timezone America/New_York; \"timezone\" in the"
                " API), or give a --cutoff (\"cutoff\" in the API), or export the report with created_utc."
                if "created" in columns else
                "the Stripe report has no created_utc (or created) column, so it does not say when its rows"
                " happened. Give a --cutoff (\"cutoff\" in the API), or export it again with created_utc."
            )
        self.read = columns.reader(
            "reporting_category", "currency", "gross", "fee", "net", "payment_intent_id",
            "source_id" if self.charge_from_source else "charge_id", created, "balance_transaction_id",
        )

    def record(self, fields: list[str], line_no: int) -> tuple:
        category, currency_code, gross_text, fee_text, net_text, payment_intent, charge, created, transaction = (
            self.read(fields)
        )
        record_type = STRIPE_RECORD_TYPES.get(category) or self._unusual_category(category)
        currency, exponent = _currency(currency_code)
        gross = _minor_units(gross_text, currency, exponent)
        fee = _optional_amount(fee_text, currency, exponent)
        if net_text:
            net = _minor_units(net_text, currency, exponent)
            if gross - fee != net:
                self.notes.inconsistent(line_no)
        else:
            net = gross - fee
        if self.charge_from_source and not charge.startswith(CHARGE_ID_PREFIXES):
            charge = self._not_a_charge(record_type)
        reference, alt_reference = (payment_intent, charge or None) if payment_intent else (charge or None, None)
        if created:
            created += "+00" if self.local_times is None else self.local_times.offset(created)
        return _record(line_no, record_type, reference, alt_reference, currency, gross, fee, currency, net,
                       created or None, transaction or None)

    def _unusual_category(self, category: str) -> str:
        record_type = STRIPE_RECORD_TYPES.get(category.strip().lower())
        if record_type is None:
            self.notes.unmapped(category)
            return OTHER
        return record_type

    @staticmethod
    def _not_a_charge(record_type: str) -> str:
        if record_type in (PAYMENT, REFUND, CHARGEBACK, CHARGEBACK_REVERSAL):
            raise MalformedRow(
                f"a {record_type} row whose source_id is not a charge (ch_…, py_…) cannot be matched to an order"
                " in a report without payment_intent_id and charge_id: export the report with charge_id included")
        return ""


class _AdyenRows:
    def __init__(self, columns: _Columns, notes: ReadingNotes, zone: ZoneInfo | None):
        columns.require("Adyen", "psp reference", "type")
        self.notes = notes
        self.local_times = _LocalTimes(zone) if zone is not None else None
        self.uses_timezone = zone is not None
        self.timestamp_problem = None
        if "creation date" not in columns:
            self.timestamp_problem = (
                "the Adyen report has no Creation Date column, so it does not say when its rows happened."
                " Give a --cutoff (\"cutoff\" in the API), or export it again with Creation Date and TimeZone.")
        elif "timezone" not in columns and zone is None:
            self.timestamp_problem = (
                "the Adyen report has no TimeZone column, so its Creation Date cannot be placed in time. Give the"
                " account's time zone with --timezone (e.g. --timezone Europe/Amsterdam; \"timezone\" in the API),"
                " or a --cutoff (\"cutoff\" in the API).")
        self.read = columns.reader(
            "type", "psp reference", "merchant reference", "gross currency", "gross credit (gc)",
            "gross debit (gc)", "net currency", "net credit (nc)", "net debit (nc)",
            None if self.timestamp_problem else "creation date",
            "timezone", "modification reference", *ADYEN_FEE_COLUMNS,
        )

    def record(self, fields: list[str], line_no: int) -> tuple:
        (kind, psp_reference, merchant_reference, gross_currency_code, gross_credit, gross_debit,
         net_currency_code, net_credit, net_debit, created, timezone, modification, *fees) = self.read(fields)
        record_type = ADYEN_RECORD_TYPES.get(kind) or self._unusual_type(kind)
        if not (gross_currency_code or net_currency_code):
            raise MalformedRow("neither Gross Currency nor Net Currency is filled")
        currency, exponent = _currency(gross_currency_code or net_currency_code)
        net_currency, net_exponent = _currency(net_currency_code) if net_currency_code else (currency, exponent)
        gross = _credit_minus_debit(gross_credit, gross_debit, currency, exponent, "Gross")
        net = _credit_minus_debit(net_credit, net_debit, net_currency, net_exponent, "Net")
        fee = sum(_optional_amount(text, net_currency, net_exponent) for text in fees)
        if (gross_credit or gross_debit) and net_currency_code and currency == net_currency and gross - fee != net:
            self.notes.inconsistent(line_no)
        if created:
            created += self._offset(timezone.strip(), created)
        return _record(line_no, record_type, psp_reference or None, merchant_reference or None,
                       currency, gross, fee, net_currency, net, created or None,
                       modification or psp_reference or None)

    def _unusual_type(self, kind: str) -> str:
        record_type = _ADYEN_RECORD_TYPES_BY_NAME.get(kind.strip().lower())
        if record_type is None:
            self.notes.unmapped(kind)
            return OTHER
        return record_type

    def _offset(self, abbreviation: str, created: str) -> str:
        if self.local_times is None:
            try:
                return _ADYEN_OFFSETS[abbreviation]
            except KeyError:
                pass
            if not abbreviation:
                raise MalformedRow("TimeZone is empty: give the account's time zone with --timezone")
            if abbreviation in AMBIGUOUS_TIME_ZONES:
                meanings = ", UTC".join(ADYEN_TIME_ZONES[abbreviation])
                raise MalformedRow(f"TimeZone {abbreviation} is ambiguous (it can mean UTC{meanings}): give the"
                                   " account's time zone with --timezone, e.g. --timezone Asia/Kolkata")
            raise MalformedRow(f"TimeZone {abbreviation[:8]!r} is not an abbreviation Conveyor knows: give the"
                               " account's time zone with --timezone")
        # The zone given places the time; the row's abbreviation must be the zone's own name for it then,
        # or, where the time zone database names it by its offset (Asia/Riyadh: "+03"), stand for that offset.
        offset = self.local_times.offset(created)
        if not abbreviation:
            return offset
        name = _local_time(created[:16]).replace(tzinfo=self.local_times.zone).tzname() or ""
        if name == abbreviation or (name[:1] in "+-" and offset in ADYEN_TIME_ZONES.get(abbreviation, ())):
            return offset
        raise MalformedRow(f"TimeZone {abbreviation[:8]!r} does not match the time zone given"
                           f" ({self.local_times.zone.key}, UTC{offset} at that time)")


def _credit_minus_debit(credit: str, debit: str, currency: str, exponent: int, what: str) -> int:
    if credit and debit:
        raise MalformedRow(f"both {what} Credit and {what} Debit are filled; a row has one or the other")
    if credit:
        return _minor_units(credit, currency, exponent)
    return -_minor_units(debit, currency, exponent) if debit else 0


class _GenericRows:
    def __init__(self, columns: _Columns, column_map: Mapping[str, str], notes: ReadingNotes, zone: ZoneInfo | None):
        def column(field: str) -> str:
            return column_map.get(field, field)

        columns.require("generic", *map(column, GENERIC_REQUIRED))
        self.notes = notes
        self.uses_timezone = zone is not None and column("created_at") in columns
        self.local_times = _LocalTimes(zone) if self.uses_timezone else None
        self.timestamp_problem = None if column("created_at") in columns else (
            "the report has no created_at column, so it does not say when its rows happened. Give a --cutoff"
            " (\"cutoff\" in the API), or map a column of timestamps (--map created_at=COLUMN).")
        self.read = columns.reader(*map(column, (
            "type", "reference", "alt_reference", "currency", "amount", "fee", "net", "created_at", "transaction_id",
        )))

    def record(self, fields: list[str], line_no: int) -> tuple:
        kind, reference, alt_reference, currency_code, amount, fee_text, net_text, created, transaction = (
            self.read(fields)
        )
        record_type = kind.strip().lower() or PAYMENT
        if record_type not in RECORD_TYPES:
            raise MalformedRow(f"type {record_type!r} is not one of {', '.join(RECORD_TYPES)}")
        currency, exponent = _currency(currency_code)
        gross = _minor_units(amount, currency, exponent)
        fee = _optional_amount(fee_text, currency, exponent)
        net = _minor_units(net_text, currency, exponent) if net_text else gross - fee
        if created and not _HAS_OFFSET.search(created):
            created += "+00" if self.local_times is None else self.local_times.offset(created)
        return _record(line_no, record_type, reference.strip() or None, alt_reference.strip() or None,
                       currency, gross, fee, currency, net, created or None, transaction or None)


_HAS_OFFSET = re.compile(r"(?:[+-]\d\d(?::?\d\d)?|Z|UTC)$", re.IGNORECASE)


def _record(line_no, record_type, reference, alt_reference, currency, gross, fee, net_currency, net,
            created, transaction_id) -> tuple:
    if record_type == FEE and fee == 0:
        # A fee row's money is all fee: fees total what the provider kept, gross what customers paid.
        fee, gross = -net, 0
    elif record_type == FEE:
        gross = 0
    if record_type in (PAYMENT, REFUND, CHARGEBACK, CHARGEBACK_REVERSAL) and not (reference or alt_reference):
        raise MalformedRow(f"a {record_type} row without a payment reference cannot be matched to an order")
    return (line_no, record_type, reference, alt_reference, currency, gross, fee, net_currency, net,
            created, transaction_id)


def check_column_map(format: str, column_map: Mapping[str, str] | None) -> dict[str, str]:
    """A generic report's column mapping (field -> header name), normalised; {} for none."""
    if not column_map:
        return {}
    if format != "generic":
        raise SettlementReportError(
            f"a column mapping applies to the generic format only; the {format} format has its own columns"
        )
    unknown = sorted(set(column_map) - set(GENERIC_COLUMNS))
    if unknown:
        raise SettlementReportError(
            f"the column mapping names unknown field(s) {', '.join(unknown)}; map any of {', '.join(GENERIC_COLUMNS)}"
        )
    if not all(isinstance(name, str) and name.strip() for name in column_map.values()):
        raise SettlementReportError("the column mapping maps a field to an empty column name")
    return {field: normalise(name) for field, name in sorted(column_map.items())}


_ROW_PARSERS = {"stripe": _StripeRows, "adyen": _AdyenRows}


class SettlementReader:
    """Streams one report's rows as settlement records; holds one row in memory at a time."""

    def __init__(self, text: TextIO, format: str | None = None, column_map: Mapping[str, str] | None = None,
                 *, timezone: str | None = None, header: list[str] | None = None, lines_before: int = 0):
        """`column_map` reads a generic report's fields from other columns: {"reference": "Order Ref"}.
        `timezone` (an IANA name) places local times the report does not give an offset for.

        With `header`, `text` is a part of a report without its header, after `lines_before` lines.
        """
        self._rows = csv.reader(text, strict=True)
        self._lines_before = lines_before
        try:
            self.header = header if header is not None else next(self._rows)
        except StopIteration:
            raise SettlementReportError("the report is empty: it has no header line") from None
        except csv.Error as exc:
            raise SettlementReportError(f"line 1: the header is not valid CSV ({exc})") from None
        except UnicodeDecodeError:
            raise SettlementReportError(
                "the report is not UTF-8 text. Export or save it as UTF-8 (CSV UTF-8) and try again."
            ) from None
        if format is not None and format not in FORMATS:
            raise SettlementReportError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
        zone = check_timezone(timezone)
        if format in ("stripe", "adyen"):  # forced, and still not a settlement report
            refusal = another_kind_of_report(self.header)
            if refusal:
                raise SettlementReportError(refusal)
        # Only the generic format takes a mapping, and a mapped header need not look generic.
        self.format = format or ("generic" if column_map else detect_format(self.header))
        self.provider = PROVIDER_OF_FORMAT[self.format]
        self.column_map = check_column_map(self.format, column_map)
        self.notes = ReadingNotes()
        columns = _Columns(self.header)
        self._parser = (_GenericRows(columns, self.column_map, self.notes, zone) if self.format == "generic"
                        else _ROW_PARSERS[self.format](columns, self.notes, zone))
        # The zone is part of what the report says only where it is used.
        self.timezone = zone.key if self._parser.uses_timezone else None
        # Why the rows carry no usable timestamps (then a run needs a cutoff), or None.
        self.timestamp_problem: str | None = self._parser.timestamp_problem
        self.errors: list[str] = []

    def records(self) -> Iterator[tuple]:
        """Each data row's record; a malformed row is remembered and skipped, blank lines ignored.

        Call `raise_if_malformed()` after the last record: one bad row refuses the whole report.
        """
        record = self._parser.record
        rows = self._rows
        lines_before = self._lines_before
        while True:
            try:
                fields = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                self._malformed(lines_before + rows.line_num, f"not valid CSV ({exc})")
                continue
            except UnicodeDecodeError:
                raise SettlementReportError(
                    f"after line {lines_before + rows.line_num} the report is not UTF-8 text. Export or save it"
                    " as UTF-8 (CSV UTF-8) and run the reconciliation again."
                ) from None
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            try:
                yield record(fields, lines_before + rows.line_num)
            except MalformedRow as exc:
                self._malformed(lines_before + rows.line_num, str(exc))

    def _malformed(self, line_no: int, message: str) -> None:
        self.errors.append(f"line {line_no}: {message}")
        if len(self.errors) >= MAX_REPORTED_ERRORS:
            self.raise_if_malformed()

    def raise_if_malformed(self) -> None:
        if self.errors:
            raise malformed_report(self.errors)


def malformed_report(errors: list[str]) -> SettlementReportError:
    """The error refusing a report for its malformed rows ("line N: what"), first lines first."""
    errors = sorted(errors, key=lambda error: int(error.split(":", 1)[0].removeprefix("line ")))
    shown = "\n".join(errors[:MAX_REPORTED_ERRORS])
    more = "\n(and possibly more; the report was not read further)" if len(errors) >= MAX_REPORTED_ERRORS else ""
    return SettlementReportError(
        f"the report has malformed rows, so nothing was reconciled:\n{shown}{more}\n"
        "Fix or remove these rows and run the reconciliation again."
    )


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_line(record: tuple) -> str:
    """A record (STAGING_COLUMNS) as one line of COPY's text format."""
    line = "\t".join(["\\N" if value is None else str(value) for value in record]) + "\n"
    # Report text rarely holds a tab, a line end or a backslash: escape only then.
    if line.count("\t") == len(record) - 1 and line.count("\n") == 1 and "\\" not in line and "\r" not in line:
        return line
    return "\t".join(["\\N" if value is None else str(value).translate(_COPY_ESCAPES) for value in record]) + "\n"
