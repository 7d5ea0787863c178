"""The local Data API's value mapping, without a database."""
from __future__ import annotations

import pytest
from psycopg.postgres import types as pg_types

from conveyor_tools.dataapi.values import (
    ParameterError,
    ResultOptions,
    UnsupportedResult,
    bind_parameters,
    column_metadata,
    field,
    json_value,
)

OID = {name: pg_types[name].oid for name in ("int4", "int8", "float8", "bool", "bytea", "numeric", "text",
                                              "timestamptz", "timetz", "uuid", "jsonb")}
INT4_ARRAY, TEXT_ARRAY = pg_types["int4"].array_oid, pg_types["text"].array_oid


def test_parameters_get_the_postgresql_types_the_data_api_gives_them():
    bound = bind_parameters([
        {"name": "s", "value": {"stringValue": "héllo"}},
        {"name": "u", "value": {"stringValue": "6f1c1d5e-0000-4000-8000-000000000001"}, "typeHint": "UUID"},
        {"name": "j", "value": {"stringValue": '{"a": 1}'}, "typeHint": "JSON"},
        {"name": "ts", "value": {"stringValue": "2024-02-29 23:59:59.123456"}, "typeHint": "TIMESTAMP"},
        {"name": "d", "value": {"stringValue": "12.50"}, "typeHint": "DECIMAL"},
        {"name": "n", "value": {"longValue": -(2**63)}},
        {"name": "f", "value": {"doubleValue": 0.1}},
        {"name": "b", "value": {"booleanValue": False}},
        {"name": "blob", "value": {"blobValue": "AAH/"}},
        {"name": "nothing", "value": {"isNull": True}},
    ])

    assert {name: type(value).__name__ for name, value in bound.items()} == {
        "s": "VarcharText", "u": "UuidText", "j": "JsonText", "ts": "TimestampText", "d": "NumericText",
        "n": "Int8Text", "f": "Float8Text", "b": "BoolText", "blob": "bytes", "nothing": "NoneType",
    }
    assert (bound["n"], bound["f"], bound["b"], bound["blob"]) == (str(-(2**63)), "0.1", "false", b"\x00\x01\xff")


@pytest.mark.parametrize(
    ("parameter", "message"),
    [
        ({"name": "t", "value": {"stringValue": "2024-02-29T23:59:59Z"}, "typeHint": "TIMESTAMP"},
         "Parse Error for TimeStamp"),
        ({"name": "t", "value": {"stringValue": "2024-02-29 10:00:00+02"}, "typeHint": "TIMESTAMP"},
         "Parse Error for TimeStamp"),
        ({"name": "d", "value": {"stringValue": "29/02/2024"}, "typeHint": "DATE"}, "Parse Error for Date"),
        ({"name": "a", "value": {"arrayValue": {"longValues": [1]}}}, "Array parameters are not supported"),
        ({"name": "n", "value": {"longValue": 2**63}}, "does not fit a 64-bit integer"),
        ({"name": "b", "value": {"blobValue": "not base64!"}}, "not valid base64"),
        ({"value": {"stringValue": "x"}}, "needs a name"),
    ],
)
def test_parameters_the_data_api_refuses(parameter, message):
    with pytest.raises(ParameterError, match=message):
        bind_parameters([parameter])


def test_result_fields_follow_the_data_api_mapping():
    options = ResultOptions()
    assert field(OID["int4"], b"42", options) == {"longValue": 42}
    assert field(OID["float8"], b"0.1", options) == {"doubleValue": 0.1}
    assert field(OID["bool"], b"f", options) == {"booleanValue": False}
    assert field(OID["bytea"], b"\\x0001ff", options) == {"blobValue": "AAH/"}
    assert field(OID["numeric"], b"12.50", options) == {"stringValue": "12.50"}
    assert field(OID["uuid"], b"6f1c1d5e-0000-4000-8000-000000000001", options) == {
        "stringValue": "6f1c1d5e-0000-4000-8000-000000000001"}
    assert field(OID["text"], None, options) == {"isNull": True}
    # The endpoint's sessions run in UTC; the Data API returns TIMESTAMPTZ in UTC with no offset.
    assert field(OID["timestamptz"], b"2024-02-29 18:29:59.123456+00", options) == {
        "stringValue": "2024-02-29 18:29:59.123456"}
    assert field(OID["timetz"], b"15:30:00.5-08", options) == {"stringValue": "23:30:00.5"}


def test_result_set_options_turn_longs_into_strings_and_decimals_into_numbers():
    assert field(OID["int8"], b"9007199254740993", ResultOptions(longs_as_strings=True)) == {
        "stringValue": "9007199254740993"}
    as_numbers = ResultOptions(decimals_as_numbers=True)
    assert field(OID["numeric"], b"-12", as_numbers) == {"longValue": -12}
    assert field(OID["numeric"], b"12.5", as_numbers) == {"doubleValue": 12.5}


def test_arrays_are_returned_one_dimension_deep():
    options = ResultOptions()
    assert field(INT4_ARRAY, b"{1,NULL,3}", options) == {"arrayValue": {"longValues": [1, None, 3]}}
    assert field(TEXT_ARRAY, b'{plain,"with \\"quotes\\", and comma",NULL,"NULL"}', options) == {
        "arrayValue": {"stringValues": ["plain", 'with "quotes", and comma', None, "NULL"]}}
    assert field(INT4_ARRAY, b"[0:1]={7,8}", options) == {"arrayValue": {"longValues": [7, 8]}}
    assert field(INT4_ARRAY, b"{}", options) == {"arrayValue": {"longValues": []}}
    with pytest.raises(UnsupportedResult, match="multidimensional"):
        field(INT4_ARRAY, b"{{1,2},{3,4}}", options)


def test_json_records_use_json_types_and_strings_for_the_rest():
    options = ResultOptions()
    assert json_value(OID["int8"], b"7", options) == 7
    assert json_value(OID["numeric"], b"1.50", options) == "1.50"
    assert json_value(OID["jsonb"], b'{"a": 1}', options) == '{"a": 1}'
    assert json_value(INT4_ARRAY, b"{1,2}", options) == [1, 2]
    assert json_value(OID["bool"], None, options) is None


def test_column_metadata_reports_jdbc_types_precision_and_nullability():
    names = {oid: name for name, oid in OID.items()} | {INT4_ARRAY: "_int4"}

    numeric = column_metadata("total", OID["numeric"], ((12 << 16) | 2) + 4, names.__getitem__, None)
    array = column_metadata("ids", INT4_ARRAY, -1, names.__getitem__, None)

    assert (numeric["type"], numeric["typeName"], numeric["precision"], numeric["scale"], numeric["nullable"]) == (
        2, "numeric", 12, 2, 1)
    assert (array["type"], array["typeName"], array["arrayBaseColumnType"]) == (2003, "_int4", 4)
