"""cfn-lint on every template (Chalice's included) and parliament on every IAM policy, from a dry run."""
from __future__ import annotations

import gc
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from parliament import analyze_policy_string, enhance_finding

from conveyor_tools.deploy.plan import STACKS, WORKER_TIMEOUT_MULTIPLE, worker_timeout_seconds
from conveyor_tools.deploy.sam import expand

CFN_LINT = str(Path(sys.executable).parent / "cfn-lint")
SEVERITY_ABOVE_LOW = {"MEDIUM", "HIGH", "CRITICAL"}


def _templates(out: Path) -> list[Path]:
    return sorted((out / "templates").glob("*.yaml")) + sorted((out / "packages").glob("*/sam.json")) \
        + sorted((out / "packages").glob("*/template.json"))


def test_dry_run_writes_every_stack_parameter_policy_and_package(dry_run_out):
    plan = json.loads((dry_run_out / "plan.json").read_text())
    assert [entry["stack"] for entry in plan["stacks"]] == [f"conveyor-demo-{spec.concern}" for spec in STACKS]
    for entry in plan["stacks"]:
        assert (dry_run_out / entry["template"]).is_file()
        if "parameters" in entry:
            parameters = json.loads((dry_run_out / entry["parameters"]).read_text())
            assert {"ParameterKey": "Stage", "ParameterValue": "demo"} in parameters
    for app in ("api", "worker"):
        assert (dry_run_out / "packages" / app / "deployment.zip").stat().st_size > 0
        assert (dry_run_out / "policies" / f"{app}.json").is_file()
    billing = next(e for e in plan["stacks"] if e["stack"] == "conveyor-demo-billing")
    assert billing["region"] == "us-east-1"  # billing metrics live only there


def test_cfn_lint_is_clean_on_every_template(dry_run_out):
    templates = _templates(dry_run_out)
    assert len(templates) == 8 + 2 + 2
    result = subprocess.run([CFN_LINT, *map(str, templates)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_catches_a_broken_template(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("Resources:\n  Queue:\n    Type: AWS::SQS::Queue\n    Properties:\n      VisibilityTimeout: soon\n")
    result = subprocess.run([CFN_LINT, str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "E3012 'soon' is not of type 'integer'" in result.stdout


def _inline_policies(template: dict) -> list[tuple[str, dict]]:
    found = []
    for logical_id, resource in template.get("Resources", {}).items():
        if resource.get("Type") == "AWS::IAM::Role":
            for policy in resource["Properties"].get("Policies", []):
                found.append((f"{logical_id}/{policy['PolicyName']}", policy["PolicyDocument"]))
    return found


# What the references in service.yaml's policies resolve to, in the shape AWS gives them.
PLACEHOLDER_ARNS = {
    "RepositoryArn": "arn:aws:ecr:eu-west-1:123456789012:repository/conveyor-demo-console",
    "LogGroup.Arn": "arn:aws:logs:eu-west-1:123456789012:log-group:/conveyor/demo/console:*",
    "AdminToken": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:conveyor/demo/console-admin-token-AbCdEf",
    "DatabaseSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!cluster-0000-AbCdEf",
}
PLACEHOLDER_SUBSTITUTIONS = {"AWS::Partition": "aws", "ReportsBucketName": "conveyor-demo-reports"}


def _with_placeholders(document):
    """CloudFormation intrinsics in a policy, as the ARNs they resolve to (parliament reads only strings)."""
    if isinstance(document, dict):
        if "Fn::If" in document:  # the branch that grants more
            return _with_placeholders(document["Fn::If"][1])
        if "Ref" in document or "Fn::GetAtt" in document:
            return PLACEHOLDER_ARNS[document.get("Ref") or document.get("Fn::GetAtt")]
        if "Fn::Sub" in document:
            return re.sub(r"\$\{([^}]+)\}", lambda m: PLACEHOLDER_SUBSTITUTIONS[m.group(1)], document["Fn::Sub"])
        return {key: _with_placeholders(value) for key, value in document.items()}
    if isinstance(document, list):
        return [_with_placeholders(value) for value in document]
    return document


class _CfnLoader(yaml.SafeLoader):
    pass


_CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: {
    "Ref" if suffix == "Ref" else f"Fn::{suffix}": loader.construct_scalar(node)
    if isinstance(node, yaml.ScalarNode) else loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.SequenceNode) else loader.construct_mapping(node, deep=True)})


def _every_policy(out: Path) -> list[tuple[str, dict]]:
    policies = [(f"policies/{path.name}", json.loads(path.read_text())) for path in sorted((out / "policies").glob("*.json"))]
    for path in sorted((out / "templates").glob("*.yaml")):
        template = yaml.load(path.read_text(), Loader=_CfnLoader)
        policies += [(f"{path.name}:{name}", _with_placeholders(document))
                     for name, document in _inline_policies(template)]
    for path in sorted((out / "packages").glob("*/template.json")):
        policies += [(f"{path.parent.name}:{name}", document)
                     for name, document in _inline_policies(json.loads(path.read_text()))]
    return policies


def test_every_iam_policy_passes_parliament_with_nothing_above_low(dry_run_out):
    policies = _every_policy(dry_run_out)
    # the two Chalice policies, their copies in the Chalice roles, and the service's two task roles
    assert len(policies) == 6, [name for name, _ in policies]
    findings = {}
    for name, document in policies:
        serious = [f"{f.severity} {f.issue}: {f.detail}" for f in _findings(document)
                   if f.severity in SEVERITY_ABOVE_LOW]
        if serious:
            findings[name] = serious
    assert findings == {}


def _findings(document: dict) -> list:
    # analyze_policy_string leaves severities empty; enhance_finding reads them from parliament's config
    return [enhance_finding(finding) for finding in analyze_policy_string(json.dumps(document)).findings]


def test_parliament_flags_an_action_on_the_wrong_kind_of_resource():
    document = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "arn:aws:s3:::bucket/key"}]}
    assert {f.issue for f in _findings(document) if f.severity in SEVERITY_ABOVE_LOW} == {"RESOURCE_MISMATCH"}


def test_no_wildcard_actions_and_resource_star_only_for_xray_and_registry_login(dry_run_out):
    for name, document in _every_policy(dry_run_out):
        for statement in document["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert all("*" not in action for action in actions), (name, actions)
            if statement.get("Resource") == "*":
                assert set(actions) <= {"xray:PutTraceSegments", "xray:PutTelemetryRecords",
                                        "ecr:GetAuthorizationToken"}, (name, actions)


def test_queue_visibility_timeout_is_six_times_the_worker_timeout(dry_run_out):
    parameters = json.loads((dry_run_out / "parameters" / "conveyor-demo-queues.json").read_text())
    visibility = next(int(p["ParameterValue"]) for p in parameters if p["ParameterKey"] == "VisibilityTimeoutSeconds")
    assert visibility >= WORKER_TIMEOUT_MULTIPLE * worker_timeout_seconds("demo") > 0


def test_worker_mapping_reports_item_failures_at_concurrency_five_or_more_and_lambdas_stay_outside_the_vpc(dry_run_out):
    worker = json.loads((dry_run_out / "packages" / "worker" / "template.json").read_text())["Resources"]
    mapping = next(r for r in worker.values() if r["Type"] == "AWS::Lambda::EventSourceMapping")["Properties"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ScalingConfig"]["MaximumConcurrency"] >= 5
    api = json.loads((dry_run_out / "packages" / "api" / "template.json").read_text())["Resources"]
    for resources in (worker, api):
        for function in (r for r in resources.values() if r["Type"] == "AWS::Lambda::Function"):
            assert "VpcConfig" not in function["Properties"]
            assert function["Properties"]["TracingConfig"] == {"Mode": "Active"}


@pytest.mark.parametrize("route", ["/orders", "/orders/{order_id}", "/orders/{order_id}/cancel"])
def test_order_routes_require_an_api_key_and_the_stage_is_traced(dry_run_out, route):
    api = json.loads((dry_run_out / "packages" / "api" / "template.json").read_text())["Resources"]
    body = api["RestAPI"]["Properties"]["Body"]
    for method in body["paths"][route].values():
        assert method["security"] == [{"api_key": []}]
    stage = next(r for r in api.values() if r["Type"] == "AWS::ApiGateway::Stage")
    assert stage["Properties"]["TracingEnabled"] is True


def test_prod_keeps_deletion_protection_and_never_pauses():
    prod = json.loads((Path(__file__).resolve().parents[2] / "infra" / "stages" / "prod.json").read_text())
    assert prod["parameters"]["database"]["MinCapacity"] != "0"
    template = yaml.load((Path(__file__).resolve().parents[2] / "infra" / "database.yaml").read_text(),
                         Loader=_CfnLoader)
    cluster = template["Resources"]["Cluster"]
    assert cluster["DeletionPolicy"] == "Snapshot"
    assert cluster["Properties"]["DeletionProtection"] == {"Fn::If": ["IsProd", True, False]}
    assert cluster["Properties"]["EnableHttpEndpoint"] is True
    assert cluster["Properties"]["ManageMasterUserPassword"] is True


def test_expanding_a_sam_template_leaves_no_unpublished_metrics_warning(caplog):
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Transform": "AWS::Serverless-2016-10-31",
        "Resources": {"Handler": {"Type": "AWS::Serverless::Function", "Properties": {
            "Handler": "app.app", "Runtime": "python3.12", "CodeUri": "s3://bucket/key.zip",
            # An event source: the translator times its translation into a metrics cache.
            "Events": {"Tick": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 minute)"}}}}}},
    }
    with caplog.at_level(logging.WARNING):
        expanded = expand(template, "eu-west-1")
        expand(template, "eu-west-1")  # the translator keeps the last cache alive; this one replaces it
        gc.collect()  # a cache collected unpublished warns

    assert expanded["Resources"]["Handler"]["Type"] == "AWS::Lambda::Function"
    assert "unpublished" not in caplog.text
