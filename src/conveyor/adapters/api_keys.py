"""Clients' API keys in API Gateway: each key joins the usage plan that throttles it."""
from __future__ import annotations

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from conveyor.services.admin import AdminError


class ApiGatewayKeys:
    """The ApiKeyRegistry port on API Gateway; boto3 finds a local endpoint through AWS_ENDPOINT_URL."""

    def __init__(self, usage_plan_id: str, client=None):
        self.usage_plan_id = usage_plan_id
        self.client = client or boto3.session.Session().client("apigateway")

    def register(self, name: str, api_key: str) -> None:
        try:
            key = self.client.create_api_key(name=name, value=api_key, enabled=True,
                                             description=f"Conveyor client {name}")
            try:
                self.client.create_usage_plan_key(usagePlanId=self.usage_plan_id, keyId=key["id"], keyType="API_KEY")
            except (ClientError, BotoCoreError):
                self.client.delete_api_key(apiKey=key["id"])
                raise
        except (ClientError, BotoCoreError) as exc:
            raise AdminError(f"API Gateway did not take the key for {name!r} ({_reason(exc)}); check"
                             f" CONVEYOR_USAGE_PLAN_ID={self.usage_plan_id} and your credentials, then retry") from None

    def revoke(self, name: str) -> int:
        try:
            keys = self.client.get_api_keys(nameQuery=name, limit=500)["items"]
            matching = [key for key in keys if key["name"] == name]
            for key in matching:
                self.client.delete_usage_plan_key(usagePlanId=self.usage_plan_id, keyId=key["id"])
                self.client.delete_api_key(apiKey=key["id"])
            return len(matching)
        except (ClientError, BotoCoreError) as exc:
            raise AdminError(f"API Gateway did not delete the key of {name!r} ({_reason(exc)}); retry") from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code", "error")
    return type(exc).__name__
