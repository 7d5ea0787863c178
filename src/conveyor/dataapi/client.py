"""Conveyor's statements through the RDS Data API: one ExecuteStatement each, retried only when nothing ran.

`DataApiDatabase` is a drop-in for `conveyor.adapters.database.Database`. It replaces the
aurora-data-api DB-API driver (and its SQLAlchemy dialect) on the hot path because that driver:

- opens a transaction for every cursor: BeginTransaction + ExecuteStatement +
  CommitTransaction is three HTTP calls per statement, so six per batch instead of two.
  A single ExecuteStatement without a transactionId is already atomic: the Data API
  commits it on its own;
- sends typeHints only for date, time, datetime and Decimal, so UUIDs, dicts and
  tz-aware datetimes arrive as the wrong types, and its dialect cuts timestamps to
  milliseconds and drops their time zone. Conveyor passes only str, int, bool and None
  and casts in SQL, so plain typed fields are exact and need no hints;
- raises a unique violation as a generic DatabaseError with the SQLSTATE buried in the
  message. Here every SQL error is one of `conveyor.errors`' (a retryable conflict for
  40001, permanent for 23505, ...) carrying `.sqlstate`, as on the direct path, so the
  worker treats both paths alike;
- does not retry DatabaseResumingException (an auto-paused cluster takes ~15 s to
  resume), while boto3's default retries would resend after a read timeout, when the
  statement may already have run.

The dialect stays the right tool for Alembic migrations (see conveyor.dataapi.migrations):
DDL runs once, off the hot path, inside the transactions it wants.
"""
from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, HTTPClientError
from pydantic_core import from_json

from conveyor.errors import PermanentError, TransientError, database_error
from conveyor.observability import get_logger

RESOURCE_ARN_VARIABLE = "DATA_API_RESOURCE_ARN"
SECRET_ARN_VARIABLE = "DATA_API_SECRET_ARN"
DATABASE_VARIABLE = "DATA_API_DATABASE"
RETRY_BUDGET_VARIABLE = "DATA_API_RETRY_BUDGET_SECONDS"

# Errors that mean the statement did not run: the cluster was waking up, the call was
# throttled, or the service or the writer was unavailable. Anything else is not retried.
RETRYABLE_ERRORS = frozenset({
    "DatabaseResumingException",
    "ThrottlingException",
    "TooManyRequestsException",
    "ServiceUnavailableError",
    "DatabaseUnavailableException",
    "InternalServerErrorException",
})
# A 5xx by any other name: the service failed, not the statement. A Conveyor statement is
# atomic and idempotent (its writes are ON CONFLICT claims and conditional updates), so a
# statement that did commit before the failure changes nothing when it runs again.
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
_SQLSTATE = re.compile(r"SQLState: ([0-9A-Z]{5})$")
_REGION_IN_ARN = re.compile(r"^arn:[^:]+:rds:([^:]+):")

# What the caller can do about a refusal that no retry will fix.
_NEXT_STEP = {
    "AccessDeniedException": "give the function rds-data:ExecuteStatement on the cluster and "
                             "secretsmanager:GetSecretValue on the secret",
    "ForbiddenException": "give the function rds-data:ExecuteStatement on the cluster and "
                          "secretsmanager:GetSecretValue on the secret",
    "HttpEndpointNotEnabledException": f"enable the Data API on the cluster and check {RESOURCE_ARN_VARIABLE}",
    "SecretsErrorException": f"check {SECRET_ARN_VARIABLE} and that the secret holds the database credentials",
    "InvalidSecretException": f"check {SECRET_ARN_VARIABLE} and that the secret holds the database credentials",
    "DatabaseNotFoundException": "the cluster has no writer instance; add one",
    "BadRequestException": "check the statement and its parameters",
}


class DataApiUnavailable(TransientError):
    """The Data API did not run the statement in time (resuming, throttled, down), or its answer was lost.

    Like a lost connection on the direct path: the worker hands the batch back to SQS and the
    API answers 503 with Retry-After.
    """


class DataApiRequestError(PermanentError):
    """The Data API refused the call for a reason retries will not fix: configuration or permissions."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, for at most `budget_seconds` per statement."""

    budget_seconds: float = 20.0
    first_delay: float = 0.25
    max_delay: float = 4.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        # "Equal jitter": half the capped exponential delay, plus a random part up to the other half.
        ceiling = min(self.max_delay, self.first_delay * 2 ** (attempt - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


_deadline = threading.local()


@contextmanager
def retry_budget(seconds: float) -> Iterator[None]:
    """Retry Data API calls in this thread until `seconds` from now, instead of the policy's budget:
    e.g. a Lambda's remaining time minus what it needs to report the batch."""
    previous = getattr(_deadline, "at", None)
    _deadline.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _deadline.at = previous


class DataApiDatabase:
    """Runs Conveyor's statements through the Data API; each call is one ExecuteStatement."""

    def __init__(
        self,
        resource_arn: str,
        secret_arn: str,
        database: str,
        *,
        client: Any | None = None,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.resource_arn = resource_arn
        self.secret_arn = secret_arn
        self.database = database
        self.retry = retry
        self._client = client or _data_api_client(resource_arn)
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()
        self.logger = get_logger("conveyor-dataapi")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> DataApiDatabase:
        environ = os.environ if environ is None else environ
        missing = [name for name in (RESOURCE_ARN_VARIABLE, SECRET_ARN_VARIABLE, DATABASE_VARIABLE)
                   if not environ.get(name)]
        if missing:
            raise DataApiRequestError(
                f"{', '.join(missing)} not set: Data API mode needs the cluster ARN, the secret ARN and the "
                "database name (see docs/dataapi.md)."
            )
        budget = float(environ.get(RETRY_BUDGET_VARIABLE) or RetryPolicy.budget_seconds)
        return cls(environ[RESOURCE_ARN_VARIABLE], environ[SECRET_ARN_VARIABLE], environ[DATABASE_VARIABLE],
                   retry=RetryPolicy(budget_seconds=budget))

    # -- the Database interface ---------------------------------------------------------------

    def pinned(self) -> nullcontext[None]:
        """Nothing to pin: every call is its own HTTP request, with no connection to keep."""
        return nullcontext()

    def fetch_json(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        """Run a statement that returns one row holding one JSON text column."""
        response = self._call("ExecuteStatement", sql, params, parameters=_parameters(params or {}))
        records = response.get("records", [])
        if len(records) != 1 or len(records[0]) != 1:
            raise PermanentError(f"expected one row with one column, got {len(records)} row(s)")
        [(kind, value)] = records[0][0].items()
        if kind == "isNull":
            return None
        return from_json(value) if kind == "stringValue" else value

    def fetch_json_rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Run a statement whose rows each hold one JSON text column (each row under the 64 KB row limit)."""
        response = self._call("ExecuteStatement", sql, params, parameters=_parameters(params or {}))
        return [from_json(record[0]["stringValue"]) for record in response.get("records", [])]

    def execute(self, sql: str, params: dict[str, Any] | list[dict[str, Any]] | None = None) -> int:
        """Run a statement; the number of rows it changed (-1 for several parameter sets, which the Data API
        does not count)."""
        if isinstance(params, list):
            if not params:
                return 0
            self._call("BatchExecuteStatement", sql, params,
                       parameterSets=[_parameters(one) for one in params])
            return -1
        response = self._call("ExecuteStatement", sql, params, parameters=_parameters(params or {}))
        return response.get("numberOfRecordsUpdated", 0)

    @contextmanager
    def transaction(self) -> Iterator[DataApiTransaction]:
        """One Data API transaction: committed when the block ends, rolled back if it raises.

        For work that needs one session across statements (temporary tables, transaction
        locks); everything else is cheaper as single, self-committing statements."""
        transaction_id = self._call("BeginTransaction", None, None)["transactionId"]
        try:
            yield DataApiTransaction(self, transaction_id)
        except BaseException:
            try:
                self._call("RollbackTransaction", None, None, transactionId=transaction_id)
            except Exception as error:  # noqa: BLE001 - the original error matters more
                # A failed statement has already ended its transaction; the Data API also rolls
                # back one left idle for three minutes.
                if "TransactionNotFoundException" not in str(error):
                    self.logger.warning("rollback failed", extra={"error": str(error)[:300]})
            raise
        self._call("CommitTransaction", None, None, transactionId=transaction_id)

    def dispose(self) -> None:
        self._client.close()

    # -- round trips ---------------------------------------------------------------------------

    @property
    def calls(self) -> Counter[str]:
        """HTTP calls made per Data API operation, retries included."""
        with self._calls_lock:
            return Counter(self._calls)

    def reset_calls(self) -> None:
        with self._calls_lock:
            self._calls.clear()

    def _call(self, operation: str, sql: str | None, params: Any, **request: Any) -> dict[str, Any]:
        request.update(resourceArn=self.resource_arn, secretArn=self.secret_arn)
        if operation not in ("CommitTransaction", "RollbackTransaction"):
            request["database"] = self.database
        if sql is not None:
            request["sql"] = sql
        method = getattr(self._client, _snake_case(operation))
        started = self._clock()
        budget = _remaining_thread_budget()
        deadline = started + (self.retry.budget_seconds if budget is None else budget)
        attempt = 0
        while True:
            attempt += 1
            with self._calls_lock:
                self._calls[operation] += 1
            try:
                return method(**request)
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code not in RETRYABLE_ERRORS and status not in RETRYABLE_STATUSES:
                    raise _translate(error) from error
                reason = f"{code}: {error.response.get('Error', {}).get('Message', '')}"
            except (EndpointConnectionError, ConnectTimeoutError) as error:
                reason = f"cannot connect to the Data API: {error}"  # the request never left
            except HTTPClientError as error:
                # The request was sent and its answer lost: the statement may have run, so it is
                # not resent here. The caller's own redelivery decides, as for a lost connection.
                raise DataApiUnavailable(f"the Data API's answer was lost ({error}); the statement may have run") \
                    from error
            delay = self.retry.delay(attempt, self._rng)
            if self._clock() + delay > deadline:
                raise DataApiUnavailable(
                    f"the Data API did not run the statement within {self._clock() - started:.1f}s "
                    f"({attempt} attempt(s)); last answer: {reason}. The work is safe to retry later."
                )
            self.logger.info("retrying data api call", extra={
                "operation": operation, "attempt": attempt, "delay_seconds": round(delay, 3), "reason": reason[:300],
            })
            self._sleep(delay)


class DataApiTransaction:
    """Statements inside one Data API transaction (see DataApiDatabase.transaction)."""

    def __init__(self, database: DataApiDatabase, transaction_id: str):
        self._database = database
        self.transaction_id = transaction_id

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> int:
        response = self._database._call("ExecuteStatement", sql, params, parameters=_parameters(params or {}),
                                        transactionId=self.transaction_id)
        return response.get("numberOfRecordsUpdated", 0)

    def execute_batch(self, sql: str, param_sets: list[dict[str, Any]]) -> None:
        self._database._call("BatchExecuteStatement", sql, param_sets,
                             parameterSets=[_parameters(one) for one in param_sets],
                             transactionId=self.transaction_id)

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """The statement's rows as tuples of plain values (numeric and timestamps come back as text)."""
        response = self._database._call("ExecuteStatement", sql, params, parameters=_parameters(params or {}),
                                        transactionId=self.transaction_id)
        return [tuple(_value(field) for field in record) for record in response.get("records", [])]


def _value(field: dict[str, Any]) -> Any:
    [(kind, value)] = field.items()
    if kind == "isNull":
        return None
    if kind == "arrayValue":
        [(_, items)] = value.items()
        return [_value(item) if isinstance(item, dict) else item for item in items]
    return value


def _remaining_thread_budget() -> float | None:
    at = getattr(_deadline, "at", None)
    return None if at is None else at - time.monotonic()


def _translate(error: ClientError) -> Exception:
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", "")
    state = _SQLSTATE.search(message)
    if state:
        return database_error(message, state.group(1))
    if code == "StatementTimeoutException":
        return DataApiUnavailable(f"the statement timed out in the Data API: {message}")
    next_step = _NEXT_STEP.get(code, "see the message")
    return DataApiRequestError(f"the Data API refused the call ({code}: {message}); {next_step}.")


def _parameters(params: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": name, "value": _field(name, value)} for name, value in params.items()]


def _field(name: str, value: Any) -> dict[str, Any]:
    # Conveyor passes only these types and casts in SQL (CAST(:x AS uuid)), so no typeHint is needed.
    if value is None:
        return {"isNull": True}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"longValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    raise TypeError(
        f"parameter {name!r} is a {type(value).__name__}; pass str, int, bool or None and cast in SQL, "
        "e.g. CAST(:value AS jsonb) with json.dumps(value)"
    )


def _data_api_client(resource_arn: str) -> Any:
    # A session of its own: boto3's default session is not safe to share across threads.
    # boto3 reads AWS_ENDPOINT_URL_RDS_DATA itself; the region defaults to the cluster's.
    import boto3  # deferred: a cold start pays for it on the first statement, not at import
    from botocore.config import Config

    region = _REGION_IN_ARN.match(resource_arn)
    session = boto3.session.Session()
    return session.client(
        "rds-data",
        region_name=session.region_name or (region.group(1) if region else None),
        config=Config(
            # Retries are ours: botocore's would resend after a read timeout and ignore a resuming cluster.
            retries={"total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=50,  # the Data API stops a statement after 45 s
            max_pool_connections=20,
        ),
    )


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
