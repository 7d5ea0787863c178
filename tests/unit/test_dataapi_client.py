"""DataApiDatabase against botocore's Stubber: parameters, error mapping, retries and their budget."""
from __future__ import annotations

import random
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from botocore.stub import Stubber

from conveyor.dataapi.client import (
    DataApiDatabase,
    DataApiRequestError,
    DataApiUnavailable,
    RetryPolicy,
    retry_budget,
)
from conveyor.errors import PermanentError, RetryableConflict, TransientError

CLUSTER = "arn:aws:rds:eu-west-1:123456789012:cluster:conveyor"
SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:conveyor-db-AbCdEf"
COMMON = {"resourceArn": CLUSTER, "secretArn": SECRET, "database": "conveyor"}
RESUMING = "The Aurora DB instance db-1 is resuming after being auto-paused. Please wait a few seconds and try again."


class FakeClock:
    """Time that moves only when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def client() -> Any:
    # Made once: a boto3 client takes a quarter of a second to build.
    return boto3.session.Session().client(
        "rds-data", region_name="eu-west-1", aws_access_key_id="test", aws_secret_access_key="test",
    )


@pytest.fixture
def stubbed(client: Any, clock: FakeClock) -> tuple[DataApiDatabase, Stubber]:
    database = DataApiDatabase(
        CLUSTER, SECRET, "conveyor", client=client, retry=RetryPolicy(budget_seconds=20.0),
        sleep=clock.sleep, clock=clock, rng=random.Random(7),
    )
    with Stubber(client) as stubber:
        yield database, stubber
        stubber.assert_no_pending_responses()


def expect(stubber: Stubber, response: dict[str, Any], sql: str, parameters: list | None = None) -> None:
    stubber.add_response("execute_statement", response, {**COMMON, "sql": sql, "parameters": parameters or []})


def fail(stubber: Stubber, code: str, message: str = "", status: int = 400) -> None:
    stubber.add_client_error("execute_statement", service_error_code=code, service_message=message,
                             http_status_code=status)


def test_each_call_is_one_execute_statement_with_typed_fields(stubbed):
    database, stubber = stubbed
    expect(stubber, {"records": [[{"stringValue": '{"ok": true}'}]]}, "SELECT :a, :b, :c, :d", [
        {"name": "a", "value": {"stringValue": "x"}},
        {"name": "b", "value": {"longValue": 9007199254740993}},
        {"name": "c", "value": {"booleanValue": True}},  # a bool, although bool is an int in Python
        {"name": "d", "value": {"isNull": True}},
    ])

    result = database.fetch_json("SELECT :a, :b, :c, :d", {"a": "x", "b": 9007199254740993, "c": True, "d": None})

    assert result == {"ok": True}
    assert database.calls == {"ExecuteStatement": 1}


@pytest.mark.parametrize(("field", "value"), [({"isNull": True}, None), ({"longValue": 3}, 3),
                                              ({"booleanValue": False}, False)])
def test_fetch_json_returns_non_text_values_as_they_are(stubbed, field, value):
    database, stubber = stubbed
    expect(stubber, {"records": [[field]]}, "SELECT 1")

    assert database.fetch_json("SELECT 1") == value


def test_fetch_json_wants_exactly_one_row(stubbed):
    database, stubber = stubbed
    expect(stubber, {"records": []}, "SELECT 1")

    with pytest.raises(PermanentError, match="expected one row with one column, got 0"):
        database.fetch_json("SELECT 1")


def test_execute_returns_the_rows_changed_and_a_list_is_one_batch_call(stubbed):
    database, stubber = stubbed
    expect(stubber, {"numberOfRecordsUpdated": 3}, "UPDATE t SET a = 1")
    stubber.add_response("batch_execute_statement", {"updateResults": [{}, {}]}, {
        **COMMON, "sql": "INSERT INTO t VALUES (:a)",
        "parameterSets": [[{"name": "a", "value": {"longValue": 1}}], [{"name": "a", "value": {"longValue": 2}}]],
    })

    assert database.execute("UPDATE t SET a = 1") == 3
    assert database.execute("INSERT INTO t VALUES (:a)", [{"a": 1}, {"a": 2}]) == -1
    assert database.calls == {"ExecuteStatement": 1, "BatchExecuteStatement": 1}


@pytest.mark.parametrize("value", [1.5, {"a": 1}, b"bytes"])
def test_only_the_types_conveyor_uses_are_accepted(stubbed, value):
    database, _ = stubbed

    with pytest.raises(TypeError, match="pass str, int, bool or None and cast in SQL"):
        database.fetch_json("SELECT :v", {"v": value})


def test_a_resuming_cluster_is_retried_with_growing_jittered_delays(stubbed, clock):
    database, stubber = stubbed
    for _ in range(4):
        fail(stubber, "DatabaseResumingException", RESUMING)
    expect(stubber, {"records": [[{"stringValue": "1"}]]}, "SELECT 1")

    assert database.fetch_json("SELECT 1") == 1

    assert database.calls == {"ExecuteStatement": 5}
    ceilings = [0.25, 0.5, 1.0, 2.0]
    assert all(ceiling / 2 <= delay <= ceiling for delay, ceiling in zip(clock.sleeps, ceilings, strict=True))


@pytest.mark.parametrize(("code", "status"), [
    ("ThrottlingException", 400), ("ServiceUnavailableError", 503), ("DatabaseUnavailableException", 504),
    ("InternalServerErrorException", 500), ("SomethingNew", 502),
])
def test_throttling_and_transient_5xx_are_retried(stubbed, code, status):
    database, stubber = stubbed
    fail(stubber, code, "try later", status)
    expect(stubber, {"numberOfRecordsUpdated": 1}, "DELETE FROM t")

    assert database.execute("DELETE FROM t") == 1
    assert database.calls == {"ExecuteStatement": 2}


class AlwaysResuming:
    """A cluster that never finishes waking up."""

    def execute_statement(self, **request: Any) -> dict[str, Any]:
        error = {"Error": {"Code": "DatabaseResumingException", "Message": RESUMING},
                 "ResponseMetadata": {"HTTPStatusCode": 400}}
        raise ClientError(error, "ExecuteStatement")


def test_retries_stop_at_the_budget_with_a_transient_error(clock):
    database = DataApiDatabase(CLUSTER, SECRET, "conveyor", client=AlwaysResuming(), retry=RetryPolicy(20.0),
                               sleep=clock.sleep, clock=clock)

    with pytest.raises(DataApiUnavailable, match="did not run the statement within") as raised:
        database.fetch_json("SELECT 1")

    assert sum(clock.sleeps) <= 20.0
    assert 20.0 - sum(clock.sleeps) < RetryPolicy().max_delay  # it used the budget before giving up
    assert database.calls["ExecuteStatement"] == len(clock.sleeps) + 1
    assert isinstance(raised.value, TransientError)


@pytest.mark.parametrize("remaining", [1.0, 30.0])
def test_a_lambdas_remaining_time_replaces_the_budget(clock, remaining):
    database = DataApiDatabase(CLUSTER, SECRET, "conveyor", client=AlwaysResuming(), retry=RetryPolicy(20.0),
                               sleep=clock.sleep, clock=clock)

    with retry_budget(remaining), pytest.raises(DataApiUnavailable):
        database.fetch_json("SELECT 1")

    assert remaining - RetryPolicy().max_delay < sum(clock.sleeps) <= remaining


def test_a_unique_violation_is_permanent_with_its_sqlstate_and_is_not_retried(stubbed):
    database, stubber = stubbed
    fail(stubber, "DatabaseErrorException",
         'ERROR: duplicate key value violates unique constraint "clients_name_key"\n'
         "  Detail: Key (name)=(acme) already exists.; SQLState: 23505")

    with pytest.raises(PermanentError) as raised:
        database.execute("INSERT INTO clients VALUES (:name)", {"name": "acme"})

    assert raised.value.sqlstate == "23505"
    assert "duplicate key value" in str(raised.value)
    assert database.calls == {"ExecuteStatement": 1}


def test_a_serialization_failure_is_a_retryable_conflict_like_on_the_direct_path(stubbed):
    database, stubber = stubbed
    fail(stubber, "DatabaseErrorException",
         "ERROR: could not serialize access due to concurrent update; SQLState: 40001")

    with pytest.raises(RetryableConflict) as raised:
        database.execute("UPDATE catalog SET stock_available = 0")

    assert (raised.value.sqlstate, raised.value.reason) == ("40001", "serialization failure")
    assert database.calls == {"ExecuteStatement": 1}


@pytest.mark.parametrize(("code", "hint"), [
    ("AccessDeniedException", "rds-data:ExecuteStatement"),
    ("HttpEndpointNotEnabledException", "enable the Data API"),
    ("SecretsErrorException", "DATA_API_SECRET_ARN"),
    ("BadRequestException", "check the statement"),
])
def test_refusals_that_no_retry_fixes_say_what_to_do(stubbed, code, hint):
    database, stubber = stubbed
    fail(stubber, code, "refused", 403 if code == "AccessDeniedException" else 400)

    with pytest.raises(DataApiRequestError, match=hint) as raised:
        database.fetch_json("SELECT 1")

    assert isinstance(raised.value, PermanentError) and not isinstance(raised.value, TransientError)
    assert database.calls == {"ExecuteStatement": 1}


def test_a_lost_answer_is_not_resent_because_the_statement_may_have_run(clock):
    class TimingOutClient:
        def execute_statement(self, **request: Any) -> dict[str, Any]:
            raise ReadTimeoutError(endpoint_url="http://127.0.0.1:1/Execute")

    database = DataApiDatabase(CLUSTER, SECRET, "conveyor", client=TimingOutClient(), sleep=clock.sleep, clock=clock)

    with pytest.raises(DataApiUnavailable, match="may have run") as raised:
        database.execute("UPDATE t SET a = 1")

    assert database.calls == {"ExecuteStatement": 1}
    assert clock.sleeps == []
    assert isinstance(raised.value, TransientError)


def test_configuration_comes_from_the_environment():
    database = DataApiDatabase.from_environment({
        "DATA_API_RESOURCE_ARN": CLUSTER, "DATA_API_SECRET_ARN": SECRET, "DATA_API_DATABASE": "conveyor",
        "DATA_API_RETRY_BUDGET_SECONDS": "8", "AWS_ACCESS_KEY_ID": "test",
    })

    assert (database.resource_arn, database.secret_arn, database.database) == (CLUSTER, SECRET, "conveyor")
    assert database.retry.budget_seconds == 8.0
    database.dispose()
    with pytest.raises(DataApiRequestError, match="DATA_API_SECRET_ARN, DATA_API_DATABASE not set"):
        DataApiDatabase.from_environment({"DATA_API_RESOURCE_ARN": CLUSTER})
