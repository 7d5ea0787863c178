"""What a stage is made of: its stacks in order, their parameters, the Chalice apps' settings and policies.

Everything here is computed from the stage file (infra/stages/STAGE.json) and the outputs of stacks
deployed before; it calls no AWS API, so `--dry-run` and a real deploy share it.
"""
from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
BILLING_REGION = "us-east-1"  # billing metrics exist only there
WORKER_TIMEOUT_MULTIPLE = 6  # SQS visibility timeout >= 6x the function timeout (Lambda's guidance)
API_STAGE = "api"


class DeployError(RuntimeError):
    """A deploy or destroy step failed; the message says what to do next."""


def repository_root() -> Path:
    return Path(__file__).resolve().parents[3]


def infra_dir() -> Path:
    return repository_root() / "infra"


@dataclass(frozen=True)
class StackSpec:
    concern: str
    template: str | None  # a file in infra/, or None for a Chalice app's generated template
    # parameter name -> (concern of an earlier stack, its output)
    inputs: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    billing_region: bool = False


# In deploy order; destroy goes backwards.
STACKS: tuple[StackSpec, ...] = (
    StackSpec("network", "network.yaml"),
    StackSpec("artifacts", "artifacts.yaml"),
    StackSpec("database", "database.yaml", {
        "PrivateSubnetIds": ("network", "PrivateSubnetIds"),
        "DatabaseSecurityGroupId": ("network", "DatabaseSecurityGroupId"),
    }),
    StackSpec("queues", "queues.yaml"),
    StackSpec("service", "service.yaml", {
        "VpcId": ("network", "VpcId"),
        "PrivateSubnetIds": ("network", "PrivateSubnetIds"),
        "PublicSubnetIds": ("network", "PublicSubnetIds"),
        "LoadBalancerSecurityGroupId": ("network", "LoadBalancerSecurityGroupId"),
        "ServiceSecurityGroupId": ("network", "ServiceSecurityGroupId"),
        "RepositoryUri": ("artifacts", "RepositoryUri"),
        "RepositoryArn": ("artifacts", "RepositoryArn"),
        "DatabaseSecretArn": ("database", "SecretArn"),
        "DatabaseHost": ("database", "Endpoint"),
        "DatabasePort": ("database", "Port"),
        "DatabaseName": ("database", "DatabaseName"),
    }),
    StackSpec("api", None),
    StackSpec("worker", None),
    StackSpec("api-access", "api-access.yaml", {"RestApiId": ("api", "RestAPIId")}),
    StackSpec("alarms", "alarms.yaml", {
        "QueueName": ("queues", "QueueName"),
        "DeadLetterQueueName": ("queues", "DeadLetterQueueName"),
        "WorkerFunctionName": ("worker", "HandleOrdersName"),
        "ApiName": ("api", "RestApiName"),
        "LoadBalancerFullName": ("service", "LoadBalancerFullName"),
        "TargetGroupFullName": ("service", "TargetGroupFullName"),
    }),
    StackSpec("billing", "billing.yaml", billing_region=True),
)
SPECS = {spec.concern: spec for spec in STACKS}
CHALICE_APPS = ("api", "worker")

Outputs = Callable[[str, str], str]  # (concern, output name) -> value


@dataclass(frozen=True)
class StageConfig:
    name: str
    parameters: Mapping[str, Mapping[str, str]]
    monthly_budget_usd: int
    alarm_email: str
    source: Path

    @property
    def is_prod(self) -> bool:
        return self.name == "prod"

    def stack_name(self, concern: str) -> str:
        return f"conveyor-{self.name}-{concern}"


def load_stage(name: str, say: Callable[[str], None] = lambda text: None) -> StageConfig:
    """infra/stages/NAME.json, or the dev settings for a stage that has no file of its own."""
    if not STAGE_NAME.match(name):
        raise DeployError(f"stage {name!r}: use 1 to 20 lowercase letters, digits or '-', starting with a letter")
    path = infra_dir() / "stages" / f"{name}.json"
    if not path.is_file():
        if name == "prod":
            raise DeployError(f"{path} is missing: prod needs its own settings; restore it from git")
        say(f"no {path.relative_to(repository_root())}: stage {name} uses infra/stages/dev.json"
            f" (copy it to {path.name} to change its settings)")
        path = infra_dir() / "stages" / "dev.json"
    try:
        document = json.loads(path.read_text())
        parameters = {concern: {key: str(value) for key, value in values.items()}
                      for concern, values in document["parameters"].items()}
        budget = int(document["monthly_budget_usd"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DeployError(f"{path} is not a valid stage file ({type(exc).__name__}: {exc});"
                          " compare it with infra/stages/dev.json") from None
    unknown = set(parameters) - set(SPECS)
    if unknown:
        raise DeployError(f"{path}: unknown stack(s) {', '.join(sorted(unknown))}; known: {', '.join(SPECS)}")
    return StageConfig(name, parameters, budget, str(document.get("alarm_email", "")), path)


def chalice_config(app: str) -> dict[str, Any]:
    return json.loads((repository_root() / app / ".chalice" / "config.json").read_text())


def worker_timeout_seconds(stage: str) -> int:
    config = chalice_config("worker")
    return int(config.get("stages", {}).get(stage, {}).get("lambda_timeout", config.get("lambda_timeout", 60)))


def stack_parameters(stage: StageConfig, concern: str, outputs: Outputs, **computed: str) -> dict[str, str]:
    """A stack's parameters: its stage, the stage file's values, earlier stacks' outputs, computed values."""
    spec = SPECS[concern]
    values = {"Stage": stage.name, **stage.parameters.get(concern, {})}
    values.update({name: outputs(source, output) for name, (source, output) in spec.inputs.items()})
    if concern == "queues":
        values["VisibilityTimeoutSeconds"] = str(WORKER_TIMEOUT_MULTIPLE * worker_timeout_seconds(stage.name))
    if concern == "alarms":
        values.setdefault("AlarmEmail", stage.alarm_email)
    if concern == "billing":
        values.update(MonthlyBudgetUsd=str(stage.monthly_budget_usd), AlarmEmail=stage.alarm_email)
    values.update(computed)
    return values


def read_template(concern: str) -> str:
    template = SPECS[concern].template
    if template is None:
        raise DeployError(f"{concern} is a Chalice app: its template comes from chalice package")
    return (infra_dir() / template).read_text()


@dataclass(frozen=True)
class AwsContext:
    region: str
    account_id: str
    partition: str = "aws"


def render_policy(app: str, stage: StageConfig, context: AwsContext, outputs: Outputs) -> dict[str, Any]:
    """infra/policies/APP.json with this stage's resources filled in."""
    values = {
        "OrdersQueueArn": outputs("queues", "QueueArn"),
        "ClusterArn": outputs("database", "ClusterArn"),
        "DatabaseSecretArn": outputs("database", "SecretArn"),
        "Partition": context.partition,
        "Region": context.region,
        "AccountId": context.account_id,
        # SAM names a function STACK-LOGICALID-SUFFIX: the stack name scopes its log group.
        "FunctionPrefix": f"{stage.stack_name(app)}-",
    }
    text = (infra_dir() / "policies" / f"{app}.json").read_text()
    return json.loads(string.Template(text).substitute(values))


def stage_settings(app: str, outputs: Outputs, policy_file: Path) -> dict[str, Any]:
    """What `chalice package` needs per stage: the environment from the stacks' outputs and the policy."""
    environment = {
        "DATA_API_RESOURCE_ARN": outputs("database", "ClusterArn"),
        "DATA_API_SECRET_ARN": outputs("database", "SecretArn"),
        "DATA_API_DATABASE": outputs("database", "DatabaseName"),
    }
    if app == "api":
        environment["ORDERS_QUEUE_URL"] = outputs("queues", "QueueUrl")
    else:  # read when chalice package imports the app: the event source's queue
        environment["ORDERS_QUEUE_NAME"] = outputs("queues", "QueueName")
    return {"environment_variables": environment, "iam_policy_file": str(policy_file.resolve()),
            "autogen_policy": False, "xray": True}


def merge_template(app: str, stage: StageConfig) -> dict[str, Any]:
    """Per-stage additions to the Chalice template (the committed .chalice/merge-template.json comes first)."""
    if app == "api":
        name = f"conveyor-{stage.name}-api"  # the 5xx alarm's ApiName; unique per stage
        return {
            "Resources": {"RestAPI": {"Properties": {"Name": name, "TracingEnabled": True}}},
            "Outputs": {"RestApiName": {"Value": name}},
        }
    return {"Outputs": {"HandleOrdersName": {"Value": {"Ref": "HandleOrders"}}}}


def predicted_outputs(stage: StageConfig, context: AwsContext) -> Outputs:
    """Outputs as a dry run shows them: real names where the templates fix them, placeholders elsewhere."""
    region, account, partition = context.region, context.account_id, context.partition
    known = {
        ("queues", "QueueName"): f"conveyor-{stage.name}-orders",
        ("queues", "QueueArn"): f"arn:{partition}:sqs:{region}:{account}:conveyor-{stage.name}-orders",
        ("queues", "QueueUrl"): f"https://sqs.{region}.amazonaws.com/{account}/conveyor-{stage.name}-orders",
        ("queues", "DeadLetterQueueName"): f"conveyor-{stage.name}-orders-dlq",
        ("database", "ClusterArn"): f"arn:{partition}:rds:{region}:{account}:cluster:conveyor-{stage.name}",
        ("database", "SecretArn"):
            f"arn:{partition}:secretsmanager:{region}:{account}:secret:rds!cluster-00000000-0000-0000-0000-000000000000-AbCdEf",
        ("database", "DatabaseName"): stage.parameters.get("database", {}).get("DatabaseName", "conveyor"),
        ("database", "Port"): "5432",
        ("artifacts", "RepositoryUri"): f"{account}.dkr.ecr.{region}.amazonaws.com/conveyor-{stage.name}-console",
        ("artifacts", "RepositoryArn"): f"arn:{partition}:ecr:{region}:{account}:repository/conveyor-{stage.name}-console",
        ("api", "RestApiName"): f"conveyor-{stage.name}-api",
    }

    def outputs(concern: str, name: str) -> str:
        return known.get((concern, name), f"<{stage.stack_name(concern)} output {name}>")

    return outputs
