"""The local Data API endpoint through boto3, against a real PostgreSQL.

The type matrix proves that every column type Conveyor uses round-trips identically
through the Data API and through psycopg; the protocol tests cover each operation, the
documented errors and limits, and the paused-cluster and latency controls.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import boto3
import psycopg
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from sqlalchemy.engine import make_url

from conveyor.adapters.database import Database
from conveyor.dataapi.client import DataApiDatabase
from conveyor_tools.dataapi.server import LocalDataApi
from conveyor_tools.local.database import libpq_url
from support import eventually

CLUSTER = "arn:aws:rds:us-east-1:123456789012:cluster:conveyor-local"
SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:conveyor-local-AbCdEf"
IDS = {"resourceArn": CLUSTER, "secretArn": SECRET}


@pytest.fixture(scope="module")
def endpoint(database_url: str) -> Iterator[LocalDataApi]:
    with LocalDataApi(database_url) as api:
        yield api


@pytest.fixture(scope="module")
def aws_environment(endpoint: LocalDataApi) -> Iterator[None]:
    """What a Lambda function would have, with boto3 pointed at the local endpoint by one variable."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL_RDS_DATA", endpoint.endpoint_url)
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_ACCESS_KEY_ID", "test")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="module")
def rds(aws_environment: None) -> Any:
    # No botocore retries, so every call the tests make is one request the endpoint counts.
    return boto3.session.Session().client("rds-data", config=Config(retries={"total_max_attempts": 1}))


@pytest.fixture(scope="module")
def database_name(database_url: str) -> str:
    return make_url(database_url).database


@pytest.fixture(scope="module")
def data_api_database(aws_environment: None, database_name: str) -> Iterator[DataApiDatabase]:
    database = DataApiDatabase(CLUSTER, SECRET, database_name)
    yield database
    database.dispose()


@pytest.fixture(autouse=True)
def awake_endpoint(endpoint: LocalDataApi) -> None:
    endpoint.resume()
    endpoint.latency_seconds = 0.0
    endpoint.reset_calls()


@pytest.fixture(scope="module")
def direct(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as connection:
        yield connection


@pytest.fixture(scope="module")
def types_table(direct: psycopg.Connection) -> Iterator[str]:
    direct.execute(
        "CREATE TABLE dataapi_types (id text PRIMARY KEY, ts timestamptz, u uuid, j jsonb, amount bigint,"
        " t text, flag boolean)"
    )
    yield "dataapi_types"
    direct.execute("DROP TABLE dataapi_types")


def execute(rds: Any, database: str, sql: str, **options: Any) -> dict[str, Any]:
    return rds.execute_statement(resourceArn=CLUSTER, secretArn=SECRET, database=database, sql=sql, **options)


def error_of(call: Any) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as raised:
        call()
    error = raised.value.response
    return error["Error"]["Code"], error["Error"]["Message"], error["ResponseMetadata"]["HTTPStatusCode"]


# --- the type matrix ------------------------------------------------------------------------

PLUS_0530 = timezone(timedelta(hours=5, minutes=30))
MINUS_0800 = timezone(timedelta(hours=-8))
TRICKY_TEXT = "Zoë ✓ 🎉 'single' \"double\" \\ back\\slash\nnew line\ttab"
TYPE_CASES = [
    ("ts", "timestamptz", datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=PLUS_0530)),
    ("ts", "timestamptz", datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=MINUS_0800)),
    ("ts", "timestamptz", datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC)),
    ("u", "uuid", uuid.UUID("6f1c1d5e-7a2b-4c3d-8e9f-0a1b2c3d4e5f")),
    ("j", "jsonb", {"name": TRICKY_TEXT, "lines": [1, None, True, 2.5], "empty": {}}),
    ("amount", "bigint", 9_007_199_254_740_993),  # 2**53 + 1: a float would round it
    ("amount", "bigint", -9_223_372_036_854_775_808),
    ("t", "text", TRICKY_TEXT),
    ("flag", "boolean", True),
    ("flag", "boolean", False),
] + [(column, sql_type, None) for column, sql_type in
     [("ts", "timestamptz"), ("u", "uuid"), ("j", "jsonb"), ("amount", "bigint"), ("t", "text"), ("flag", "boolean")]]


def conveyor_parameter(value: Any) -> Any:
    """The value as Conveyor passes it: str, int, bool or None, cast in SQL."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def decode_field(sql_type: str, field: dict[str, Any]) -> Any:
    """A Data API field as Python; the Data API returns TIMESTAMPTZ in UTC without an offset."""
    [(kind, value)] = field.items()
    if kind == "isNull":
        return None
    return {
        "timestamptz": lambda text: datetime.fromisoformat(text).replace(tzinfo=UTC),
        "uuid": uuid.UUID,
        "jsonb": json.loads,
    }.get(sql_type, lambda same: same)(value)


@pytest.mark.parametrize(("column", "sql_type", "value"), TYPE_CASES,
                         ids=[f"{sql_type}-{index}" for index, (_, sql_type, _) in enumerate(TYPE_CASES)])
def test_a_value_round_trips_identically_through_the_data_api_and_psycopg(
    column, sql_type, value, types_table, direct, rds, database_name, data_api_database, session_database,
):
    written_by_data_api, written_by_psycopg = f"api-{uuid.uuid4()}", f"pg-{uuid.uuid4()}"

    # Written through the Data API the way Conveyor writes: a plain typed field, cast in SQL.
    changed = data_api_database.execute(
        f"INSERT INTO {types_table} (id, {column}) VALUES (:id, CAST(:value AS {sql_type}))",
        {"id": written_by_data_api, "value": conveyor_parameter(value)},
    )
    direct.execute(f"INSERT INTO {types_table} (id, {column}) VALUES (%s, %s)",
                   [written_by_psycopg, psycopg.types.json.Jsonb(value) if sql_type == "jsonb" else value])

    select = f"SELECT {column} FROM {types_table} WHERE id = %s"
    assert changed == 1
    assert direct.execute(select, [written_by_data_api]).fetchone()[0] == value
    assert direct.execute(select, [written_by_psycopg]).fetchone()[0] == value

    # Read back as typed records...
    for row_id in (written_by_data_api, written_by_psycopg):
        [[field]] = execute(rds, database_name, f"SELECT {column} FROM {types_table} WHERE id = :id",
                            parameters=[{"name": "id", "value": {"stringValue": row_id}}])["records"]
        assert decode_field(sql_type, field) == value
    # ...and as the JSON text every Conveyor statement returns, identical on both paths.
    as_json = f"SELECT json_build_object('value', {column})::text FROM {types_table} WHERE id = :id"
    assert data_api_database.fetch_json(as_json, {"id": written_by_psycopg}) == \
        session_database.fetch_json(as_json, {"id": written_by_psycopg})


def test_type_hints_send_uuid_json_and_timestamp_without_a_cast(types_table, direct, rds, database_name):
    row_id = f"hint-{uuid.uuid4()}"
    when = datetime(2024, 2, 29, 18, 29, 59, 123456, tzinfo=UTC)

    execute(rds, database_name, f"INSERT INTO {types_table} (id, u, j, ts) VALUES (:id, :u, :j, :ts)", parameters=[
        {"name": "id", "value": {"stringValue": row_id}},
        {"name": "u", "value": {"stringValue": "6f1c1d5e-7a2b-4c3d-8e9f-0a1b2c3d4e5f"}, "typeHint": "UUID"},
        {"name": "j", "value": {"stringValue": '{"a": [1, "é"]}'}, "typeHint": "JSON"},
        # TIMESTAMP carries no offset: the Data API session's time zone, UTC, applies.
        {"name": "ts", "value": {"stringValue": "2024-02-29 18:29:59.123456"}, "typeHint": "TIMESTAMP"},
    ])

    row = direct.execute(f"SELECT u, j, ts FROM {types_table} WHERE id = %s", [row_id]).fetchone()
    assert row == (uuid.UUID("6f1c1d5e-7a2b-4c3d-8e9f-0a1b2c3d4e5f"), {"a": [1, "é"]}, when)


def test_a_string_without_a_hint_is_varchar_so_a_uuid_column_refuses_it(types_table, rds, database_name):
    code, message, status = error_of(lambda: execute(
        rds, database_name, f"INSERT INTO {types_table} (id, u) VALUES ('x', :u)",
        parameters=[{"name": "u", "value": {"stringValue": "6f1c1d5e-7a2b-4c3d-8e9f-0a1b2c3d4e5f"}}]))

    assert (code, status) == ("DatabaseErrorException", 400)
    assert 'column "u" is of type uuid but expression is of type character varying' in message
    assert message.endswith("; SQLState: 42804")


# --- the protocol ---------------------------------------------------------------------------


def test_boto3_finds_the_endpoint_through_aws_endpoint_url_rds_data(rds, endpoint, database_name):
    assert rds.meta.endpoint_url == endpoint.endpoint_url
    assert execute(rds, database_name, "SELECT current_database()")["records"] == [[{"stringValue": database_name}]]


def test_the_request_database_picks_the_postgresql_database(rds):
    assert execute(rds, "postgres", "SELECT current_database()")["records"] == [[{"stringValue": "postgres"}]]
    code, message, _ = error_of(lambda: execute(rds, "no_such_database", "SELECT 1"))
    assert code == "DatabaseErrorException"
    assert message.startswith('FATAL: database "no_such_database" does not exist') and "SQLState: 3D000" in message


def test_statements_report_the_rows_they_changed(rds, database_name):
    execute(rds, database_name, "CREATE TABLE dataapi_counts (a int)")
    try:
        inserted = execute(rds, database_name, "INSERT INTO dataapi_counts SELECT generate_series(1, 3)")
        selected = execute(rds, database_name, "SELECT a FROM dataapi_counts ORDER BY a")
    finally:
        execute(rds, database_name, "DROP TABLE dataapi_counts")

    assert (inserted["numberOfRecordsUpdated"], inserted["generatedFields"]) == (3, [])
    assert selected["numberOfRecordsUpdated"] == 0
    assert selected["records"] == [[{"longValue": 1}], [{"longValue": 2}], [{"longValue": 3}]]
    assert "columnMetadata" not in selected


def test_batch_execute_runs_the_statement_once_per_parameter_set(rds, database_name, direct):
    direct.execute("CREATE TABLE dataapi_batch (a int, b text)")
    try:
        response = rds.batch_execute_statement(
            resourceArn=CLUSTER, secretArn=SECRET, database=database_name,
            sql="INSERT INTO dataapi_batch VALUES (:a, :b)",
            parameterSets=[[{"name": "a", "value": {"longValue": n}}, {"name": "b", "value": {"stringValue": f"#{n}"}}]
                           for n in range(3)],
        )
        rows = direct.execute("SELECT a, b FROM dataapi_batch ORDER BY a").fetchall()
    finally:
        direct.execute("DROP TABLE dataapi_batch")

    assert response["updateResults"] == [{"generatedFields": []}] * 3
    assert rows == [(0, "#0"), (1, "#1"), (2, "#2")]


def test_a_transaction_commits_or_rolls_back_as_a_whole(rds, database_name, direct):
    ids = {"resourceArn": CLUSTER, "secretArn": SECRET}
    count = "SELECT count(*) FROM dataapi_tx"
    direct.execute("CREATE TABLE dataapi_tx (a int)")
    try:
        committed = rds.begin_transaction(database=database_name, **ids)["transactionId"]
        execute(rds, database_name, "INSERT INTO dataapi_tx VALUES (1)", transactionId=committed)
        execute(rds, database_name, "INSERT INTO dataapi_tx VALUES (2)", transactionId=committed)
        unseen_before_commit = direct.execute(count).fetchone()[0]
        commit = rds.commit_transaction(transactionId=committed, **ids)
        after_commit = direct.execute(count).fetchone()[0]

        rolled_back = rds.begin_transaction(database=database_name, **ids)["transactionId"]
        execute(rds, database_name, "DELETE FROM dataapi_tx", transactionId=rolled_back)
        rollback = rds.rollback_transaction(transactionId=rolled_back, **ids)
        after_rollback = direct.execute(count).fetchone()[0]
    finally:
        direct.execute("DROP TABLE dataapi_tx")

    assert (unseen_before_commit, after_commit, after_rollback) == (0, 2, 2)
    assert commit["transactionStatus"] == "Transaction Committed"
    assert rollback["transactionStatus"] == "Rollback Complete"


# --- transactions ---------------------------------------------------------------------------
# Every statement that names a transaction runs inside it, first or later: other sessions see
# nothing of it until CommitTransaction, and RollbackTransaction undoes it. Each effect is read
# from two other sessions: a direct psycopg connection and a Data API call without transactionId.


@pytest.fixture(scope="module")
def isolation_table(direct: psycopg.Connection) -> Iterator[str]:
    direct.execute("CREATE TABLE dataapi_isolation (tag text NOT NULL, n int NOT NULL, PRIMARY KEY (tag, n))")
    yield "dataapi_isolation"
    direct.execute("DROP TABLE dataapi_isolation")


def insert_literal(rds: Any, database: str, tag: str, **transaction: str) -> None:
    execute(rds, database, f"INSERT INTO dataapi_isolation VALUES ('{tag}', 1), ('{tag}', 2)", **transaction)


def insert_with_parameters(rds: Any, database: str, tag: str, **transaction: str) -> None:
    execute(rds, database, "INSERT INTO dataapi_isolation VALUES (:tag, :a), (:tag, :b)", parameters=[
        {"name": "tag", "value": {"stringValue": tag}}, {"name": "a", "value": {"longValue": 1}},
        {"name": "b", "value": {"longValue": 2}}], **transaction)


def insert_batch(rds: Any, database: str, tag: str, numbers: tuple[int, ...] = (1, 2), **transaction: str) -> None:
    rds.batch_execute_statement(
        database=database, sql="INSERT INTO dataapi_isolation VALUES (:tag, :n)",
        parameterSets=[[{"name": "tag", "value": {"stringValue": tag}}, {"name": "n", "value": {"longValue": n}}]
                       for n in numbers], **IDS, **transaction)


def create_table(rds: Any, database: str, tag: str, **transaction: str) -> None:
    execute(rds, database, f"CREATE TABLE dataapi_ddl_{tag} (n int)", **transaction)


# What each statement leaves when committed: rows of its tag, or its table.
STATEMENT_KINDS = {
    "execute": (insert_literal, 2),
    "execute_with_parameters": (insert_with_parameters, 2),
    "batch_execute": (insert_batch, 2),
    "ddl": (create_table, 1),
}


def effects_sql(tag: str) -> str:
    """(rows or table the statement left, rows an earlier statement of the transaction left)."""
    return (f"SELECT (SELECT count(*) FROM dataapi_isolation WHERE tag = '{tag}')"
            f" + (SELECT count(*) FROM pg_class WHERE relname = 'dataapi_ddl_{tag}'),"
            f" (SELECT count(*) FROM dataapi_isolation WHERE tag = '{tag}:earlier')")


def effects_seen(rds: Any, database: str, tag: str, **transaction: str) -> tuple[int, int]:
    [record] = execute(rds, database, effects_sql(tag), **transaction)["records"]
    return tuple(field["longValue"] for field in record)


def effects_seen_by_others(rds: Any, database: str, direct: psycopg.Connection, tag: str) -> list[tuple[int, int]]:
    return [tuple(direct.execute(effects_sql(tag)).fetchone()), effects_seen(rds, database, tag)]


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
@pytest.mark.parametrize("position", ["first", "later"])
@pytest.mark.parametrize("kind", list(STATEMENT_KINDS))
def test_a_statement_in_a_transaction_is_seen_by_other_sessions_only_once_committed(
    kind, position, outcome, rds, database_name, direct, isolation_table,
):
    run, effect = STATEMENT_KINDS[kind]
    tag = f"{kind}_{position}_{outcome}"
    transaction = {"transactionId": rds.begin_transaction(database=database_name, **IDS)["transactionId"]}
    try:
        if position == "later":
            execute(rds, database_name, f"INSERT INTO dataapi_isolation VALUES ('{tag}:earlier', 0)", **transaction)
        run(rds, database_name, tag, **transaction)
        seen_inside = effects_seen(rds, database_name, tag, **transaction)
        seen_by_others_before = effects_seen_by_others(rds, database_name, direct, tag)
        if outcome == "commit":
            answer = rds.commit_transaction(**IDS, **transaction)["transactionStatus"]
        else:
            answer = rds.rollback_transaction(**IDS, **transaction)["transactionStatus"]
        seen_by_others_after = effects_seen_by_others(rds, database_name, direct, tag)
    finally:
        direct.execute("DELETE FROM dataapi_isolation WHERE tag LIKE %s", [f"{tag}%"])
        direct.execute(f"DROP TABLE IF EXISTS dataapi_ddl_{tag}")

    everything = (effect, 1 if position == "later" else 0)
    assert seen_inside == everything
    assert seen_by_others_before == [(0, 0), (0, 0)]
    if outcome == "commit":
        assert (answer, seen_by_others_after) == ("Transaction Committed", [everything, everything])
    else:
        assert (answer, seen_by_others_after) == ("Rollback Complete", [(0, 0), (0, 0)])


def fail_execute(rds: Any, database: str, tag: str, **transaction: str) -> None:
    insert_literal(rds, database, tag, **transaction)
    insert_literal(rds, database, tag, **transaction)  # the same keys again: 23505


def fail_batch(rds: Any, database: str, tag: str, **transaction: str) -> None:
    insert_batch(rds, database, tag, (1, 2, 1), **transaction)  # the third set repeats the first: 23505


def fail_before_the_database(rds: Any, database: str, tag: str, **transaction: str) -> None:
    execute(rds, database, "INSERT INTO dataapi_isolation VALUES (:tag, :missing)",
            parameters=[{"name": "tag", "value": {"stringValue": tag}}], **transaction)


@pytest.mark.parametrize("position", ["first", "later"])
@pytest.mark.parametrize("failing", [fail_execute, fail_batch, fail_before_the_database],
                         ids=["execute", "batch_execute", "refused_parameters"])
def test_an_error_aborts_the_transaction_and_every_later_call_on_it_fails(
    failing, position, rds, database_name, direct, isolation_table,
):
    tag = f"abort_{failing.__name__}_{position}"
    transaction_id = rds.begin_transaction(database=database_name, **IDS)["transactionId"]
    transaction = {"transactionId": transaction_id}
    try:
        if position == "later":
            execute(rds, database_name, f"INSERT INTO dataapi_isolation VALUES ('{tag}:earlier', 0)", **transaction)
        error = error_of(lambda: failing(rds, database_name, tag, **transaction))
        seen_by_others = effects_seen_by_others(rds, database_name, direct, tag)
        later_statement = error_of(lambda: effects_seen(rds, database_name, tag, **transaction))
        later_batch = error_of(lambda: insert_batch(rds, database_name, tag, **transaction))
        commit = error_of(lambda: rds.commit_transaction(**IDS, **transaction))
        rollback = error_of(lambda: rds.rollback_transaction(**IDS, **transaction))
        seen_by_others_after = effects_seen_by_others(rds, database_name, direct, tag)
    finally:
        direct.execute("DELETE FROM dataapi_isolation WHERE tag LIKE %s", [f"{tag}%"])

    assert error[0] in ("DatabaseErrorException", "BadRequestException")
    assert seen_by_others == seen_by_others_after == [(0, 0), (0, 0)]
    aborted = ("TransactionNotFoundException", f"Transaction {transaction_id} isn't found: "
               "Transaction has been aborted due to an error from a previous call.", 404)
    # A commit of an aborted transaction commits nothing and never reports it committed.
    assert later_statement == later_batch == commit == rollback == aborted


def test_a_commit_the_database_refuses_commits_nothing_and_ends_the_transaction(rds, database_name, direct):
    direct.execute("CREATE TABLE dataapi_deferred (a int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    try:
        transaction_id = rds.begin_transaction(database=database_name, **IDS)["transactionId"]
        insert = lambda: execute(rds, database_name, "INSERT INTO dataapi_deferred VALUES (1)",  # noqa: E731
                                 transactionId=transaction_id)
        insert()
        insert()  # the duplicate is only checked at COMMIT
        commit = error_of(lambda: rds.commit_transaction(transactionId=transaction_id, **IDS))
        rollback = error_of(lambda: rds.rollback_transaction(transactionId=transaction_id, **IDS))
        rows = direct.execute("SELECT count(*) FROM dataapi_deferred").fetchone()[0]
    finally:
        direct.execute("DROP TABLE dataapi_deferred")

    assert commit[0] == "DatabaseErrorException" and commit[1].endswith("; SQLState: 23505")
    assert rollback[0] == "TransactionNotFoundException" and rollback[1].endswith("from a previous call.")
    assert rows == 0


def test_a_batch_without_a_transaction_commits_all_its_sets_or_none(rds, database_name, direct, isolation_table):
    try:
        insert_batch(rds, database_name, "autocommit_batch")
        committed_at_once = direct.execute("SELECT count(*) FROM dataapi_isolation WHERE tag = 'autocommit_batch'")\
            .fetchone()[0]
        refused = error_of(lambda: insert_batch(rds, database_name, "atomic_batch", (1, 2, 3, 1)))
        partly = direct.execute("SELECT count(*) FROM dataapi_isolation WHERE tag = 'atomic_batch'").fetchone()[0]
        after = execute(rds, database_name, "SELECT count(*) FROM dataapi_isolation WHERE tag = 'autocommit_batch'")
    finally:
        direct.execute("DELETE FROM dataapi_isolation WHERE tag IN ('autocommit_batch', 'atomic_batch')")

    assert committed_at_once == 2
    assert refused[0] == "DatabaseErrorException" and refused[1].endswith("; SQLState: 23505")
    assert partly == 0
    assert after["records"] == [[{"longValue": 2}]]  # the pooled connection that failed serves the next call


def test_no_call_without_a_transaction_inherits_another_calls_session_state(rds, database_name, direct):
    # Calls share pooled connections; each one starts from the session defaults.
    execute(rds, database_name, "SET TimeZone = 'America/New_York'")
    execute(rds, database_name, "CREATE TEMPORARY TABLE dataapi_leak (a int)")
    execute(rds, database_name, "SELECT pg_advisory_lock(9326)")

    time_zone = execute(rds, database_name, "SELECT current_setting('TimeZone')")["records"]
    temporary_tables = direct.execute("SELECT count(*) FROM pg_class WHERE relname = 'dataapi_leak'").fetchone()[0]
    lock_is_free = direct.execute("SELECT pg_try_advisory_lock(9326)").fetchone()[0]
    direct.execute("SELECT pg_advisory_unlock_all()")

    assert time_zone == [[{"stringValue": "UTC"}]]
    assert temporary_tables == 0
    assert lock_is_free


def test_json_records_and_result_metadata(rds, database_name):
    sql = "SELECT 7::int8 AS n, 1.50::numeric(5,2) AS price, true AS ok, NULL::text AS nothing, 'é' AS t"

    formatted = execute(rds, database_name, sql, formatRecordsAs="JSON", includeResultMetadata=True)
    typed = execute(rds, database_name, sql, includeResultMetadata=True)

    assert json.loads(formatted["formattedRecords"]) == [
        {"n": 7, "price": "1.50", "ok": True, "nothing": None, "t": "é"}]
    assert "records" not in formatted and "columnMetadata" not in formatted
    assert [(c["name"], c["typeName"], c["type"]) for c in typed["columnMetadata"]] == [
        ("n", "int8", -5), ("price", "numeric", 2), ("ok", "bool", -7), ("nothing", "text", 12), ("t", "text", 12)]
    assert (typed["columnMetadata"][1]["precision"], typed["columnMetadata"][1]["scale"]) == (5, 2)


def test_metadata_names_the_table_column_and_its_nullability(rds, database_name):
    metadata = execute(rds, database_name, "SELECT sku, name, stock_reserved FROM catalog LIMIT 0",
                       includeResultMetadata=True)["columnMetadata"]

    assert [(c["tableName"], c["name"], c["nullable"]) for c in metadata] == [
        ("catalog", "sku", 0), ("catalog", "name", 0), ("catalog", "stock_reserved", 0)]


def test_invalid_input_is_a_bad_request_checked_against_botocores_model(endpoint, database_name):
    def post(path: str, body: bytes) -> tuple[int, str, str]:
        # Raw HTTP: boto3 would not send most of these.
        response = requests.post(f"{endpoint.endpoint_url}{path}", data=body, timeout=5)
        return response.status_code, response.headers["x-amzn-ErrorType"], response.json()["message"]

    def execute_raw(**request: Any) -> tuple[int, str, str]:
        return post("/Execute", json.dumps({"database": database_name, **request}).encode())

    ids = {"resourceArn": CLUSTER, "secretArn": SECRET}
    no_sql = execute_raw(**ids)
    unknown_member = execute_raw(sql="SELECT 1", bogus=1, **ids)
    two_values = execute_raw(sql="SELECT :a", parameters=[{"name": "a", "value": {"stringValue": "x", "longValue": 1}}],
                             **ids)
    not_a_cluster = execute_raw(sql="SELECT 1", resourceArn="arn:aws:s3:::not-a-cluster", secretArn=SECRET)
    unbound = execute_raw(sql="SELECT :missing", **ids)
    array = execute_raw(sql="SELECT :a", parameters=[{"name": "a", "value": {"arrayValue": {"longValues": [1]}}}],
                        **ids)
    not_json = post("/Execute", b"{")
    unknown_operation = post("/ExecuteSql", b"{}")

    bad_request = (400, "BadRequestException")
    assert no_sql[:2] == unknown_member[:2] == two_values[:2] == not_a_cluster[:2] == bad_request
    assert unbound[:2] == array[:2] == not_json[:2] == bad_request
    assert 'Missing required parameter in input: "sql"' in no_sql[2]
    assert 'Unknown parameter in input: "bogus"' in unknown_member[2]
    assert "tagged union" in two_values[2]
    assert "Invalid resourceArn" in not_a_cluster[2]
    assert "No value specified for parameter(s) missing" in unbound[2]
    assert array[2] == "Array parameters are not supported."
    assert unknown_operation[:2] == (404, "UnknownOperationException")


def test_sql_errors_carry_postgresqls_message_and_sqlstate(rds, database_name):
    syntax = error_of(lambda: execute(rds, database_name, "SELEC 1"))
    several = error_of(lambda: execute(rds, database_name, "SELECT 1; SELECT 2"))
    unique = error_of(lambda: execute(
        rds, database_name, "INSERT INTO clients (id, name, api_key_hash) VALUES (gen_random_uuid(), 'x', 'h'), "
        "(gen_random_uuid(), 'x', 'h2')"))

    assert syntax == (
        "DatabaseErrorException", 'ERROR: syntax error at or near "SELEC"\n  Position: 1; SQLState: 42601', 400)
    assert several[1].endswith("; SQLState: 42601")
    assert unique[1] == ('ERROR: duplicate key value violates unique constraint "clients_name_key"\n'
                         "  Detail: Key (name)=(x) already exists.; SQLState: 23505")


def test_unknown_and_ended_transactions_are_not_found(rds, database_name):
    unknown = error_of(lambda: rds.commit_transaction(transactionId="not-a-transaction", **IDS))

    ended = rds.begin_transaction(database=database_name, **IDS)["transactionId"]
    rds.rollback_transaction(transactionId=ended, **IDS)
    after_end = error_of(lambda: execute(rds, database_name, "SELECT 1", transactionId=ended))
    committed = rds.begin_transaction(database=database_name, **IDS)["transactionId"]
    rds.commit_transaction(transactionId=committed, **IDS)
    commit_again = error_of(lambda: rds.commit_transaction(transactionId=committed, **IDS))

    assert unknown == ("TransactionNotFoundException",
                       "Transaction not-a-transaction isn't found: Transaction may be expired.", 404)
    ended_cause = "One previous call resulted in a termination of your transaction."
    assert after_end == ("TransactionNotFoundException", f"Transaction {ended} isn't found: {ended_cause}", 404)
    assert commit_again == ("TransactionNotFoundException", f"Transaction {committed} isn't found: {ended_cause}", 404)


def backend_state(direct: psycopg.Connection, pid: int) -> tuple[str, str | None] | None:
    """A server process's state and what it waits for; None once it has gone."""
    return direct.execute("SELECT state, wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()


def backend_pid(rds: Any, database: str, transaction_id: str) -> int:
    return execute(rds, database, "SELECT pg_backend_pid()", transactionId=transaction_id)["records"][0][0]["longValue"]


def test_a_second_call_on_a_busy_transaction_is_refused_and_the_transaction_goes_on(rds, database_name, direct):
    busy = rds.begin_transaction(database=database_name, **IDS)["transactionId"]
    pid = backend_pid(rds, database_name, busy)
    direct.execute("SELECT pg_advisory_lock(9325)")  # the first call waits for it: busy for as long as the test needs
    try:
        first = threading.Thread(target=execute, args=(rds, database_name, "SELECT pg_advisory_xact_lock(9325)"),
                                 kwargs={"transactionId": busy})
        first.start()
        eventually(lambda: backend_state(direct, pid) == ("active", "Lock"), what="the first call to wait for the lock")
        while_busy = error_of(lambda: execute(rds, database_name, "SELECT 1", transactionId=busy))
    finally:
        direct.execute("SELECT pg_advisory_unlock(9325)")
    first.join(timeout=10)
    commit = rds.commit_transaction(transactionId=busy, **IDS)

    assert while_busy == ("DatabaseErrorException", "Transaction is still running a query", 400)
    assert commit["transactionStatus"] == "Transaction Committed"


def test_an_idle_transaction_expires_and_is_rolled_back(database_url, aws_environment, database_name, direct):
    direct.execute("CREATE TABLE dataapi_expiry (a int)")
    try:
        with LocalDataApi(database_url, transaction_idle_timeout=0.3) as short_lived:
            rds = boto3.session.Session().client("rds-data", endpoint_url=short_lived.endpoint_url)
            ids = {"resourceArn": CLUSTER, "secretArn": SECRET}
            transaction = rds.begin_transaction(database=database_name, **ids)["transactionId"]
            execute(rds, database_name, "INSERT INTO dataapi_expiry VALUES (1)", transactionId=transaction)
            pid = backend_pid(rds, database_name, transaction)
            assert backend_state(direct, pid)[0] == "idle in transaction"
            # Nothing uses the transaction again: the sweeper alone ends it and its session.
            eventually(lambda: backend_state(direct, pid) is None, timeout=10, what="the idle transaction to expire")
            expired = error_of(lambda: rds.commit_transaction(transactionId=transaction, **ids))
        rows = direct.execute("SELECT count(*) FROM dataapi_expiry").fetchone()[0]
    finally:
        direct.execute("DROP TABLE dataapi_expiry")

    assert expired == ("TransactionNotFoundException",
                       f"Transaction {transaction} isn't found: Transaction may be expired.", 404)
    assert rows == 0


def test_responses_over_the_documented_size_limits_are_refused(rds, database_name):
    too_big = error_of(lambda: execute(rds, database_name, "SELECT repeat('x', 60000) FROM generate_series(1, 20)"))
    wide_row = error_of(lambda: execute(rds, database_name, "SELECT repeat('x', 70000)"))
    just_fits = execute(rds, database_name, "SELECT repeat('x', 60000) FROM generate_series(1, 17)")

    assert too_big[:1] == ("DatabaseErrorException",)
    assert too_big[1].startswith("Database returned more than the allowed response size limit")
    assert wide_row[1].startswith("Packet for query is too large")
    assert len(just_fits["records"]) == 17


def test_a_paused_cluster_answers_database_resuming_until_it_has_resumed(endpoint, rds, database_name):
    endpoint.pause(resume_seconds=0.6)
    first = error_of(lambda: execute(rds, database_name, "SELECT 1"))
    begin = error_of(lambda: rds.begin_transaction(resourceArn=CLUSTER, secretArn=SECRET, database=database_name))
    time.sleep(0.7)

    assert first == ("DatabaseResumingException",
                     f"The Aurora DB instance {CLUSTER} is resuming after being auto-paused. "
                     "Please wait a few seconds and try again.", 400)
    assert begin[0] == "DatabaseResumingException"
    assert execute(rds, database_name, "SELECT 1")["records"] == [[{"longValue": 1}]]
    assert endpoint.calls == {"ExecuteStatement": 2, "BeginTransaction": 1}


def test_injected_latency_is_added_to_every_call(endpoint, rds, database_name):
    execute(rds, database_name, "SELECT 1")  # a warm connection on both sides
    endpoint.latency_seconds = 0.05

    started = time.perf_counter()
    for _ in range(4):
        execute(rds, database_name, "SELECT 1")
    elapsed = time.perf_counter() - started

    assert elapsed >= 4 * 0.05


def test_only_configured_arns_are_accepted_when_configured(database_url, aws_environment, database_name):
    other_cluster = "arn:aws:rds:us-east-1:123456789012:cluster:other"
    with LocalDataApi(database_url, cluster_arns=frozenset({CLUSTER}), secret_arns=frozenset({SECRET})) as strict:
        rds = boto3.session.Session().client("rds-data", endpoint_url=strict.endpoint_url)
        allowed = rds.execute_statement(resourceArn=CLUSTER, secretArn=SECRET, database=database_name, sql="SELECT 1")
        cluster = error_of(lambda: rds.execute_statement(resourceArn=other_cluster, secretArn=SECRET, sql="SELECT 1"))
        secret = error_of(lambda: rds.execute_statement(resourceArn=CLUSTER, secretArn=SECRET + "x", sql="SELECT 1"))

    assert allowed["records"] == [[{"longValue": 1}]]
    assert cluster == (
        "HttpEndpointNotEnabledException", f"HttpEndpoint is not enabled for resource {other_cluster}", 400)
    assert secret[0] == "SecretsErrorException"


def test_conveyor_statements_on_both_paths_return_the_same_json(data_api_database, session_database):
    database = Database(session_database.engine)
    sql = ("SELECT json_build_object('now', now() = now(), 'sum', CAST(:a AS bigint) + :b,"
           " 'missing', CAST(:c AS text))::text")
    params = {"a": "9007199254740993", "b": 1, "c": None}

    assert data_api_database.fetch_json(sql, params) == database.fetch_json(sql, params) == {
        "now": True, "sum": 9007199254740994, "missing": None}


def test_the_cli_serves_until_ctrl_c(database_url, aws_environment, database_name):
    command = [sys.executable, "-m", "conveyor_tools.cli", "dataapi", "--port", "0", "--database-url", database_url,
               "--latency-ms", "1"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "LOG_LEVEL": "WARNING"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        announced = process.stderr.readline()
        endpoint_url = re.search(r"http://127\.0\.0\.1:\d+", announced).group()
        rds = boto3.session.Session().client("rds-data", endpoint_url=endpoint_url)
        answer = rds.execute_statement(resourceArn=CLUSTER, secretArn=SECRET, database=database_name, sql="SELECT 1")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)

    assert answer["records"] == [[{"longValue": 1}]]
    assert process.returncode == 130
