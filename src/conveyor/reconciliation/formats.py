"""Settlement report formats: detect one from its header and turn its rows into settlement records.

No database, and no I/O beyond the text stream it is given (`open_report` opens one). Columns are found by
header name (case and surrounding spaces ignored), never by position, because every
account chooses its own columns. Amounts become exact integer minor units; an amount
that does not fit its currency's exponent is refused, never rounded.

A settlement record is a tuple in STAGING_COLUMNS order, ready for COPY.
"""
from __future__ import annotations

import csv
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TextIO

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

STRIPE_RECORD_TYPES = {
    "charge": PAYMENT, "payment": PAYMENT,
    "refund": REFUND, "refund_failure": REFUND,
    "dispute": CHARGEBACK, "dispute_reversal": CHARGEBACK_REVERSAL,
    "fee": FEE, "network_cost": FEE,
    "payout": PAYOUT, "payout_reversal": PAYOUT,
}
ADYEN_RECORD_TYPES = {
    "settled": PAYMENT, "settledbulk": PAYMENT,
    "refunded": REFUND, "refundedbulk": REFUND, "refundedreversed": REFUND,
    "chargeback": CHARGEBACK, "secondchargeback": CHARGEBACK,
    "chargebackreversed": CHARGEBACK_REVERSAL, "secondchargebackreversed": CHARGEBACK_REVERSAL,
    "fee": FEE, "invoicededuction": FEE,
    "merchantpayout": PAYOUT,
}
ADYEN_FEE_COLUMNS = ("commission (nc)", "markup (nc)", "scheme fees (nc)", "interchange (nc)")

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
    "created_at": "ISO 8601 timestamp; UTC when it has no offset",
    "transaction_id": "the provider's id for this row",
}
GENERIC_REQUIRED = ("reference", "currency", "amount")

MAX_REPORTED_ERRORS = 20


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


def detect_format(header: list[str]) -> str:
    names = {normalise(name) for name in header}
    if {"balance_transaction_id", "reporting_category"} <= names or {"reporting_category", "gross"} <= names:
        return "stripe"
    if {"psp reference", "type"} <= names and ("gross currency" in names or "net currency" in names):
        return "adyen"
    if {"reference", "currency", "amount"} <= names:
        return "generic"
    if {"id", "type", "source", "amount"} <= names:
        raise SettlementReportError(
            "this looks like Stripe's 'All activity' export, which does not say what each row settles."
            " Download Reports > Balance > 'Balance change from activity' (itemized) instead."
        )
    # The header is not quoted: a file that is no report may hold anything.
    raise SettlementReportError(
        f"cannot tell the report's format from its header ({len(header)} columns). Expected a Stripe itemized"
        " balance change export, an Adyen Settlement details report, or a generic CSV with columns"
        " reference,currency,amount; or pass the format explicitly (--format, or \"format\" in the API),"
        " or map a generic report's columns (--map reference=COLUMN, or \"columns\" in the API)."
    )


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


class _Columns:
    """Positions of named columns in one report's header, read from a row in one call."""

    def __init__(self, header: list[str]):
        self.width = len(header)
        self.positions: dict[str, int] = {}
        for position, name in enumerate(header):
            self.positions.setdefault(normalise(name), position)

    def require(self, report: str, *names: str) -> None:
        missing = [name for name in names if name not in self.positions]
        if missing:
            raise SettlementReportError(
                f"the {report} report has no column(s) {', '.join(missing)}."
                " Export it again with these columns included"
                + (", or map its own columns (--map FIELD=COLUMN, or \"columns\" in the API)." if report == "generic"
                   else ".")
            )

    def reader(self, *names: str) -> Callable[[list[str]], tuple[str, ...]]:
        """A function returning those columns of a row, '' for a column the report lacks."""
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


class _StripeRows:
    def __init__(self, columns: _Columns):
        columns.require("Stripe", "currency", "gross", "reporting_category")
        if "payment_intent_id" not in columns.positions and "charge_id" not in columns.positions:
            raise SettlementReportError(
                "the Stripe report has neither payment_intent_id nor charge_id, so no row can be"
                " matched to an order. Export it again with payment_intent_id (and charge_id) included."
            )
        self.read = columns.reader(
            "reporting_category", "currency", "gross", "fee", "net", "payment_intent_id", "charge_id",
            "created_utc", "balance_transaction_id",
        )

    def record(self, fields: list[str], line_no: int) -> tuple:
        category, currency_code, gross_text, fee_text, net_text, payment_intent, charge, created, transaction = (
            self.read(fields)
        )
        record_type = STRIPE_RECORD_TYPES.get(category.strip().lower(), OTHER)
        currency, exponent = _currency(currency_code)
        gross = _minor_units(gross_text, currency, exponent)
        fee = _optional_amount(fee_text, currency, exponent)
        net = _minor_units(net_text, currency, exponent) if net_text else gross - fee
        reference, alt_reference = (payment_intent, charge or None) if payment_intent else (charge or None, None)
        return _record(line_no, record_type, reference, alt_reference, currency, gross, fee, currency, net,
                       created + "+00" if created else None, transaction or None)


class _AdyenRows:
    def __init__(self, columns: _Columns):
        columns.require("Adyen", "psp reference", "type")
        self.read = columns.reader(
            "type", "psp reference", "merchant reference", "gross currency", "gross credit (gc)",
            "gross debit (gc)", "net currency", "net credit (nc)", "net debit (nc)", "creation date",
            "timezone", "modification reference", *ADYEN_FEE_COLUMNS,
        )

    def record(self, fields: list[str], line_no: int) -> tuple:
        (kind, psp_reference, merchant_reference, gross_currency_code, gross_credit, gross_debit,
         net_currency_code, net_credit, net_debit, created, timezone, modification, *fees) = self.read(fields)
        record_type = ADYEN_RECORD_TYPES.get(kind.strip().lower(), OTHER)
        if not (gross_currency_code or net_currency_code):
            raise MalformedRow("neither Gross Currency nor Net Currency is filled")
        currency, exponent = _currency(gross_currency_code or net_currency_code)
        net_currency, net_exponent = _currency(net_currency_code) if net_currency_code else (currency, exponent)
        gross = _credit_minus_debit(gross_credit, gross_debit, currency, exponent, "Gross")
        net = _credit_minus_debit(net_credit, net_debit, net_currency, net_exponent, "Net")
        fee = sum(_optional_amount(text, net_currency, net_exponent) for text in fees)
        if created:
            created = f"{created} {timezone or 'UTC'}"
        return _record(line_no, record_type, psp_reference or None, merchant_reference or None,
                       currency, gross, fee, net_currency, net, created or None,
                       modification or psp_reference or None)


def _credit_minus_debit(credit: str, debit: str, currency: str, exponent: int, what: str) -> int:
    if credit and debit:
        raise MalformedRow(f"both {what} Credit and {what} Debit are filled; a row has one or the other")
    if credit:
        return _minor_units(credit, currency, exponent)
    return -_minor_units(debit, currency, exponent) if debit else 0


class _GenericRows:
    def __init__(self, columns: _Columns, column_map: Mapping[str, str]):
        def column(field: str) -> str:
            return column_map.get(field, field)

        columns.require("generic", *map(column, GENERIC_REQUIRED))
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
            created += "+00"
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
                 *, header: list[str] | None = None, lines_before: int = 0):
        """`column_map` reads a generic report's fields from other columns: {"reference": "Order Ref"}.

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
        # Only the generic format takes a mapping, and a mapped header need not look generic.
        self.format = format or ("generic" if column_map else detect_format(self.header))
        self.provider = PROVIDER_OF_FORMAT[self.format]
        self.column_map = check_column_map(self.format, column_map)
        columns = _Columns(self.header)
        self._parser = (_GenericRows(columns, self.column_map) if self.format == "generic"
                        else _ROW_PARSERS[self.format](columns))
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
