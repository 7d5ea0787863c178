"""The composition root's one choice of database, and the direct adapter's errors in the project's terms."""
from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from conveyor import bootstrap
from conveyor.adapters.database import neutral_errors
from conveyor.bootstrap import ConfigurationError, DatabaseChoice, choose_database, open_database
from conveyor.dataapi.client import DataApiDatabase
from conveyor.errors import PermanentError, RetryableConflict, TransientError
from fakes import InMemoryQueue

DATA_API = {"DATA_API_RESOURCE_ARN": "arn:aws:rds:eu-west-1:123456789012:cluster:conveyor",
            "DATA_API_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db",
            "DATA_API_DATABASE": "conveyor"}
DIRECT = {"DATABASE_URL": "postgresql://app@db.internal/conveyor"}


@pytest.mark.parametrize(("environ", "options", "chosen"), [
    (DATA_API, {}, DatabaseChoice("data_api")),
    (DIRECT, {}, DatabaseChoice("direct", DIRECT["DATABASE_URL"])),
    ({**DIRECT, **DATA_API}, {}, DatabaseChoice("data_api")),  # how the handlers reach Aurora on Lambda
    ({**DIRECT, **DATA_API}, {"prefer_direct": True}, DatabaseChoice("direct", DIRECT["DATABASE_URL"])),
    ({**DIRECT, **DATA_API}, {"database_url": "postgresql://given/db"}, DatabaseChoice("direct", "postgresql://given/db")),
    ({}, {}, None),
    ({"DATABASE_URL": ""}, {}, None),
], ids=["data-api", "direct", "data-api-first", "prefer-direct", "injected-url", "nothing", "empty"])
def test_the_database_is_chosen_in_one_place(environ, options, chosen):
    assert choose_database(environ, **options) == chosen


def test_without_a_database_it_says_what_to_set():
    with pytest.raises(ConfigurationError, match="set DATABASE_URL .* or DATA_API_RESOURCE_ARN"):
        open_database(choose_database({}))


def test_a_partial_data_api_configuration_names_what_is_missing():
    with pytest.raises(ConfigurationError, match="DATA_API_SECRET_ARN, DATA_API_DATABASE not set"):
        open_database(choose_database({"DATA_API_RESOURCE_ARN": DATA_API["DATA_API_RESOURCE_ARN"]}),
                      {"DATA_API_RESOURCE_ARN": DATA_API["DATA_API_RESOURCE_ARN"]})


def test_the_data_api_path_opens_the_data_api_client():
    database = open_database(choose_database(DATA_API), {**DATA_API, "AWS_ACCESS_KEY_ID": "test"})
    assert isinstance(database, DataApiDatabase)
    database.dispose()


def test_services_are_built_from_the_dependencies_given():
    store_database = object()
    services = bootstrap.build(store_database, InMemoryQueue())  # type: ignore[arg-type]
    assert services.order_store.database is store_database  # type: ignore[attr-defined]
    assert services.order_service is not None
    assert bootstrap.build(store_database).order_service is None  # type: ignore[arg-type]


class DriverError(Exception):
    def __init__(self, sqlstate: str | None):
        super().__init__(f"driver says {sqlstate}")
        self.sqlstate = sqlstate


def raise_through_the_adapter(error: BaseException) -> BaseException:
    with pytest.raises(Exception) as raised, neutral_errors():
        raise error
    return raised.value


@pytest.mark.parametrize(("error", "expected", "sqlstate"), [
    (sa.exc.OperationalError("SELECT", {}, DriverError("40P01")), RetryableConflict, "40P01"),
    (sa.exc.IntegrityError("UPDATE", {}, DriverError("23514")), RetryableConflict, "23514"),
    (sa.exc.IntegrityError("INSERT", {}, DriverError("23505")), PermanentError, "23505"),
    (sa.exc.ProgrammingError("SELECT", {}, DriverError("42P01")), PermanentError, "42P01"),
    (sa.exc.OperationalError("SELECT", {}, DriverError("57P01")), TransientError, "57P01"),
    (sa.exc.OperationalError("connect", {}, DriverError(None)), TransientError, None),
    (sa.exc.DBAPIError("SELECT", {}, DriverError("22P05"), connection_invalidated=True), TransientError, None),
    (ConnectionRefusedError("connection refused"), TransientError, None),
    # What the pooled psycopg connection itself raises.
    (psycopg.errors.DeadlockDetected("deadlock"), RetryableConflict, "40P01"),
    (psycopg.errors.UniqueViolation("duplicate"), PermanentError, "23505"),
    (psycopg.errors.AdminShutdown("terminating"), TransientError, "57P01"),
    (psycopg.OperationalError("server closed the connection unexpectedly"), TransientError, None),
])
def test_driver_errors_leave_the_direct_adapter_as_the_projects_own(error, expected, sqlstate):
    neutral = raise_through_the_adapter(error)
    assert type(neutral) is expected
    assert neutral.sqlstate == sqlstate
    assert neutral.__cause__ is error
