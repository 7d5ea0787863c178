"""Money as integer minor units with an ISO 4217 currency."""
from __future__ import annotations

from decimal import Context, Decimal, InvalidOperation

# ISO 4217 active codes. Exponents default to 2; the exceptions are listed below.
ISO_4217_CODES = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP
    BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP
    GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR
    KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK
    MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR
    SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS
    UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWL
    """.split()
)

_EXPONENT_EXCEPTIONS = {
    **dict.fromkeys(
        ["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV",
         "XAF", "XOF", "XPF"],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
}


class MoneyError(ValueError):
    """An amount or currency that cannot be represented exactly."""


def is_currency(code: str) -> bool:
    return code in ISO_4217_CODES


def currency_exponent(code: str) -> int:
    if code not in ISO_4217_CODES:
        raise MoneyError(f"unknown ISO 4217 currency code {code!r}")
    return _EXPONENT_EXCEPTIONS.get(code, 2)


def to_minor_units(amount: str | Decimal, currency: str) -> int:
    """Convert a decimal major-unit amount to exact integer minor units; never rounds."""
    exponent = currency_exponent(currency)
    try:
        value = Decimal(amount) if isinstance(amount, str) else amount
    except InvalidOperation as exc:
        raise MoneyError(f"{amount!r} is not a decimal amount") from exc
    if not value.is_finite():
        raise MoneyError(f"{amount!r} is not a finite amount")
    # Enough precision that scaling never rounds, however many digits the amount has.
    context = Context(prec=len(value.as_tuple().digits) + exponent + 1)
    minor = value.scaleb(exponent, context)
    if minor != minor.to_integral_value():
        raise MoneyError(
            f"{amount} {currency} has more than {exponent} decimal places and cannot be"
            " represented exactly in minor units"
        )
    return int(minor)
