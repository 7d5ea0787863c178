"""`conveyor deploy` against moto's server: every stack through change sets, with what moto models checked.

moto's CloudFormation skips resource types it does not model with only a warning and still reports the
stack complete. This test records each type it skipped, prints them and checks none of them.
"""
from __future__ import annotations

import ast
import json
import os
import re

import boto3
from botocore.exceptions import ClientError
import pytest
from moto.apigateway import models as apigateway_models
from moto.cloudformation import models as cloudformation_models
from moto.cloudformation import parsing as cloudformation_parsing
from moto.server import ThreadedMotoServer

from conveyor_tools.deploy.cloudformation import Timing
from conveyor_tools.deploy.plan import DeployError, read_template
from conveyor_tools.deploy.run import Deployment, destroy

REGION = "eu-west-1"
# moto's aurora-postgresql DBInstance raises inside moto (KeyError 'aurora-postgresql'); like the
# DBCluster, it is left unmodelled here and reported as not verified.
MOTO_CRASHES_ON = ("AWS::RDS::DBInstance",)


@pytest.fixture
def moto_endpoint(monkeypatch, tmp_path):
    skipped: set[str] = set()
    model_map = cloudformation_parsing.get_model_map()
    original_class_for = cloudformation_parsing.resource_class_from_type

    def class_for(resource_type):
        found = None if resource_type in MOTO_CRASHES_ON else original_class_for(resource_type)
        if found is None:
            skipped.add(resource_type)
        return found

    monkeypatch.setattr(cloudformation_parsing, "resource_class_from_type", class_for)
    original_apply = cloudformation_models.ChangeSet.apply

    def apply_and_refresh_outputs(change_set):
        # moto evaluates a stack's outputs when the change set is created, before its resources exist.
        original_apply(change_set)
        change_set.stack.template = change_set.template
        change_set.stack._parse_template()
        change_set.stack.output_map = change_set.stack._create_output_map()

    monkeypatch.setattr(cloudformation_models.ChangeSet, "apply", apply_and_refresh_outputs)
    original_rest_api = apigateway_models.RestAPI.create_from_cloudformation_json.__func__

    def rest_api_with_a_method(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        # moto ignores Body (and takes no swagger 2.0): one method, so that the Deployment can be created.
        api = original_rest_api(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        if "Body" in cloudformation_json["Properties"]:
            skipped.add("AWS::ApiGateway::RestApi Body (the routes and their API key requirement)")
            root = next(iter(api.resources))
            backend = apigateway_models.apigateway_backends[account_id][region_name]
            backend.put_method(api.id, root, "GET", "NONE")
            backend.put_integration(api.id, root, "GET", "MOCK", uri="", integration_method="GET")
        return api

    monkeypatch.setattr(apigateway_models.RestAPI, "create_from_cloudformation_json",
                        classmethod(rest_api_with_a_method))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name in [name for name in os.environ if name.startswith("AWS_ENDPOINT_URL_")]:
        monkeypatch.delenv(name)  # a service's own endpoint (another suite's local SQS, say) would win
    for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION,
                        "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    assert model_map is cloudformation_parsing.get_model_map()
    yield skipped
    server.stop()


class MotoDeployment(Deployment):
    """The real deployment; only the database stack's outputs are stand-ins (moto skips the cluster)."""

    STAND_INS = {
        "ClusterArn": f"arn:aws:rds:{REGION}:123456789012:cluster:conveyor-moto",
        "SecretArn": f"arn:aws:secretsmanager:{REGION}:123456789012:secret:rds!cluster-moto-AbCdEf",
        "Endpoint": "conveyor-moto.cluster-abc.eu-west-1.rds.amazonaws.com",
        "Port": "5432",
        "DatabaseName": "conveyor",
    }

    not_verified: set[str] = set()

    def _deploy_template(self, concern: str, **computed: str) -> None:
        if concern != "database":
            super()._deploy_template(concern, **computed)
            # Outputs of resources or attributes moto does not model: stand-ins, recorded as not verified.
            declared = re.findall(r"^  (\w+):$", read_template(concern).split("\nOutputs:", 1)[1], re.MULTILINE)
            for name in declared:
                if name not in self.outputs[concern]:
                    self.not_verified.add(f"{self.stage.stack_name(concern)} output {name} (stand-in)")
                    self.outputs[concern][name] = f"moto-stand-in-{name}"
            return None
        # moto cannot evaluate outputs of a resource it skipped: deploy the rest, outputs aside.
        template = read_template("database")
        template = template[:template.index("\nOutputs:")] + "\n"
        from conveyor_tools.deploy.plan import stack_parameters

        self._deployer().deploy(self.stage.stack_name("database"), template,
                                stack_parameters(self.stage, "database", self.output), self._tags())
        self.outputs["database"] = dict(self.STAND_INS)


def test_deploy_to_moto_then_destroy(moto_endpoint, tmp_path, capsys):
    session = boto3.session.Session(region_name=REGION)
    migrations = []
    said = []
    deployment = MotoDeployment("moto", session, tmp_path / "work", said.append,
                                timing=Timing(poll_seconds=0.05, stack_timeout_seconds=60),
                                migrate=lambda *target: migrations.append(target))
    result = deployment.run(image_tag="moto-test")

    cfn = session.client("cloudformation")
    stacks = {s["StackName"]: s["StackStatus"] for s in cfn.list_stacks()["StackSummaries"]}
    expected = [f"conveyor-moto-{c}" for c in
                ("network", "artifacts", "database", "queues", "service", "api", "worker", "api-access", "alarms")]
    assert all(stacks.get(name) == "CREATE_COMPLETE" for name in expected), stacks
    billing = session.client("cloudformation", region_name="us-east-1").describe_stacks(
        StackName="conveyor-moto-billing")["Stacks"][0]
    assert billing["StackStatus"] == "CREATE_COMPLETE"
    assert any(line.startswith("conveyor-moto-queues: create") for line in said)
    assert any("+ Add" in line and "OrdersQueue (AWS::SQS::Queue)" in line for line in said)

    # SQS: encrypted, redrive at 5 receives, visibility 6x the worker's 60 s
    sqs = session.client("sqs")
    queue_url = result.outputs["queues"]["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] == 5
    assert attributes["VisibilityTimeout"] == "360"
    assert attributes["SqsManagedSseEnabled"] == "true"

    # Lambda: the worker's event source mapping reports batch item failures; Lambdas outside any VPC
    lambda_client = session.client("lambda")
    worker_name = result.outputs["worker"]["HandleOrdersName"]
    mapping = lambda_client.list_event_source_mappings(FunctionName=worker_name)["EventSourceMappings"][0]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["EventSourceArn"].endswith(":conveyor-moto-orders")
    worker = lambda_client.get_function_configuration(FunctionName=worker_name)
    assert worker["Environment"]["Variables"]["ORDERS_QUEUE_NAME"] == "conveyor-moto-orders"
    assert not worker.get("VpcConfig", {}).get("SubnetIds")
    api_function = lambda_client.get_function_configuration(FunctionName=result.outputs["api"]["APIHandlerName"])
    assert api_function["Environment"]["Variables"]["ORDERS_QUEUE_URL"] == queue_url

    # IAM: the worker's role holds exactly the explicit policy
    iam = session.client("iam")
    role_name = worker["Role"].rsplit("/", 1)[1]
    policy_names = iam.list_role_policies(RoleName=role_name)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role_name, PolicyName=policy_names[0])["PolicyDocument"]
    if isinstance(document, str):  # moto stores a CloudFormation inline policy as Python's repr
        document = ast.literal_eval(document)
    actions = {a for s in document["Statement"] for a in s["Action"]}
    assert "sqs:ReceiveMessage" in actions and "rds-data:ExecuteStatement" in actions
    assert not any(a.endswith("*") for a in actions)

    # API Gateway: the Chalice API and its stage (moto's CloudFormation has no AWS::ApiGateway::UsagePlan;
    # tests/integration/test_api_keys.py checks keys joining a plan through the API)
    apigateway = session.client("apigateway")
    assert apigateway.get_rest_api(restApiId=result.outputs["api"]["RestAPIId"])["name"] == "conveyor-moto-api"

    # ECS: the console service on Fargate
    ecs = session.client("ecs")
    service = ecs.describe_services(cluster="conveyor-moto", services=["console"])["services"][0]
    task = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    container = task["containerDefinitions"][0]
    assert container["image"].endswith("/conveyor-moto-console:moto-test")
    environment = {e["name"]: e["value"] for e in container["environment"]}
    assert environment["DATABASE_SECRET_ARN"] == MotoDeployment.STAND_INS["SecretArn"]
    assert [s["name"] for s in container["secrets"]] == ["CONSOLE_ADMIN_TOKEN"]

    assert migrations == [(MotoDeployment.STAND_INS["ClusterArn"], MotoDeployment.STAND_INS["SecretArn"], "conveyor")]

    # A second deploy changes nothing.
    said.clear()
    deployment.run(image_tag="moto-test")
    assert sum(": no changes" in line for line in said) >= 8, said

    # moto leaves dependencies in the VPC it created (its CloudFormation does not delete them all),
    # so the network stack, deleted last, is refused; every stack above it goes.
    with pytest.raises(ClientError, match="DependencyViolation"):
        destroy("moto", session, said.append, timing=Timing(poll_seconds=0.05, stack_timeout_seconds=60))
    assert any("emptied the package bucket" in line for line in said)
    gone = {s["StackName"] for s in cfn.list_stacks()["StackSummaries"] if s["StackStatus"] == "DELETE_COMPLETE"}
    assert gone >= set(expected) - {"conveyor-moto-network"}
    assert session.client("cloudformation", region_name="us-east-1").list_stacks(
        StackStatusFilter=["CREATE_COMPLETE"])["StackSummaries"] == []
    deployment.not_verified.add("deleting the network stack (moto keeps VPC dependencies)")

    not_verified = sorted(moto_endpoint | deployment.not_verified | {"database stack outputs (stand-ins)", "migrations (moto runs no SQL)",
                                           "image build and push (no container engine)"})
    with capsys.disabled():
        print("\nmoto skipped or could not verify (NOT counted as passed):\n  " + "\n  ".join(not_verified))
    (tmp_path / "not-verified.json").write_text(json.dumps(not_verified))
    assert "AWS::RDS::DBCluster" in not_verified


def test_destroy_refuses_prod_without_force(moto_endpoint):
    with pytest.raises(DeployError, match="--force"):
        destroy("prod", boto3.session.Session(region_name=REGION), lambda text: None)
