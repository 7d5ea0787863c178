"""Clients' API keys in API Gateway's usage plan (moto), and the client service around them."""
from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from conveyor.adapters.api_keys import ApiGatewayKeys
from conveyor.services.admin import AdminError, create_client, revoke_client


@pytest.fixture
def gateway(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("apigateway", region_name="eu-west-1")
        plan = client.create_usage_plan(name="conveyor-test-clients", throttle={"rateLimit": 20, "burstLimit": 40},
                                        quota={"limit": 1000, "period": "MONTH"})
        yield client, plan["id"]


class RecordingDatabase:
    """Stands in for the clients table: counts rows by name."""

    def __init__(self):
        self.active: dict[str, str] = {}
        self.statements: list[str] = []

    def execute(self, sql: str, params: dict) -> int:
        self.statements.append(sql.split()[0])
        if sql.lstrip().startswith("INSERT"):
            if params["name"] in self.active:
                return 0
            self.active[params["name"]] = params["id"]
            return 1
        if sql.lstrip().startswith("DELETE"):
            self.active = {n: i for n, i in self.active.items() if i != params["id"]}
            return 1
        return 1 if self.active.pop(params["name"], None) else 0


def test_create_puts_the_same_key_in_the_usage_plan_and_revoke_removes_it(gateway):
    client, plan_id = gateway
    keys = ApiGatewayKeys(plan_id, client)
    database = RecordingDatabase()
    created = create_client(database, "acme", registry=keys)
    members = client.get_usage_plan_keys(usagePlanId=plan_id)["items"]
    assert [(m["name"], m["value"]) for m in members] == [("acme", created.api_key)]

    revoke_client(database, "acme", registry=keys)
    assert client.get_usage_plan_keys(usagePlanId=plan_id)["items"] == []
    assert client.get_api_keys()["items"] == []
    with pytest.raises(AdminError, match="no active client named 'acme'"):
        revoke_client(database, "acme", registry=keys)


class PlanRefusingKeys:
    """API Gateway whose usage plan refuses new keys (e.g. a wrong CONVEYOR_USAGE_PLAN_ID)."""

    def __init__(self, client):
        self.client = client

    def __getattr__(self, name):
        return getattr(self.client, name)

    def create_usage_plan_key(self, **request):
        raise ClientError({"Error": {"Code": "NotFoundException", "Message": "Invalid Usage Plan ID"}},
                          "CreateUsagePlanKey")


def test_a_key_the_gateway_refuses_leaves_no_client_behind(gateway):
    client, _ = gateway
    database = RecordingDatabase()
    with pytest.raises(AdminError, match=r"NotFoundException\); check CONVEYOR_USAGE_PLAN_ID=no-such-plan"):
        create_client(database, "acme", registry=ApiGatewayKeys("no-such-plan", PlanRefusingKeys(client)))
    assert database.active == {}
    assert client.get_api_keys()["items"] == []  # the key made before the plan refused it is gone


def test_without_a_gateway_the_service_works_on_the_table_alone():
    database = RecordingDatabase()
    create_client(database, "local")
    revoke_client(database, "local")
    assert database.statements == ["INSERT", "UPDATE"]
