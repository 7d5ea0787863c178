"""Data API values in and out of PostgreSQL, typed the way Aurora PostgreSQL types them.

Parameters. The Data API binds each parameter through JDBC with a fixed PostgreSQL
type: a stringValue is a `varchar` (so a uuid or jsonb column needs a typeHint or a
CAST), a longValue an `int8`, a doubleValue a `float8`, a booleanValue a `bool`, a
blobValue a `bytea`. A typeHint turns a stringValue into `uuid`, `json`, `timestamp`
(no time zone), `date`, `time` or `numeric`. Each value goes to PostgreSQL as text with
that type's oid, so PostgreSQL parses it and raises its own errors, as it does on Aurora.
https://docs.aws.amazon.com/rdsdataservice/latest/APIReference/API_SqlParameter.html

Results. Values leave as PostgreSQL prints them (the JDBC driver's getString), except
integers (longValue), floats (doubleValue), booleans (booleanValue), bytea (blobValue)
and one-dimensional arrays (arrayValue). Types with a time zone come back in UTC with no
offset. NUMERIC is a string unless resultSetOptions asks for numbers.
https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/data-api.html
"""
from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.adapt import AdaptersMap, Dumper
from psycopg.postgres import adapters as default_adapters
from psycopg.postgres import types as pg_types


class ParameterError(ValueError):
    """A parameter the Data API would refuse before it reaches the database."""


class UnsupportedResult(ValueError):
    """A result the Data API cannot return (UnsupportedResultException)."""


class _TypedText(str):
    """A parameter's text, sent with the PostgreSQL type the Data API gives it."""


def _typed_text_class(type_name: str) -> type[_TypedText]:
    return type(f"{type_name.capitalize()}Text", (_TypedText,), {})


class _TypedTextDumper(Dumper):
    def dump(self, obj: str) -> bytes:
        return obj.encode()


PARAMETER_TYPES = ("varchar", "int8", "float8", "bool", "numeric", "uuid", "json", "date", "time", "timestamp")
_TEXT_AS = {name: _typed_text_class(name) for name in PARAMETER_TYPES}

# The adapters every connection of the local endpoint uses: typed text in, raw text out.
ADAPTERS = AdaptersMap(default_adapters)
for _name, _cls in _TEXT_AS.items():
    ADAPTERS.register_dumper(
        _cls, type(f"{_cls.__name__}Dumper", (_TypedTextDumper,), {"oid": pg_types[_name].oid})
    )

# The formats the Data API accepts with a typeHint (API_SqlParameter); a fraction of up
# to nine digits is what JDBC's Timestamp.valueOf reads.
_HINTED_FORMATS = {
    "DATE": ("date", re.compile(r"\d{4}-\d{2}-\d{2}"), "Date"),
    "TIME": ("time", re.compile(r"\d{2}:\d{2}:\d{2}(\.\d{1,9})?"), "Time"),
    "TIMESTAMP": ("timestamp", re.compile(r"\d{4}-\d{1,2}-\d{1,2} \d{1,2}:\d{2}:\d{2}(\.\d{1,9})?"), "TimeStamp"),
}
_HINTED_TYPES = {"UUID": "uuid", "JSON": "json", "DECIMAL": "numeric"}
_INT64 = range(-(2**63), 2**63)


def bind_parameters(parameters: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """psycopg parameters for a validated SqlParametersList."""
    bound: dict[str, Any] = {}
    for parameter in parameters:
        name = parameter.get("name")
        if not name:
            raise ParameterError("Every parameter needs a name: the statement refers to it as :name.")
        bound[name] = _bind_value(name, parameter["value"], parameter.get("typeHint"))
    return bound


def _bind_value(name: str, field: Mapping[str, Any], type_hint: str | None) -> Any:
    [(kind, value)] = field.items()  # the request validator enforces one member per union
    if kind == "isNull":
        if value is not True:
            raise ParameterError(f"Parameter {name}: isNull must be true; send the value in another field.")
        return None
    if kind == "stringValue":
        return _bind_string(name, value, type_hint)
    if kind == "longValue":
        if value not in _INT64:
            raise ParameterError(f"Parameter {name}: longValue {value} does not fit a 64-bit integer.")
        return _TEXT_AS["int8"](value)
    if kind == "doubleValue":
        return _TEXT_AS["float8"](repr(float(value)))
    if kind == "booleanValue":
        return _TEXT_AS["bool"]("true" if value else "false")
    if kind == "blobValue":
        return _decode_blob(name, value)
    raise ParameterError("Array parameters are not supported.")


def _bind_string(name: str, value: str, type_hint: str | None) -> _TypedText:
    if type_hint in _HINTED_FORMATS:
        type_name, pattern, label = _HINTED_FORMATS[type_hint]
        if not pattern.fullmatch(value):
            raise ParameterError(f"Parse Error for {label}: input contains invalid characters (parameter {name}).")
        return _TEXT_AS[type_name](value)
    return _TEXT_AS[_HINTED_TYPES.get(type_hint or "", "varchar")](value)


def _decode_blob(name: str, value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ParameterError(f"Parameter {name}: blobValue is not valid base64.") from None


@dataclass(frozen=True)
class ResultOptions:
    """ExecuteStatement's resultSetOptions."""

    longs_as_strings: bool = False  # longReturnType STRING
    decimals_as_numbers: bool = False  # decimalReturnType DOUBLE_OR_LONG

    @classmethod
    def from_request(cls, options: Mapping[str, str] | None) -> ResultOptions:
        options = options or {}
        return cls(
            longs_as_strings=options.get("longReturnType") == "STRING",
            decimals_as_numbers=options.get("decimalReturnType") == "DOUBLE_OR_LONG",
        )


_LONG_TYPES = {pg_types[name].oid for name in ("int2", "int4", "int8", "oid")}
_DOUBLE_TYPES = {pg_types[name].oid for name in ("float4", "float8")}
_BOOL, _BYTEA, _NUMERIC = pg_types["bool"].oid, pg_types["bytea"].oid, pg_types["numeric"].oid
_TIMESTAMPTZ, _TIMETZ = pg_types["timestamptz"].oid, pg_types["timetz"].oid
_ELEMENT_OF_ARRAY = {info.array_oid: info.oid for info in pg_types if info.array_oid}
_UTC_SUFFIX = re.compile(r"\+00(?= BC$|$)")
_TIME_WITH_OFFSET = re.compile(r"(\d{2}):(\d{2}):(\d{2})(\.\d+)?([+-])(\d{2})(?::(\d{2}))?(?::(\d{2}))?")


def is_array(type_oid: int) -> bool:
    return type_oid in _ELEMENT_OF_ARRAY


def field(type_oid: int, raw: bytes | None, options: ResultOptions) -> dict[str, Any]:
    """One value of a result row as a Data API Field."""
    if raw is None:
        return {"isNull": True}
    text = raw.decode()
    if type_oid in _ELEMENT_OF_ARRAY:
        return {"arrayValue": _array_value(_ELEMENT_OF_ARRAY[type_oid], text, options)}
    return _scalar_field(type_oid, text, options)


def _scalar_field(type_oid: int, text: str, options: ResultOptions) -> dict[str, Any]:
    if type_oid in _LONG_TYPES:
        return {"stringValue": text} if options.longs_as_strings else {"longValue": int(text)}
    if type_oid in _DOUBLE_TYPES:
        return {"doubleValue": float(text)}
    if type_oid == _BOOL:
        return {"booleanValue": text == "t"}
    if type_oid == _BYTEA:
        return {"blobValue": base64.b64encode(bytes.fromhex(text[2:])).decode()}
    if type_oid == _NUMERIC and options.decimals_as_numbers:
        return _decimal_as_number(text)
    return {"stringValue": _as_utc(type_oid, text)}


def _decimal_as_number(text: str) -> dict[str, Any]:
    # DOUBLE_OR_LONG: a long when the value has no fractional digits, a double otherwise.
    if text.lstrip("-").isdigit() and int(text) in _INT64:
        return {"longValue": int(text)}
    return {"doubleValue": float(text)}


def _as_utc(type_oid: int, text: str) -> str:
    """Timestamps and times with a time zone, as the Data API returns them: in UTC, no offset."""
    if type_oid == _TIMESTAMPTZ:
        return _UTC_SUFFIX.sub("", text)  # the endpoint's sessions run in UTC
    if type_oid == _TIMETZ and (parts := _TIME_WITH_OFFSET.fullmatch(text)):
        hours, minutes, seconds, fraction, sign, off_h, off_m, off_s = parts.groups()
        offset = int(off_h) * 3600 + int(off_m or 0) * 60 + int(off_s or 0)
        utc = (int(hours) * 3600 + int(minutes) * 60 + int(seconds) - (offset if sign == "+" else -offset)) % 86400
        return f"{utc // 3600:02d}:{utc // 60 % 60:02d}:{utc % 60:02d}{fraction or ''}"
    return text


def _array_value(element_oid: int, text: str, options: ResultOptions) -> dict[str, list[Any]]:
    if element_oid in _LONG_TYPES and not options.longs_as_strings:
        member, convert = "longValues", int
    elif element_oid in _DOUBLE_TYPES:
        member, convert = "doubleValues", float
    elif element_oid == _BOOL:
        member, convert = "booleanValues", lambda item: item == "t"
    else:
        member, convert = "stringValues", lambda item: _as_utc(element_oid, item)
    return {member: [None if item is None else convert(item) for item in _array_items(text)]}


def _array_items(text: str) -> list[str | None]:
    """The elements of a one-dimensional array literal, as PostgreSQL prints it."""
    if text.startswith("["):  # explicit bounds, e.g. [0:1]={a,b}
        text = text[text.index("=") + 1 :]
    body = text[1:-1]
    items: list[str | None] = []
    if not body:
        return items
    i, n = 0, len(body)
    while True:
        if body[i] == "{":
            raise UnsupportedResult("The result contains a multidimensional array, which the Data API cannot return.")
        if body[i] == '"':
            j, chars = i + 1, []
            while body[j] != '"':
                j += body[j] == "\\"
                chars.append(body[j])
                j += 1
            items.append("".join(chars))
            j += 1
        else:
            j = body.find(",", i)
            j = n if j < 0 else j
            raw = body[i:j]
            items.append(None if raw == "NULL" else raw)
        if j >= n:
            return items
        i = j + 1


def json_value(type_oid: int, raw: bytes | None, options: ResultOptions) -> Any:
    """One value of a row in formattedRecords (data-api-json: Data type mapping)."""
    if raw is None:
        return None
    encoded = field(type_oid, raw, options)
    [(kind, value)] = encoded.items()
    if kind == "arrayValue":
        [(_, items)] = value.items()
        return items
    return value


# java.sql.Types codes that PostgreSQL's JDBC driver reports, which the Data API passes on.
_JDBC_TYPES = {
    "int2": 5, "int4": 4, "int8": -5, "oid": -5, "float4": 7, "float8": 8, "numeric": 2, "money": 8,
    "bool": -7, "bit": -7, "bpchar": 1, "char": 1, "varchar": 12, "text": 12, "name": 12, "bytea": -2,
    "date": 91, "time": 92, "timetz": 92, "timestamp": 93, "timestamptz": 93,
}
_JDBC_ARRAY, _JDBC_OTHER = 2003, 1111
_PRECISION = {"int2": 5, "int4": 10, "int8": 19, "oid": 10, "float4": 8, "float8": 17, "bool": 1,
              "date": 13, "time": 15, "timetz": 21, "timestamp": 29, "timestamptz": 35}
_SCALE = {"float4": 8, "float8": 17, "time": 6, "timetz": 6, "timestamp": 6, "timestamptz": 6}
_VARIABLE_LENGTH = 2147483647
_SIGNED = {"int2", "int4", "int8", "float4", "float8", "numeric", "money"}
_CASE_SENSITIVE = {"text", "varchar", "bpchar", "char", "name", "json", "jsonb", "xml"}


@dataclass(frozen=True)
class TableColumn:
    schema: str
    table: str
    not_null: bool
    auto_increment: bool


def column_metadata(
    label: str, type_oid: int, type_modifier: int, type_name: Callable[[int], str], column: TableColumn | None
) -> dict[str, Any]:
    """ColumnMetadata for one result column; precision and scale follow the JDBC driver's choices."""
    name = type_name(type_oid)
    precision, scale = _PRECISION.get(name, 0), _SCALE.get(name, 0)
    if name == "numeric" and type_modifier >= 4:
        precision, scale = (type_modifier - 4) >> 16, (type_modifier - 4) & 0xFFFF
    elif name in ("varchar", "bpchar"):
        precision = type_modifier - 4 if type_modifier >= 4 else _VARIABLE_LENGTH
    elif name in ("text", "bytea", "json", "jsonb"):
        precision = _VARIABLE_LENGTH
    return {
        "name": label,
        "label": label,
        "type": _JDBC_ARRAY if type_oid in _ELEMENT_OF_ARRAY else _JDBC_TYPES.get(name, _JDBC_OTHER),
        "typeName": name,
        "schemaName": column.schema if column else "",
        "tableName": column.table if column else "",
        "isAutoIncrement": bool(column and column.auto_increment),
        "isSigned": name in _SIGNED,
        "isCurrency": name == "money",
        "isCaseSensitive": name in _CASE_SENSITIVE,
        "nullable": 0 if column and column.not_null else 1,
        "precision": precision,
        "scale": scale,
        "arrayBaseColumnType": _JDBC_TYPES.get(type_name(_ELEMENT_OF_ARRAY[type_oid]), _JDBC_OTHER)
        if type_oid in _ELEMENT_OF_ARRAY else 0,
    }


def builtin_type_name(type_oid: int) -> str | None:
    """PostgreSQL's name for a built-in type; arrays are named like pg_type does: _int4."""
    if type_oid in _ELEMENT_OF_ARRAY:
        return f"_{pg_types[_ELEMENT_OF_ARRAY[type_oid]].name}"
    info = pg_types.get(type_oid)
    return info.name if info is not None else None
