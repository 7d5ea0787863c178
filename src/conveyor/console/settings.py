"""The console's configuration, read from the environment once per process.

Database (chosen by `conveyor.bootstrap.choose_database`, preferring a direct connection), in order:
- DATABASE_URL: a direct PostgreSQL URL;
- DATABASE_SECRET_ARN: a Secrets Manager secret as RDS writes it (JSON with username, password,
  host, port, dbname). DATABASE_NAME, DATABASE_HOST and DATABASE_PORT override its dbname, host
  and port (an RDS-managed master user secret holds only username and password). The secret is
  read at startup, and read again whenever a new connection is refused: RDS rotates it, and
  connections already open keep working after a rotation;
- DATA_API_RESOURCE_ARN + DATA_API_SECRET_ARN + DATA_API_DATABASE (+ DATA_API_RETRY_BUDGET_SECONDS),
  as for the API and the worker: the RDS Data API. Runs can be submitted and read, but not
  executed: COPY needs a direct connection.
"""
from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import sqlalchemy as sa
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ReadTimeoutError,
)

from conveyor import bootstrap
from conveyor.bootstrap import ConfigurationError
from conveyor.dataapi.client import DataApiDatabase
from conveyor.observability import get_logger
from conveyor.reconciliation.sources import REPORT_DIR_VARIABLE

ADMIN_TOKEN_VARIABLE = "CONSOLE_ADMIN_TOKEN"
DATABASE_URL_VARIABLE = "DATABASE_URL"
DATABASE_SECRET_VARIABLE = "DATABASE_SECRET_ARN"
DATABASE_NAME_VARIABLE = "DATABASE_NAME"
DATABASE_HOST_VARIABLE = "DATABASE_HOST"
DATABASE_PORT_VARIABLE = "DATABASE_PORT"

SECRET_FORMAT = ('the RDS credentials JSON {"username": ..., "password": ..., "host": ..., "port": 5432,'
                 ' "dbname": ...}')
_REGION_IN_ARN = re.compile(r"^arn:[^:]+:secretsmanager:([^:]+):")


@dataclass(frozen=True)
class DatabaseSettings:
    direct_url: str | None = None  # psycopg; COPY and the engine's transaction need it
    data_api: DataApiDatabase | None = None  # built exactly as the API and the worker build theirs
    secret: DatabaseSecret | None = None  # where direct_url's credentials come from; re-read after a rotation


def database_settings(secrets_client: Any = None) -> DatabaseSettings:
    choice = bootstrap.choose_database(prefer_direct=True)
    if choice is not None and choice.kind == "direct":
        return DatabaseSettings(direct_url=choice.url)
    # The console's own source of a direct connection, preferred to the Data API: COPY needs one.
    if secret_arn := os.environ.get(DATABASE_SECRET_VARIABLE):
        secret = DatabaseSecret(secret_arn, secrets_client or secrets_manager_client(secret_arn))
        return DatabaseSettings(direct_url=secret.url(), secret=secret)
    if choice is not None:
        data_api = bootstrap.open_database(choice)
        assert isinstance(data_api, DataApiDatabase)
        return DatabaseSettings(data_api=data_api)
    return DatabaseSettings()


def admin_token() -> str | None:
    return os.environ.get(ADMIN_TOKEN_VARIABLE) or None


def report_dir() -> Path | None:
    """The folder under which the API reads local reports (CONVEYOR_REPORT_DIR); None: no local paths."""
    configured = os.environ.get(REPORT_DIR_VARIABLE)
    if not configured:
        return None
    folder = Path(os.path.normpath(configured))
    if not folder.is_absolute() or not folder.is_dir() or Path(os.path.realpath(folder)) == Path("/"):
        raise ConfigurationError(
            f"{REPORT_DIR_VARIABLE} must name an existing folder other than /, by its absolute path: the console"
            " reads local reports only under it (unset it to allow uploads and s3:// sources only)")
    return folder


def secrets_manager_client(secret_arn: str) -> Any:
    """A Secrets Manager client that gives up within seconds, so a missing route fails startup visibly.

    boto3 reads AWS_ENDPOINT_URL_SECRETS_MANAGER itself; the region defaults to the secret's.
    """
    region = _REGION_IN_ARN.match(secret_arn)
    session = boto3.session.Session()
    try:
        return session.client(
            "secretsmanager",
            region_name=session.region_name or (region.group(1) if region else None),
            config=Config(connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 3}),
        )
    except NoRegionError:
        raise ConfigurationError(
            f"{DATABASE_SECRET_VARIABLE} {secret_arn!r} is not an ARN, so it names no region: set AWS_REGION,"
            " or use the secret's full ARN") from None


class DatabaseSecret:
    """The database credentials in a Secrets Manager secret, kept current across RDS rotations.

    Read once at startup. After that it is read again only when PostgreSQL refuses a new
    connection: a rotation changes the password (or, with alternating users, the user) in
    the secret, and the refused connection is retried once with what the secret now holds.
    """

    def __init__(self, arn: str, client: Any, environ: Mapping[str, str] | None = None):
        self.arn = arn
        self._client = client
        self._environ = os.environ if environ is None else environ
        self._lock = threading.Lock()
        self._logger = get_logger("conveyor-console")
        self.connect_params = self._read()

    def url(self) -> str:
        """A SQLAlchemy URL with the credentials read last; host and port go in the query, so a socket
        folder works too."""
        params = self.connect_params
        return sa.engine.URL.create(
            "postgresql+psycopg", username=params["user"], password=params["password"], database=params["dbname"],
            query={"host": params["host"], "port": str(params["port"])},
        ).render_as_string(hide_password=False)

    def refresh(self) -> bool:
        """Read the secret again; whether the connection parameters changed. Raises ConfigurationError."""
        with self._lock:
            fresh = self._read()
            changed = fresh != self.connect_params
            self.connect_params = fresh
        self._logger.info("database secret read again", extra={"secret_arn": self.arn, "changed": changed})
        return changed

    def keep_current(self, engine: sa.Engine) -> None:
        """Make every new connection of `engine` use the secret's current credentials, and re-read the
        secret when PostgreSQL refuses one."""

        def connect(dialect: Any, connection_record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
            tried = self.connect_params
            cparams.update(tried)
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as refused:
                # psycopg gives no SQLSTATE for a refused connection, so any refusal re-reads the secret;
                # only changed credentials are tried again, otherwise the database's own error stands.
                try:
                    self.refresh()
                except ConfigurationError as unreadable:
                    self._logger.warning("database secret could not be read again", extra={
                        "secret_arn": self.arn, "error": str(unreadable), "connect_error": str(refused)[:300]})
                    raise refused from None
                # Compared with what this attempt used: another thread may have read the new secret first.
                if self.connect_params == tried:
                    raise
                self._logger.info("database credentials changed in the secret; connecting with them",
                                  extra={"secret_arn": self.arn})
                cparams.update(self.connect_params)
                return dialect.connect(*cargs, **cparams)

        sa.event.listen(engine, "do_connect", connect)

    def _read(self) -> dict[str, Any]:
        secret = self._parse(self._fetch())
        present = {
            "username": bool(secret.get("username")),
            "password": isinstance(secret.get("password"), str),  # may be empty: a server may trust its clients
            "host": bool(secret.get("host") or self._environ.get(DATABASE_HOST_VARIABLE)),
        }
        missing = [key for key, found in present.items() if not found]
        if missing:
            raise ConfigurationError(
                f"secret {self.arn} has no {', '.join(repr(key) for key in missing)}; it should hold {SECRET_FORMAT}."
                f" An RDS-managed master user secret holds only username and password: set {DATABASE_HOST_VARIABLE}"
                f" (and {DATABASE_PORT_VARIABLE}, {DATABASE_NAME_VARIABLE}) to the cluster's writer endpoint")
        port = self._environ.get(DATABASE_PORT_VARIABLE) or secret.get("port") or 5432
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"the database port {port!r} (from {DATABASE_PORT_VARIABLE} or secret {self.arn}) is not a number"
            ) from None
        return {
            "user": str(secret["username"]),
            "password": str(secret["password"]),
            "host": self._environ.get(DATABASE_HOST_VARIABLE) or str(secret["host"]),
            "port": port,
            "dbname": self._environ.get(DATABASE_NAME_VARIABLE) or secret.get("dbname") or "postgres",
        }

    def _fetch(self) -> dict[str, Any]:
        try:
            return self._client.get_secret_value(SecretId=self.arn)
        except ClientError as exc:
            raise ConfigurationError(self._refusal(exc)) from None
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
            raise ConfigurationError(
                f"cannot reach Secrets Manager to read {self.arn} ({exc}): give the task a route to it (a NAT"
                " gateway or a secretsmanager VPC endpoint), or correct AWS_ENDPOINT_URL_SECRETS_MANAGER") from None
        except NoCredentialsError:
            raise ConfigurationError(
                f"no AWS credentials to read {self.arn}: give the ECS task a task role, or set AWS credentials"
                " in the environment") from None
        except BotoCoreError as exc:
            raise ConfigurationError(f"could not read the secret {self.arn} from Secrets Manager: {exc}") from None

    def _refusal(self, exc: ClientError) -> str:
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        if code == "ResourceNotFoundException":
            return (f"Secrets Manager has no secret {self.arn}: correct {DATABASE_SECRET_VARIABLE}"
                    " (a name needs the console to run in the secret's region; an ARN does not)")
        if code in ("AccessDeniedException", "AccessDenied"):
            return (f"the console may not read the secret {self.arn} ({message}): allow"
                    " secretsmanager:GetSecretValue on it in the task role")
        if code == "DecryptionFailure":
            return (f"Secrets Manager could not decrypt the secret {self.arn} ({message}): allow kms:Decrypt"
                    " on its KMS key in the task role")
        if code == "InvalidRequestException":
            return (f"Secrets Manager refused to read the secret {self.arn} ({message}): a secret scheduled for"
                    " deletion must be restored first")
        return f"Secrets Manager refused to read the secret {self.arn} ({code}: {message}); check {DATABASE_SECRET_VARIABLE}"

    def _parse(self, response: dict[str, Any]) -> dict[str, Any]:
        # Never quote the secret's content in an error: it holds the password.
        text = response.get("SecretString")
        if text is None:
            raise ConfigurationError(f"secret {self.arn} holds binary data; it should hold {SECRET_FORMAT}")
        try:
            secret = json.loads(text)
        except ValueError:
            secret = None
        if not isinstance(secret, dict):
            raise ConfigurationError(f"secret {self.arn} is not a JSON object; it should hold {SECRET_FORMAT}")
        return secret
