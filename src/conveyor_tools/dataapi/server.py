"""A local RDS Data API endpoint: the REST-JSON protocol boto3 speaks, in front of PostgreSQL.

It serves ExecuteStatement, BatchExecuteStatement, BeginTransaction, CommitTransaction and
RollbackTransaction on 127.0.0.1, validates every request against botocore's own rds-data
model, and answers with the status codes, error codes and messages AWS documents. For
tests and benchmarks it can act as an auto-paused cluster and add latency to every call.
docs/dataapi.md lists what it emulates, what it does not, and the AWS page behind each.

    with LocalDataApi("postgresql://localhost/conveyor") as endpoint:
        os.environ["AWS_ENDPOINT_URL_RDS_DATA"] = endpoint.endpoint_url
"""
from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import botocore.session
import psycopg
from botocore.validate import ParamValidator
from psycopg.pq import TransactionStatus

from conveyor.adapters.sql import CompiledStatement, compile_statement
from conveyor_tools.dataapi.values import (
    ADAPTERS,
    ParameterError,
    ResultOptions,
    TableColumn,
    UnsupportedResult,
    bind_parameters,
    builtin_type_name,
    column_metadata,
    field as encode_field,
    json_value,
)
from conveyor_tools.local.database import libpq_url
from conveyor.observability import get_logger

LOOPBACK = "127.0.0.1"
_MODEL = botocore.session.get_session().get_service_model("rds-data")
OPERATIONS = {
    _MODEL.operation_model(name).http["requestUri"]: name
    for name in ("ExecuteStatement", "BatchExecuteStatement", "BeginTransaction", "CommitTransaction",
                 "RollbackTransaction")
}
_STATUS_OF_ERROR = {shape.name: shape.metadata["error"]["httpStatusCode"] for shape in _MODEL.error_shapes}
_STATUS_OF_ERROR["UnknownOperationException"] = 404  # not in the model: botocore's generic code

# Limits from the Data API documentation (see docs/dataapi.md).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_RESPONSE_BYTES = 1024 * 1024
MAX_JSON_RESPONSE_BYTES = 10 * 1000 * 1000  # formattedRecords
MAX_ROW_BYTES = 64 * 1024
TRANSACTION_IDLE_TIMEOUT = 180.0
TRANSACTION_MAX_LIFETIME = 24 * 3600.0
IDLE_CONNECTIONS_PER_DATABASE = 8
# Ids of ended transactions kept to say why they are gone; older ones read as "may be expired".
_REMEMBERED_ENDINGS = 10_000

_CLUSTER_ARN = re.compile(r"arn:aws[a-z-]*:rds:[a-z0-9-]+:\d{12}:cluster:[A-Za-z][A-Za-z0-9-]{0,62}")
_SECRET_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@!-]+")

# libpq reports a refused connection as text only; these are the refusals a request can cause.
_CONNECTION_REFUSAL = re.compile(r"FATAL:\s+(.+?)\s*$", re.MULTILINE)
_SQLSTATE_OF_REFUSAL = [
    (re.compile(r'^database ".*" does not exist'), "3D000"),
    (re.compile(r"^password authentication failed"), "28P01"),
    (re.compile(r'^role ".*" does not exist'), "28000"),
]

_EXPIRED = "Transaction may be expired."
_ENDED = "One previous call resulted in a termination of your transaction."
_ABORTED = "Transaction has been aborted due to an error from a previous call."


class Fault(Exception):
    """An error response: an error code from the rds-data model and its message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return _STATUS_OF_ERROR[self.code]


@dataclass
class _Transaction:
    id: str
    connection: psycopg.Connection
    started: float
    last_used: float
    busy: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class _Reply:
    status: int
    payload: dict[str, Any]
    error_code: str | None = None


class LocalDataApi:
    """The Data API on 127.0.0.1:`port` (0: a free port), backed by the PostgreSQL at `database_url`.

    The request's `database` picks the PostgreSQL database on that server; without one,
    the URL's database is used. Any well-formed cluster and secret ARN is accepted unless
    `cluster_arns` / `secret_arns` name the only ones to accept.
    """

    def __init__(
        self,
        database_url: str,
        *,
        port: int = 0,
        latency_seconds: float = 0.0,
        transaction_idle_timeout: float = TRANSACTION_IDLE_TIMEOUT,
        transaction_max_lifetime: float = TRANSACTION_MAX_LIFETIME,
        cluster_arns: frozenset[str] | None = None,
        secret_arns: frozenset[str] | None = None,
    ) -> None:
        self.database_url = libpq_url(database_url)
        self.latency_seconds = latency_seconds
        self.transaction_idle_timeout = transaction_idle_timeout
        self.transaction_max_lifetime = transaction_max_lifetime
        self.cluster_arns = cluster_arns
        self.secret_arns = secret_arns
        self.logger = get_logger("conveyor-dataapi")
        self._requested_port = port
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._idle: dict[str, list[psycopg.Connection]] = {}
        self._transactions: dict[str, _Transaction] = {}
        self._endings: OrderedDict[str, str] = OrderedDict()
        self._type_names: dict[tuple[str, int], str] = {}
        self._paused_for: float | None = None  # seconds a wake-up takes, while paused
        self._resumes_at: float | None = None
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LocalDataApi:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _DataApiHttpServer((LOOPBACK, self._requested_port), self)
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="dataapi-http", daemon=True),
            threading.Thread(target=self._expire_transactions, name="dataapi-expiry", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.logger.info("data api endpoint started", extra={"endpoint_url": self.endpoint_url})
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._server = None
        with self._lock:
            transactions = list(self._transactions.values())
            self._transactions.clear()
            idle = [connection for stack in self._idle.values() for connection in stack]
            self._idle.clear()
        for connection in [transaction.connection for transaction in transactions] + idle:
            connection.close()
        self.logger.info("data api endpoint stopped")

    def __enter__(self) -> LocalDataApi:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LocalDataApi is not started; call start() or use it as a context manager")
        return self._server.server_address[1]

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    # -- test and benchmark controls -------------------------------------------------------

    def pause(self, resume_seconds: float) -> None:
        """Act as an auto-paused cluster: the first request wakes it, and it resumes
        `resume_seconds` later. Until then ExecuteStatement, BatchExecuteStatement and
        BeginTransaction answer DatabaseResumingException."""
        with self._lock:
            self._paused_for, self._resumes_at = resume_seconds, None

    def resume(self) -> None:
        with self._lock:
            self._paused_for = self._resumes_at = None

    @property
    def calls(self) -> Counter[str]:
        """Calls received per operation, failed ones included."""
        with self._lock:
            return Counter(self._calls)

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    # -- request handling ------------------------------------------------------------------

    def handle(self, path: str, body: bytes) -> _Reply:
        """Answer one HTTP request: the operation comes from the path, its input from the JSON body."""
        if self.latency_seconds:
            time.sleep(self.latency_seconds)  # the simulated network round trip
        started = time.perf_counter()
        operation = OPERATIONS.get(path.split("?", 1)[0])
        with self._lock:
            self._calls[operation or "unknown"] += 1
        try:
            if operation is None:
                raise Fault("UnknownOperationException", f"{path} is not an operation this endpoint serves: "
                            f"use one of {', '.join(sorted(OPERATIONS.values()))}.")
            request = self._parse(operation, body)
            reply = _Reply(200, getattr(self, f"_{_snake_case(operation)}")(request))
        except Fault as fault:
            reply = _Reply(fault.status, {"message": fault.message}, fault.code)
        except Exception:
            self.logger.exception("data api call failed unexpectedly", extra={"operation": operation})
            reply = _Reply(500, {"message": "An internal error occurred."}, "InternalServerErrorException")
        self.logger.debug("data api call", extra={
            "operation": operation, "status": reply.status, "error_code": reply.error_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        })
        return reply

    def _parse(self, operation: str, body: bytes) -> dict[str, Any]:
        if len(body) > MAX_REQUEST_BYTES:
            raise Fault("BadRequestException", f"The request is {len(body)} bytes; the Data API accepts at most "
                        f"{MAX_REQUEST_BYTES} (4 MiB). Send fewer parameter sets per call.")
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            raise Fault("BadRequestException", "The request body is not valid JSON.") from None
        report = ParamValidator().validate(request, _MODEL.operation_model(operation).input_shape)
        if report.has_errors():
            raise Fault("BadRequestException", report.generate_report())
        if not _CLUSTER_ARN.fullmatch(request["resourceArn"]):
            raise Fault("BadRequestException", f"Invalid resourceArn {request['resourceArn']!r}: expected "
                        "arn:aws:rds:<region>:<account>:cluster:<cluster-name>.")
        if not _SECRET_ARN.fullmatch(request["secretArn"]):
            raise Fault("BadRequestException", f"Invalid secretArn {request['secretArn']!r}: expected "
                        "arn:aws:secretsmanager:<region>:<account>:secret:<name>.")
        if self.cluster_arns is not None and request["resourceArn"] not in self.cluster_arns:
            raise Fault("HttpEndpointNotEnabledException",
                        f"HttpEndpoint is not enabled for resource {request['resourceArn']}")
        if self.secret_arns is not None and request["secretArn"] not in self.secret_arns:
            raise Fault("SecretsErrorException", f"The secret {request['secretArn']} wasn't found.")
        if request.get("schema"):
            raise Fault("BadRequestException", "The schema parameter isn't supported.")
        return request

    def _check_awake(self, resource_arn: str) -> None:
        with self._lock:
            if self._paused_for is None:
                return
            now = time.monotonic()
            if self._resumes_at is None:
                self._resumes_at = now + self._paused_for  # this request wakes the cluster
            if now >= self._resumes_at:
                self._paused_for = self._resumes_at = None
                return
        raise Fault("DatabaseResumingException", f"The Aurora DB instance {resource_arn} is resuming after being "
                    "auto-paused. Please wait a few seconds and try again.")

    def _execute_statement(self, request: dict[str, Any]) -> dict[str, Any]:
        self._check_awake(request["resourceArn"])
        # Compiled and bound inside the transaction's scope: a refused statement aborts it, as an error does.
        with self._connection(request) as connection:
            compiled = _single_statement(request["sql"])
            parameters = self._bind(compiled, request.get("parameters", []))
            with psycopg.RawCursor(connection) as cursor:
                _run(cursor.execute, compiled.sql, parameters)
                if cursor.description is None:
                    return {"numberOfRecordsUpdated": max(cursor.rowcount, 0), "generatedFields": []}
                return self._result_set(connection, cursor.pgresult, request)

    def _batch_execute_statement(self, request: dict[str, Any]) -> dict[str, Any]:
        self._check_awake(request["resourceArn"])
        parameter_sets = request.get("parameterSets") or []
        if not parameter_sets:
            return {"updateResults": []}
        with self._connection(request) as connection, psycopg.RawCursor(connection) as cursor:
            compiled = _single_statement(request["sql"])
            bound = [self._bind(compiled, parameters) for parameters in parameter_sets]
            if request.get("transactionId"):
                _run(cursor.executemany, compiled.sql, bound)  # part of the caller's transaction
            else:
                # An autocommit connection: all sets in one transaction of their own, or none.
                # Explicit statements, not connection.transaction(), whose meaning depends on the
                # connection's state and whose COMMIT error would escape _run.
                _run(connection.execute, "BEGIN")
                try:
                    _run(cursor.executemany, compiled.sql, bound)
                except BaseException:
                    _run(connection.execute, "ROLLBACK")
                    raise
                _run(connection.execute, "COMMIT")
        return {"updateResults": [{"generatedFields": []} for _ in bound]}

    def _begin_transaction(self, request: dict[str, Any]) -> dict[str, Any]:
        self._check_awake(request["resourceArn"])
        # Not autocommit: psycopg opens the transaction before the first statement, as JDBC does with
        # autocommit off, and CommitTransaction or RollbackTransaction ends it. Nothing here may use
        # connection.transaction(): on this idle connection it would BEGIN and COMMIT on its own.
        connection = self._connect(request.get("database"), autocommit=False)
        # AWS's ids are opaque base64 strings of about 180 characters.
        transaction_id = base64.b64encode(secrets.token_bytes(138)).decode()
        now = time.monotonic()
        with self._lock:
            self._transactions[transaction_id] = _Transaction(transaction_id, connection, now, now)
        return {"transactionId": transaction_id}

    def _commit_transaction(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._transaction(request["transactionId"], ending=_ENDED) as connection:
            _run(connection.commit)
        return {"transactionStatus": "Transaction Committed"}

    def _rollback_transaction(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._transaction(request["transactionId"], ending=_ENDED) as connection:
            _run(connection.rollback)
        return {"transactionStatus": "Rollback Complete"}

    def _bind(self, compiled: CompiledStatement, parameters: list[dict[str, Any]]) -> list[Any]:
        """The request's parameters in the statement's placeholder order."""
        try:
            bound = bind_parameters(parameters)
        except ParameterError as error:
            raise Fault("BadRequestException", str(error)) from None
        if missing := sorted(set(compiled.names) - bound.keys()):
            raise Fault("BadRequestException", f"No value specified for parameter(s) {', '.join(missing)}: "
                        "add them to parameters.")
        return compiled.values(bound)

    def _result_set(self, connection: psycopg.Connection, result: Any, request: dict[str, Any]) -> dict[str, Any]:
        options = ResultOptions.from_request(request.get("resultSetOptions"))
        type_oids = [result.ftype(column) for column in range(result.nfields)]
        try:
            if request.get("formatRecordsAs") == "JSON":
                formatted = self._formatted_records(result, type_oids, options)
                return {"numberOfRecordsUpdated": 0, "formattedRecords": formatted}
            records = self._records(result, type_oids, options)
        except UnsupportedResult as error:
            raise Fault("UnsupportedResultException", str(error)) from None
        response: dict[str, Any] = {"numberOfRecordsUpdated": 0, "records": records}
        if request.get("includeResultMetadata"):
            response["columnMetadata"] = self._column_metadata(connection, result, type_oids)
        return response

    def _records(self, result: Any, type_oids: list[int], options: ResultOptions) -> list[list[dict[str, Any]]]:
        records, size = [], 0
        for row in range(result.ntuples):
            values = [result.get_value(row, column) for column in range(result.nfields)]
            # The limits apply to what the database returns: the values as PostgreSQL sent them.
            row_size = sum(len(value) for value in values if value is not None)
            if row_size > MAX_ROW_BYTES:
                raise Fault("DatabaseErrorException", f"Packet for query is too large: a result row is {row_size} "
                            f"bytes and the Data API returns rows of at most {MAX_ROW_BYTES} bytes.")
            size += row_size
            self._check_size(size, MAX_RESPONSE_BYTES)
            records.append([encode_field(oid, value, options) for oid, value in zip(type_oids, values)])
        return records

    def _formatted_records(self, result: Any, type_oids: list[int], options: ResultOptions) -> str:
        labels = [result.fname(column).decode() for column in range(result.nfields)]
        rows = [
            {labels[column]: json_value(oid, result.get_value(row, column), options)
             for column, oid in enumerate(type_oids)}
            for row in range(result.ntuples)
        ]
        formatted = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
        self._check_size(len(formatted.encode()), MAX_JSON_RESPONSE_BYTES)
        return formatted

    def _check_size(self, size: int, limit: int) -> None:
        if size > limit:
            raise Fault("DatabaseErrorException", "Database returned more than the allowed response size limit "
                        f"({limit} bytes). Select fewer rows, or page with LIMIT over several calls.")

    def _column_metadata(self, connection: psycopg.Connection, result: Any, type_oids: list[int]) -> list[dict]:
        columns = range(result.nfields)
        table_columns = _table_columns(connection, {result.ftable(column) for column in columns} - {0})
        return [
            column_metadata(
                result.fname(column).decode(), type_oids[column], result.fmod(column),
                lambda oid: self._type_name(connection, oid),
                table_columns.get((result.ftable(column), result.ftablecol(column))),
            )
            for column in columns
        ]

    def _type_name(self, connection: psycopg.Connection, type_oid: int) -> str:
        key = (connection.info.dbname, type_oid)  # a type's oid means something only in its own database
        name = builtin_type_name(type_oid) or self._type_names.get(key)
        if name is None:  # a type of this database's own: an enum, a domain, ...
            row = connection.execute("SELECT typname FROM pg_type WHERE oid = %s", [type_oid]).fetchone()
            name = self._type_names[key] = row[0] if row else "unknown"
        return name

    # -- connections and transactions ------------------------------------------------------

    def _connect(self, database: str | None, *, autocommit: bool) -> psycopg.Connection:
        options: dict[str, Any] = {"dbname": database} if database else {}
        try:
            return psycopg.connect(
                self.database_url, autocommit=autocommit, context=ADAPTERS, prepare_threshold=None,
                options="-c TimeZone=UTC", client_encoding="UTF8", application_name="conveyor-dataapi", **options,
            )
        except psycopg.Error as error:
            refusal = _CONNECTION_REFUSAL.search(str(error))
            if refusal:  # the server answered, e.g. the request named a database that does not exist
                state = next((code for pattern, code in _SQLSTATE_OF_REFUSAL if pattern.search(refusal[1])), "08006")
                raise Fault("DatabaseErrorException", f"FATAL: {refusal[1]}; SQLState: {state}") from None
            self.logger.warning("cannot reach PostgreSQL", extra={"reason": str(error)[:500]})
            raise Fault("DatabaseUnavailableException", "The writer instance in the DB cluster isn't available.") \
                from None

    @contextmanager
    def _connection(self, request: dict[str, Any]) -> Iterator[psycopg.Connection]:
        """The request's transaction connection, or a pooled autocommit connection."""
        if request.get("transactionId"):
            with self._transaction(request["transactionId"]) as connection:
                yield connection
            return
        database = request.get("database") or ""
        with self._lock:
            stack = self._idle.setdefault(database, [])
            connection = stack.pop() if stack else None
        connection = connection or self._connect(database, autocommit=True)
        try:
            yield connection
        finally:
            healthy = (not connection.closed and not connection.broken
                       and connection.info.transaction_status == TransactionStatus.IDLE
                       and _discard_session_state(connection))
            with self._lock:
                keep = healthy and len(self._idle.setdefault(database, [])) < IDLE_CONNECTIONS_PER_DATABASE
                if keep:
                    self._idle[database].append(connection)
            if not keep:
                connection.close()

    @contextmanager
    def _transaction(self, transaction_id: str, ending: str | None = None) -> Iterator[psycopg.Connection]:
        """Use a transaction's connection, one call at a time; end it with `ending` as the reason.

        Any error in the call aborts the transaction, as on AWS: it is rolled back at once, and
        every later call naming it (CommitTransaction and RollbackTransaction too) is told it
        isn't found because of that error. A commit can never report an aborted transaction
        committed."""
        transaction = self._live_transaction(transaction_id)
        if not transaction.busy.acquire(blocking=False):
            raise Fault("DatabaseErrorException", "Transaction is still running a query")
        try:
            transaction.last_used = time.monotonic()
            with self._lock:
                cause = None if self._transactions.get(transaction_id) is transaction else \
                    self._endings.get(transaction_id, _EXPIRED)
            if cause is not None:  # the sweeper ended it between the look-up and the lock
                raise _transaction_not_found(transaction_id, cause)
            try:
                yield transaction.connection
            except Exception:
                self._end(transaction, _ABORTED)
                raise
            if ending:
                self._end(transaction, ending)
        finally:
            transaction.last_used = time.monotonic()
            transaction.busy.release()

    def _live_transaction(self, transaction_id: str) -> _Transaction:
        with self._lock:
            transaction = self._transactions.get(transaction_id)
            cause = self._endings.get(transaction_id, _EXPIRED)
        if transaction is not None and self._end_if_expired(transaction, time.monotonic()):
            with self._lock:
                transaction, cause = None, self._endings.get(transaction_id, _EXPIRED)
        if transaction is None:
            raise _transaction_not_found(transaction_id, cause)
        return transaction

    def _end_if_expired(self, transaction: _Transaction, now: float) -> bool:
        """End an expired transaction unless a call is running on it (that call is its last use)."""
        expired = (now - transaction.last_used > self.transaction_idle_timeout
                   or now - transaction.started > self.transaction_max_lifetime)
        if not expired or not transaction.busy.acquire(blocking=False):
            return False
        try:
            self._end(transaction, _EXPIRED)
        finally:
            transaction.busy.release()
        self.logger.info("transaction expired", extra={"transaction_id": transaction.id[:12]})
        return True

    def _end(self, transaction: _Transaction, reason: str) -> None:
        with self._lock:
            if self._transactions.pop(transaction.id, None) is None:
                return
            self._endings[transaction.id] = reason
            while len(self._endings) > _REMEMBERED_ENDINGS:
                self._endings.popitem(last=False)
        transaction.connection.close()  # closing rolls back whatever was not committed

    def _expire_transactions(self) -> None:
        interval = max(0.05, min(1.0, self.transaction_idle_timeout / 4))
        while not self._stopping.wait(interval):
            now = time.monotonic()
            with self._lock:
                candidates = list(self._transactions.values())
            for transaction in candidates:
                self._end_if_expired(transaction, now)


def _discard_session_state(connection: psycopg.Connection) -> bool:
    """Reset a pooled connection so no call sees another's SET, temporary table or advisory lock;
    settings given at connect (TimeZone=UTC) are the session's defaults and stay. False if it failed."""
    try:
        connection.execute("DISCARD ALL")
    except psycopg.Error:
        return False
    return True


def _transaction_not_found(transaction_id: str, cause: str) -> Fault:
    return Fault("TransactionNotFoundException", f"Transaction {transaction_id} isn't found: {cause}")


def _single_statement(sql: str) -> CompiledStatement:
    """The Data API runs one statement per call; PostgreSQL's extended protocol refuses more."""
    compiled = compile_statement(sql)
    if compiled.statements > 1:
        raise Fault("DatabaseErrorException",
                    "ERROR: cannot insert multiple commands into a prepared statement; SQLState: 42601")
    return compiled


def _run(action: Callable[..., Any], *args: Any) -> Any:
    """Run a database call; PostgreSQL's errors become DatabaseErrorException, as on Aurora."""
    try:
        return action(*args)
    except psycopg.Error as error:
        raise _database_fault(error) from None


def _database_fault(error: psycopg.Error) -> Fault:
    """PostgreSQL's error as the Data API words it: the JDBC driver's message, then `; SQLState: 23505` (its code)."""
    diag = error.diag
    message = f"{diag.severity_nonlocalized or diag.severity or 'ERROR'}: {diag.message_primary or error}"
    for label, value in (("Detail", diag.message_detail), ("Hint", diag.message_hint),
                         ("Position", diag.statement_position), ("Where", diag.context)):
        if value:
            message += f"\n  {label}: {value.strip()}"
    if error.sqlstate:
        message += f"; SQLState: {error.sqlstate}"
    return Fault("DatabaseErrorException", message)


def _table_columns(connection: psycopg.Connection, table_oids: set[int]) -> dict[tuple[int, int], TableColumn]:
    if not table_oids:
        return {}
    rows = connection.execute(
        """
        SELECT c.oid, a.attnum, n.nspname, c.relname, a.attnotnull,
               a.attidentity <> '' OR COALESCE(pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%%', false)
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
        WHERE c.oid = ANY(%s)
        """,
        [list(table_oids)],
    ).fetchall()
    return {(oid, number): TableColumn(schema, table, not_null, auto) for oid, number, schema, table, not_null, auto
            in rows}


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class _DataApiHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: LocalDataApi):
        self.api = api
        super().__init__(address, _DataApiRequestHandler)


class _DataApiRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    # Headers and body leave in separate writes; with Nagle's algorithm each response
    # would wait for the client's delayed ACK (~40 ms).
    disable_nagle_algorithm = True
    server: _DataApiHttpServer

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        reply = self.server.api.handle(self.path, body)
        data = json.dumps(reply.payload, ensure_ascii=False).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        if reply.error_code:
            self.send_header("x-amzn-ErrorType", reply.error_code)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        """LocalDataApi.handle logs each call as structured JSON instead."""
