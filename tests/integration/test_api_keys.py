"""Clients' API keys in API Gateway's usage plan (moto), and the client service around them (real PostgreSQL)."""
from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from conveyor.adapters.api_keys import ApiGatewayKeys
from conveyor.services import clients
from conveyor.services.access import Actor, Role
from conveyor.services.admin import AdminError

ADMIN = Actor(name="root-admin", role=Role.ADMIN)


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


def plan_members(client, plan_id: str) -> list[tuple[str, str]]:
    return [(m["name"], m["value"]) for m in client.get_usage_plan_keys(usagePlanId=plan_id)["items"]]


def test_create_puts_the_same_key_in_the_usage_plan_and_revoke_removes_it(gateway, database):
    client, plan_id = gateway
    keys = ApiGatewayKeys(plan_id, client)
    created = clients.create(database, ADMIN, "acme", registry=keys)
    assert plan_members(client, plan_id) == [("acme", created.api_key)]

    assert clients.revoke(database, ADMIN, "acme", "contract ended", registry=keys) == "acme"
    assert client.get_usage_plan_keys(usagePlanId=plan_id)["items"] == []
    assert client.get_api_keys()["items"] == []
    with pytest.raises(AdminError, match="no active client 'acme'"):
        clients.revoke(database, ADMIN, "acme", registry=keys)


def test_rotate_replaces_the_key_in_the_usage_plan(gateway, database):
    client, plan_id = gateway
    keys = ApiGatewayKeys(plan_id, client)
    created = clients.create(database, ADMIN, "acme", registry=keys)

    rotated = clients.rotate(database, ADMIN, str(created.id), "leaked in a log", registry=keys)

    assert rotated.api_key != created.api_key
    assert plan_members(client, plan_id) == [("acme", rotated.api_key)]


class PlanRefusingKeys:
    """API Gateway whose usage plan refuses new keys (e.g. a wrong CONVEYOR_USAGE_PLAN_ID)."""

    def __init__(self, client):
        self.client = client

    def __getattr__(self, name):
        return getattr(self.client, name)

    def create_usage_plan_key(self, **request):
        raise ClientError({"Error": {"Code": "NotFoundException", "Message": "Invalid Usage Plan ID"}},
                          "CreateUsagePlanKey")


def test_a_key_the_gateway_refuses_leaves_no_client_behind(gateway, database):
    client, _ = gateway
    with pytest.raises(AdminError, match=r"NotFoundException\); check CONVEYOR_USAGE_PLAN_ID=no-such-plan"):
        clients.create(database, ADMIN, "acme", registry=ApiGatewayKeys("no-such-plan", PlanRefusingKeys(client)))
    assert clients.list_clients(database, ADMIN) == []
    assert client.get_api_keys()["items"] == []  # the key made before the plan refused it is gone


def test_without_a_gateway_the_service_works_on_the_table_alone(database):
    created = clients.create(database, ADMIN, "local")
    clients.revoke(database, ADMIN, str(created.id))
    assert [c["revoked_at"] is not None for c in clients.list_clients(database, ADMIN)] == [True]
