"""The console's configuration, read from the environment once per process.

Database, in order of preference:
- DATABASE_URL: a direct PostgreSQL URL;
- DATABASE_SECRET_ARN: a Secrets Manager secret as RDS writes it (JSON with username,
  password, host, port, dbname), read once at startup; DATABASE_NAME overrides dbname;
- DATA_API_RESOURCE_ARN + DATA_API_SECRET_ARN + DATA_API_DATABASE, as for the API and the
  worker: the RDS Data API. Runs can be read, but not executed: COPY needs a direct connection.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from urllib.parse import quote

from conveyor.dataapi.client import DATABASE_VARIABLE, RESOURCE_ARN_VARIABLE, SECRET_ARN_VARIABLE

ADMIN_TOKEN_VARIABLE = "CONSOLE_ADMIN_TOKEN"


class ConfigurationError(RuntimeError):
    pass


@dataclass(frozen=True)
class DatabaseSettings:
    direct_url: str | None  # psycopg; COPY and the engine's transaction need it
    data_api_url: str | None


def database_settings(secrets_client=None) -> DatabaseSettings:
    direct = os.environ.get("DATABASE_URL") or _url_from_secret(secrets_client)
    return DatabaseSettings(direct_url=direct, data_api_url=None if direct else _data_api_url())


def _url_from_secret(secrets_client) -> str | None:
    secret_arn = os.environ.get("DATABASE_SECRET_ARN")
    if not secret_arn:
        return None
    if secrets_client is None:
        import boto3

        secrets_client = boto3.client("secretsmanager")
    secret = json.loads(secrets_client.get_secret_value(SecretId=secret_arn)["SecretString"])
    try:
        user, password, host = secret["username"], secret["password"], secret["host"]
    except KeyError as exc:
        raise ConfigurationError(f"secret {secret_arn} has no {exc.args[0]!r}; it should hold the RDS"
                                 " credentials JSON (username, password, host, port, dbname)") from None
    name = os.environ.get("DATABASE_NAME") or secret.get("dbname") or "postgres"
    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{secret.get('port', 5432)}/{name}"


def _data_api_url() -> str | None:
    cluster, secret = os.environ.get(RESOURCE_ARN_VARIABLE), os.environ.get(SECRET_ARN_VARIABLE)
    if not (cluster and secret):
        return None
    name = os.environ.get(DATABASE_VARIABLE, "postgres")
    return (f"postgresql+auroradataapi://:@/{name}?aurora_cluster_arn={quote(cluster, safe='')}"
            f"&secret_arn={quote(secret, safe='')}")


def admin_token() -> str | None:
    return os.environ.get(ADMIN_TOKEN_VARIABLE) or None
