"""The console's database secret across an RDS rotation, against a real PostgreSQL and moto's Secrets Manager.

The test server trusts every login, so a rotation is played with two login roles: the secret
moves from one to the other and the old role loses LOGIN, as with RDS's alternating-users
rotation. PostgreSQL refuses the old credentials with the same kind of error (FATAL, class 28)
as a rotated password.
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from sqlalchemy.engine import make_url

from conveyor.adapters.database import Database
from conveyor.console.app import Services, create_app


@pytest.fixture
def login_roles(session_database: Database) -> Iterator[tuple[str, str]]:
    """Two fresh login roles (blue, green); dropped afterwards with their sessions."""
    suffix = uuid.uuid4().hex[:8]
    roles = (f"console_blue_{suffix}", f"console_green_{suffix}")
    for role in roles:  # identifiers cannot be bound parameters; these names are our own
        session_database.execute(f'CREATE ROLE "{role}" LOGIN')
        # What the console's own user may do, so its background work (run recovery) runs as in production.
        session_database.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"')
    yield roles
    for role in roles:
        session_database.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = :role",
                                 {"role": role})
        session_database.execute(f'DROP OWNED BY "{role}"')  # its grants
        session_database.execute(f'DROP ROLE "{role}"')


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    for name in ("DATABASE_URL", "DATA_API_RESOURCE_ARN", "DATA_API_SECRET_ARN", "DATA_API_DATABASE",
                 "DATABASE_NAME", "DATABASE_HOST", "DATABASE_PORT", "AWS_ENDPOINT_URL_SECRETS_MANAGER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield boto3.client("secretsmanager")


@pytest.fixture
def secret_for(aws, database_url: str, monkeypatch: pytest.MonkeyPatch):
    """Store the test database's credentials for a role, as RDS writes them; point DATABASE_SECRET_ARN at them."""
    url = make_url(database_url)
    server = {"host": url.query.get("host") or url.host, "port": url.port or 5432, "dbname": url.database,
              "engine": "postgres"}

    def credentials(role: str) -> str:
        return json.dumps({**server, "username": role, "password": f"password-of-{role}"})

    def create(role: str) -> str:
        arn = aws.create_secret(Name=f"conveyor/console-{uuid.uuid4().hex[:8]}", SecretString=credentials(role))["ARN"]
        monkeypatch.setenv("DATABASE_SECRET_ARN", arn)
        return arn

    create.credentials = credentials
    return create


@pytest.fixture
def services() -> Iterator[Services]:
    built = Services()
    yield built
    built.drain(5)
    if built._runs is not None:
        built.runs.service.database.dispose()


def current_user(services: Services) -> str:
    return services.runs.service.database.fetch_json("SELECT to_json(current_user)::text")


def logged(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage() == message]


def test_new_connections_follow_a_rotated_secret(aws, secret_for, login_roles, services, session_database, caplog):
    blue, green = login_roles
    arn = secret_for(blue)
    client = create_app(services).test_client()
    assert client.get("/readyz").get_json() == {"status": "ready"}
    assert current_user(services) == blue

    aws.put_secret_value(SecretId=arn, SecretString=secret_for.credentials(green))
    session_database.execute(f'ALTER ROLE "{blue}" NOLOGIN')
    assert current_user(services) == blue  # an open connection outlives the rotation
    services.runs.service.database.engine.dispose()  # the next statement needs a new connection

    assert client.get("/readyz").get_json() == {"status": "ready"}
    assert current_user(services) == green
    changed = logged(caplog, "database credentials changed in the secret; connecting with them")
    assert changed and {record.secret_arn for record in changed} == {arn}


def test_a_refusal_with_an_unchanged_secret_gives_the_database_error(aws, secret_for, login_roles, services,
                                                                      session_database, caplog):
    blue, _ = login_roles
    arn = secret_for(blue)
    session_database.execute(f'ALTER ROLE "{blue}" NOLOGIN')

    not_ready = create_app(services).test_client().get("/readyz")

    assert not_ready.status_code == 503
    assert f'role "{blue}" is not permitted to log in' in not_ready.get_json()["error"]["message"]
    read_again = logged(caplog, "database secret read again")  # once per refused connection
    assert read_again and {(record.secret_arn, record.changed) for record in read_again} == {(arn, False)}


def test_a_refusal_when_the_secret_cannot_be_read_again_gives_the_database_error(aws, secret_for, login_roles,
                                                                                  services, session_database, caplog):
    blue, _ = login_roles
    arn = secret_for(blue)
    client = create_app(services).test_client()
    assert client.get("/readyz").status_code == 200
    aws.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    session_database.execute(f'ALTER ROLE "{blue}" NOLOGIN')
    services.runs.service.database.engine.dispose()

    not_ready = client.get("/readyz")

    assert not_ready.status_code == 503
    assert f'role "{blue}" is not permitted to log in' in not_ready.get_json()["error"]["message"]
    warnings = logged(caplog, "database secret could not be read again")
    assert warnings and all(warning.levelname == "WARNING" and "Secrets Manager has no secret" in warning.error
                            for warning in warnings)
