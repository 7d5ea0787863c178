"""The change-set flow's answers on a stack that fails or has nothing to change (a scripted CloudFormation)."""
from __future__ import annotations

from datetime import datetime, UTC

import pytest

from conveyor_tools.deploy.cloudformation import StackDeployer, Timing, describe_change
from conveyor_tools.deploy.plan import DeployError


class ScriptedCloudFormation:
    """Answers like CloudFormation for one stack whose update rolls back."""

    def __init__(self, change_set_status="CREATE_COMPLETE", reason="", final="UPDATE_ROLLBACK_COMPLETE"):
        self.statuses = ["UPDATE_COMPLETE", "UPDATE_IN_PROGRESS", final, final]
        self.change_set_status, self.reason = change_set_status, reason
        self.calls = []

    def describe_stacks(self, StackName):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"Stacks": [{"StackStatus": status, "Outputs": [{"OutputKey": "QueueUrl", "OutputValue": "q"}]}]}

    def create_change_set(self, **request):
        self.calls.append(("create_change_set", request))

    def describe_change_set(self, **request):
        return {"Status": self.change_set_status, "StatusReason": self.reason, "Changes": [
            {"ResourceChange": {"Action": "Modify", "LogicalResourceId": "OrdersQueue", "ResourceType": "AWS::SQS::Queue",
                                "Replacement": "False", "Details": [{"Target": {"Name": "VisibilityTimeout"}}]}}]}

    def delete_change_set(self, **request):
        self.calls.append(("delete_change_set", request))

    def execute_change_set(self, **request):
        self.calls.append(("execute_change_set", request))

    def get_paginator(self, name):
        now = datetime.now(UTC)

        class Pages:
            def paginate(self, StackName):
                yield {"StackEvents": [
                    {"Timestamp": now, "ResourceStatus": "UPDATE_FAILED", "LogicalResourceId": "OrdersQueue",
                     "ResourceType": "AWS::SQS::Queue", "ResourceStatusReason": "Invalid value for VisibilityTimeout"},
                    {"Timestamp": now, "ResourceStatus": "UPDATE_COMPLETE", "LogicalResourceId": "Other",
                     "ResourceType": "AWS::SQS::Queue"}]}

        return Pages()


def test_a_failed_update_names_the_failing_resource_and_its_reason():
    said = []
    deployer = StackDeployer(ScriptedCloudFormation(), said.append, timing=Timing(poll_seconds=0))
    with pytest.raises(DeployError) as raised:
        deployer.deploy("conveyor-dev-queues", "{}", {"Stage": "dev"})
    message = str(raised.value)
    assert "ended in UPDATE_ROLLBACK_COMPLETE" in message
    assert "OrdersQueue (AWS::SQS::Queue): UPDATE_FAILED Invalid value for VisibilityTimeout" in message
    assert "Other" not in message
    assert "    ~ Modify  OrdersQueue (AWS::SQS::Queue): VisibilityTimeout" in said


def test_a_change_set_without_changes_is_dropped_and_the_outputs_returned():
    cloudformation = ScriptedCloudFormation(change_set_status="FAILED",
                                            reason="The submitted information didn't contain changes.")
    said = []
    outputs = StackDeployer(cloudformation, said.append, timing=Timing(poll_seconds=0)).deploy(
        "conveyor-dev-queues", "{}", {})
    assert outputs == {"QueueUrl": "q"}
    assert said == ["conveyor-dev-queues: no changes"]
    assert [name for name, _ in cloudformation.calls] == ["create_change_set", "delete_change_set"]


def test_a_refused_change_set_says_why():
    cloudformation = ScriptedCloudFormation(change_set_status="FAILED", reason="Parameter Stage is required")
    with pytest.raises(DeployError, match="refused the change set: Parameter Stage is required"):
        StackDeployer(cloudformation, lambda text: None, timing=Timing(poll_seconds=0)).deploy("s", "{}", {})


def test_a_replacement_is_called_out_in_the_diff():
    change = {"ResourceChange": {"Action": "Modify", "LogicalResourceId": "Cluster", "ResourceType": "AWS::RDS::DBCluster",
                                 "Replacement": "True", "Details": [{"Target": {"Name": "DBClusterIdentifier"}}]}}
    assert describe_change(change).endswith("DBClusterIdentifier - REPLACES the resource")
