"""The console's database settings: DATABASE_URL, a Secrets Manager secret (moto in process), the Data API."""
from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from botocore.stub import Stubber
from moto import mock_aws

from conveyor.console import settings
from conveyor.console.app import Services
from conveyor.console.settings import ConfigurationError, DatabaseSettings, database_settings
from conveyor.dataapi.client import DataApiDatabase

CLUSTER = "arn:aws:rds:eu-west-1:123456789012:cluster:conveyor"
DATA_API_SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:conveyor-data-api-AbCdEf"
PASSWORD = "p@ss:/w?rd#%&\"é"  # everything a URL would mangle
RDS_SECRET = {"engine": "postgres", "username": "conveyor_app", "password": PASSWORD,
              "host": "conveyor.cluster-abc.eu-west-1.rds.amazonaws.com", "port": 5432, "dbname": "conveyor"}
CONFIGURATION = ("DATABASE_URL", "DATABASE_SECRET_ARN", "DATABASE_NAME", "DATABASE_HOST", "DATABASE_PORT",
                 "DATA_API_RESOURCE_ARN", "DATA_API_SECRET_ARN", "DATA_API_DATABASE", "DATA_API_RETRY_BUDGET_SECONDS",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_PROFILE", "AWS_REGION")


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CONFIGURATION:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def secrets() -> Iterator[object]:
    with mock_aws():
        yield settings.secrets_manager_client("arn:aws:secretsmanager:eu-west-1:123456789012:secret:x")


def store(secrets, monkeypatch: pytest.MonkeyPatch, value: str | bytes, name: str = "conveyor/db") -> str:
    """Create the secret and point DATABASE_SECRET_ARN at it; its ARN."""
    content = {"SecretBinary": value} if isinstance(value, bytes) else {"SecretString": value}
    arn = secrets.create_secret(Name=name, **content)["ARN"]
    monkeypatch.setenv("DATABASE_SECRET_ARN", arn)
    return arn


def connect_arguments(url: str) -> dict:
    engine = sa.create_engine(url)
    _, params = engine.dialect.create_connect_args(engine.url)
    return {key: params.get(key) for key in ("user", "password", "host", "port", "dbname")}


def test_nothing_configured_gives_no_database_and_the_console_says_what_to_set():
    assert database_settings() == DatabaseSettings()
    with pytest.raises(ConfigurationError, match="set DATABASE_URL, DATABASE_SECRET_ARN, or DATA_API_RESOURCE_ARN"):
        Services(database_settings).runs  # noqa: B018 - built on first access


def test_database_url_wins_and_no_secret_is_read(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.internal/conveyor")
    monkeypatch.setenv("DATABASE_SECRET_ARN", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:unused")
    monkeypatch.setenv("DATA_API_RESOURCE_ARN", CLUSTER)

    class NoSecrets:
        def get_secret_value(self, **_):
            raise AssertionError("the secret must not be read when DATABASE_URL is set")

    assert database_settings(NoSecrets()) == DatabaseSettings(direct_url="postgresql://app@db.internal/conveyor")


def test_a_secret_as_rds_writes_it_gives_exact_credentials(secrets, monkeypatch):
    store(secrets, monkeypatch, json.dumps(RDS_SECRET))

    configured = database_settings(secrets)

    assert configured.data_api is None and configured.secret is not None
    assert connect_arguments(configured.direct_url) == {
        "user": "conveyor_app", "password": PASSWORD, "host": RDS_SECRET["host"], "port": "5432", "dbname": "conveyor"}


def test_a_managed_master_user_secret_takes_host_port_and_name_from_the_environment(secrets, monkeypatch):
    # RDS-managed master user secrets hold only the username and the password.
    store(secrets, monkeypatch, json.dumps({"username": "postgres", "password": PASSWORD}))
    monkeypatch.setenv("DATABASE_HOST", "writer.internal")
    monkeypatch.setenv("DATABASE_PORT", "6432")
    monkeypatch.setenv("DATABASE_NAME", "reporting")

    assert connect_arguments(database_settings(secrets).direct_url) == {
        "user": "postgres", "password": PASSWORD, "host": "writer.internal", "port": "6432", "dbname": "reporting"}


def test_a_secret_without_dbname_or_port_uses_postgres_defaults(secrets, monkeypatch):
    # An empty password is passed on: a server that trusts its clients accepts it, any other refuses it itself.
    store(secrets, monkeypatch, json.dumps({"username": "u", "password": "", "host": "/var/run/postgresql"}))

    assert connect_arguments(database_settings(secrets).direct_url) == {
        "user": "u", "password": None, "host": "/var/run/postgresql", "port": "5432", "dbname": "postgres"}


@pytest.mark.parametrize(("secret", "missing"), [
    ({"username": "u", "host": "h"}, "'password'"),
    ({"password": PASSWORD}, "'username', 'host'"),
    ({"username": "", "password": PASSWORD, "host": "h"}, "'username'"),
    ({"username": "u", "password": None, "host": ""}, "'password', 'host'"),
    ({}, "'username', 'password', 'host'"),
])
def test_a_secret_missing_keys_names_them_all_and_how_to_fix_it(secrets, monkeypatch, secret, missing):
    arn = store(secrets, monkeypatch, json.dumps(secret))

    with pytest.raises(ConfigurationError) as refused:
        database_settings(secrets)

    message = str(refused.value)
    assert f"secret {arn} has no {missing};" in message
    assert '"username"' in message and "set DATABASE_HOST" in message
    assert PASSWORD not in message


def test_a_port_that_is_not_a_number_is_refused(secrets, monkeypatch):
    store(secrets, monkeypatch, json.dumps({**RDS_SECRET, "port": "fivefourthreetwo"}))

    with pytest.raises(ConfigurationError, match="port 'fivefourthreetwo'.* is not a number"):
        database_settings(secrets)


@pytest.mark.parametrize(("value", "words"), [
    (f"username=conveyor_app password={PASSWORD}", "is not a JSON object"),
    (json.dumps(["conveyor_app", PASSWORD]), "is not a JSON object"),
    (json.dumps(PASSWORD), "is not a JSON object"),
    (PASSWORD.encode(), "holds binary data"),
])
def test_a_secret_that_is_not_the_rds_json_is_refused_without_quoting_it(secrets, monkeypatch, value, words):
    arn = store(secrets, monkeypatch, value)

    with pytest.raises(ConfigurationError) as refused:
        database_settings(secrets)

    message = str(refused.value)
    assert f"secret {arn} {words}; it should hold the RDS credentials JSON" in message
    assert PASSWORD not in message


def test_a_secret_that_does_not_exist_says_to_correct_the_variable(secrets, monkeypatch):
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:no-such-secret-AbCdEf"
    monkeypatch.setenv("DATABASE_SECRET_ARN", arn)

    with pytest.raises(ConfigurationError, match=f"Secrets Manager has no secret {arn}: correct DATABASE_SECRET_ARN"):
        database_settings(secrets)


@pytest.mark.parametrize(("code", "words"), [
    ("AccessDeniedException", "allow secretsmanager:GetSecretValue on it in the task role"),
    ("DecryptionFailure", "allow kms:Decrypt on its KMS key"),
    ("InvalidRequestException", "scheduled for deletion must be restored"),
    ("InternalServiceError", "(InternalServiceError: refused); check DATABASE_SECRET_ARN"),
])
def test_a_refused_read_says_what_to_grant_or_fix(monkeypatch, code, words):
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:conveyor-db-AbCdEf"
    monkeypatch.setenv("DATABASE_SECRET_ARN", arn)
    client = settings.secrets_manager_client(arn)
    with Stubber(client) as stubber:
        stubber.add_client_error("get_secret_value", service_error_code=code, service_message="refused",
                                 expected_params={"SecretId": arn})
        with pytest.raises(ConfigurationError) as refused:
            database_settings(client)

    assert arn in str(refused.value) and words in str(refused.value)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again once the socket is: nothing listens there


def test_an_unreachable_secrets_manager_says_to_give_the_task_a_route(monkeypatch):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", endpoint)
    monkeypatch.setenv("DATABASE_SECRET_ARN", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:conveyor-db")

    with pytest.raises(ConfigurationError) as refused:
        database_settings()

    message = str(refused.value)
    assert message.startswith("cannot reach Secrets Manager to read arn:aws:secretsmanager:eu-west-1:123456789012:"
                              f'secret:conveyor-db (Could not connect to the endpoint URL: "{endpoint}/")')
    assert "a secretsmanager VPC endpoint), or correct AWS_ENDPOINT_URL_SECRETS_MANAGER" in message


def test_no_aws_credentials_says_to_give_the_task_a_role(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("DATABASE_SECRET_ARN", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:conveyor-db")

    with pytest.raises(ConfigurationError, match="no AWS credentials to read .*: give the ECS task a task role"):
        database_settings()


def test_the_region_comes_from_the_secret_arn_and_a_bare_name_needs_aws_region(monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))

    client = settings.secrets_manager_client("arn:aws:secretsmanager:ap-southeast-2:123456789012:secret:db-AbCdEf")
    assert client.meta.region_name == "ap-southeast-2"

    monkeypatch.setenv("DATABASE_SECRET_ARN", "conveyor/db")
    with pytest.raises(ConfigurationError, match="'conveyor/db' is not an ARN, so it names no region: set AWS_REGION"):
        database_settings()


def test_refresh_reads_the_rotated_secret_and_says_whether_it_changed(secrets, monkeypatch):
    arn = store(secrets, monkeypatch, json.dumps(RDS_SECRET))
    secret = database_settings(secrets).secret

    assert secret.refresh() is False
    secrets.put_secret_value(SecretId=arn, SecretString=json.dumps({**RDS_SECRET, "password": "rotated"}))
    assert secret.refresh() is True
    assert secret.connect_params["password"] == "rotated"
    assert connect_arguments(secret.url())["password"] == "rotated"


def test_a_rotated_secret_that_cannot_be_read_keeps_the_credentials_it_had(secrets, monkeypatch):
    arn = store(secrets, monkeypatch, json.dumps(RDS_SECRET))
    secret = database_settings(secrets).secret
    secrets.put_secret_value(SecretId=arn, SecretString="half-written")

    with pytest.raises(ConfigurationError, match="is not a JSON object"):
        secret.refresh()
    assert secret.connect_params["password"] == PASSWORD


def test_the_data_api_is_built_as_for_the_api_and_the_worker(monkeypatch):
    monkeypatch.setenv("DATA_API_RESOURCE_ARN", CLUSTER)
    monkeypatch.setenv("DATA_API_SECRET_ARN", DATA_API_SECRET)
    monkeypatch.setenv("DATA_API_DATABASE", "conveyor")
    monkeypatch.setenv("DATA_API_RETRY_BUDGET_SECONDS", "8")

    configured = database_settings()

    assert configured.direct_url is None and configured.secret is None
    assert isinstance(configured.data_api, DataApiDatabase)
    data_api = configured.data_api
    assert (data_api.resource_arn, data_api.secret_arn, data_api.database) == (CLUSTER, DATA_API_SECRET, "conveyor")
    assert data_api.retry.budget_seconds == 8.0
    assert Services(lambda: configured).runs.service.database is data_api


@pytest.mark.parametrize(("variables", "words"), [
    ({"DATA_API_RESOURCE_ARN": CLUSTER}, "DATA_API_SECRET_ARN, DATA_API_DATABASE not set"),
    ({"DATA_API_RESOURCE_ARN": CLUSTER, "DATA_API_SECRET_ARN": DATA_API_SECRET}, "DATA_API_DATABASE not set"),
    ({"DATA_API_DATABASE": "conveyor"}, "DATA_API_RESOURCE_ARN, DATA_API_SECRET_ARN not set"),
    ({"DATA_API_RESOURCE_ARN": CLUSTER, "DATA_API_SECRET_ARN": DATA_API_SECRET, "DATA_API_DATABASE": "conveyor",
      "DATA_API_RETRY_BUDGET_SECONDS": "twenty"}, "DATA_API_RETRY_BUDGET_SECONDS must be a number of seconds"),
])
def test_a_partial_data_api_configuration_names_what_is_missing(monkeypatch, variables, words):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigurationError, match=words):
        database_settings()


class RefusingDialect:
    """Stands in for SQLAlchemy's dialect: refuses passwords it does not know, and can act meanwhile."""

    class loaded_dbapi:  # noqa: N801 - the attribute SQLAlchemy's dialects have
        OperationalError = type("OperationalError", (Exception,), {})

    def __init__(self, accepted_password: str, while_connecting=lambda: None):
        self.accepted_password = accepted_password
        self.while_connecting = while_connecting
        self.passwords_tried: list[str] = []

    def connect(self, *cargs, **cparams):
        self.passwords_tried.append(cparams["password"])
        self.while_connecting()
        if cparams["password"] != self.accepted_password:
            raise self.loaded_dbapi.OperationalError("FATAL:  password authentication failed")
        return f"connection as {cparams['user']}"


def new_connection(secret, dialect) -> object:
    """What the pool does for a new connection: the do_connect listeners, with the URL's parameters."""
    engine = sa.create_engine(secret.url())
    secret.keep_current(engine)
    _, cparams = engine.dialect.create_connect_args(engine.url)
    [listener] = engine.dialect.dispatch.do_connect
    return listener(dialect, None, [], cparams)


def test_a_refused_connection_retries_with_the_rotated_password(secrets, monkeypatch):
    arn = store(secrets, monkeypatch, json.dumps(RDS_SECRET))
    secret = database_settings(secrets).secret
    secrets.put_secret_value(SecretId=arn, SecretString=json.dumps({**RDS_SECRET, "password": "rotated"}))
    dialect = RefusingDialect("rotated")

    assert new_connection(secret, dialect) == "connection as conveyor_app"
    assert dialect.passwords_tried == [PASSWORD, "rotated"]


def test_a_refusal_retries_when_another_thread_read_the_rotated_secret_first(secrets, monkeypatch):
    arn = store(secrets, monkeypatch, json.dumps(RDS_SECRET))
    secret = database_settings(secrets).secret
    secrets.put_secret_value(SecretId=arn, SecretString=json.dumps({**RDS_SECRET, "password": "rotated"}))
    # While this attempt waits for PostgreSQL with the old password, another thread re-reads the secret.
    dialect = RefusingDialect("rotated", while_connecting=lambda: secret.refresh())

    assert new_connection(secret, dialect) == "connection as conveyor_app"
    assert dialect.passwords_tried == [PASSWORD, "rotated"]


def test_a_refusal_with_an_unchanged_secret_raises_the_database_error(secrets, monkeypatch):
    store(secrets, monkeypatch, json.dumps(RDS_SECRET))
    secret = database_settings(secrets).secret
    dialect = RefusingDialect("something else")

    with pytest.raises(RefusingDialect.loaded_dbapi.OperationalError, match="password authentication failed"):
        new_connection(secret, dialect)
    assert dialect.passwords_tried == [PASSWORD]


def test_the_report_folder_is_unset_by_default_and_otherwise_an_existing_absolute_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("CONVEYOR_REPORT_DIR", raising=False)
    assert settings.report_dir() is None
    monkeypatch.setenv("CONVEYOR_REPORT_DIR", f"{tmp_path}/./reports/../")
    assert settings.report_dir() == tmp_path

    file = tmp_path / "file.csv"
    file.write_text("x")
    for wrong in ("/", "//", "reports", str(tmp_path / "missing"), str(file)):
        monkeypatch.setenv("CONVEYOR_REPORT_DIR", wrong)
        with pytest.raises(ConfigurationError, match="CONVEYOR_REPORT_DIR must name an existing folder"):
            settings.report_dir()
