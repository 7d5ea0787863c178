"""The deploy, its offline dry run, and the teardown of a stage."""
from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor_tools.deploy.cloudformation import Progress, StackDeployer, Timing, quiet_progress, template_json
from conveyor_tools.deploy.plan import (
    BILLING_REGION, CHALICE_APPS, STACKS, AwsContext, DeployError, Outputs, StageConfig, load_stage,
    merge_template, predicted_outputs, read_template, render_policy, stack_parameters, stage_settings,
)
from conveyor_tools.deploy.sam import expand, with_code_in_s3

Say = Callable[[str], None]
DRY_RUN_ACCOUNT = "123456789012"
# What a deploy step does that an endpoint may not model: the moto test lists these as not verified.
BuildImage = Callable[..., str]
Migrate = Callable[[str, str, str], None]
PackageApps = Callable[..., dict[str, Path]]


def _packager() -> PackageApps:
    from conveyor_tools.packaging import build_lambda_packages

    return build_lambda_packages


def migrate_through_data_api(cluster_arn: str, secret_arn: str, database: str) -> None:
    from conveyor.dataapi.migrations import upgrade_through_data_api

    upgrade_through_data_api(cluster_arn, secret_arn, database)


def _write_json(path: Path, document: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def _package_apps(stage: StageConfig, context: AwsContext, outputs: Outputs, work_dir: Path,
                  package: PackageApps, say: Say, packages_dir: Path | None = None) -> dict[str, Path]:
    settings = {}
    for app in CHALICE_APPS:
        policy_file = _write_json(work_dir / "policies" / f"{app}.json", render_policy(app, stage, context, outputs))
        settings[app] = stage_settings(app, outputs, policy_file)
    return package(packages_dir or work_dir / "packages", stage=stage.name, stage_settings=settings,
                   merge_templates={app: merge_template(app, stage) for app in CHALICE_APPS}, progress=say)


def package_offline(stage_name: str, out: Path, say: Say, *, region: str = "us-east-1") -> dict[str, Path]:
    """A stage's Lambda packages into out/APP as a dry run builds them: policies and environment from the
    outputs its stacks will have (`conveyor package`)."""
    stage = load_stage(stage_name, say)
    context = AwsContext(region=region, account_id=DRY_RUN_ACCOUNT)
    with tempfile.TemporaryDirectory(prefix="conveyor-policies-") as policies:
        return _package_apps(stage, context, predicted_outputs(stage, context), Path(policies), _packager(), say,
                             packages_dir=out)


def _code_key(stage: StageConfig, app: str, archive: Path) -> str:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:32]
    return f"{stage.name}/{app}/{digest}.zip"


def _parameter_file(parameters: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()]


def dry_run(stage_name: str, out: Path, say: Say, *, region: str = "us-east-1",
            package: PackageApps | None = None) -> dict[str, Any]:
    """Write every template, parameter file, policy and package for a stage to `out`; no AWS call."""
    out = out.resolve()  # the packages come back as absolute paths, and the manifest names them relative to it
    stage = load_stage(stage_name, say)
    context = AwsContext(region=region, account_id=DRY_RUN_ACCOUNT)
    outputs = predicted_outputs(stage, context)
    out.mkdir(parents=True, exist_ok=True)
    plan = []
    for spec in STACKS:
        stack_region = BILLING_REGION if spec.billing_region else region
        name = stage.stack_name(spec.concern)
        entry = {"stack": name, "region": stack_region}
        if spec.template:
            template = out / "templates" / spec.template
            template.parent.mkdir(parents=True, exist_ok=True)
            template.write_text(read_template(spec.concern))
            computed = {"ImageTag": "<built at deploy time>"} if spec.concern == "service" else {}
            parameters = _write_json(out / "parameters" / f"{name}.json",
                                     _parameter_file(stack_parameters(stage, spec.concern, outputs, **computed)))
            entry.update(template=str(template.relative_to(out)), parameters=str(parameters.relative_to(out)))
        plan.append(entry)
    packages = _package_apps(stage, context, outputs, out, package or _packager(), say)
    bucket = outputs("artifacts", "PackagesBucketName")
    for app, directory in packages.items():
        sam = json.loads((directory / "sam.json").read_text())
        key = _code_key(stage, app, directory / "deployment.zip")
        expanded = expand(with_code_in_s3(sam, "conveyor-packages-bucket", key), region)
        (directory / "template.json").write_text(template_json(expanded))
        entry = next(e for e in plan if e["stack"] == stage.stack_name(app))
        entry.update(template=str((directory / "template.json").relative_to(out)),
                     package=str((directory / "deployment.zip").relative_to(out)), code=f"s3://{bucket}/{key}")
    _write_json(out / "plan.json", {"stage": stage.name, "region": region, "stacks": plan})
    say(f"wrote {len(plan)} stacks' templates, parameters, 2 policies and 2 packages to {out}")
    return {"stage": stage.name, "stacks": plan}


@dataclass(frozen=True)
class DeployResult:
    outputs: Mapping[str, Mapping[str, str]]
    api_url: str
    console_url: str
    usage_plan_id: str


class Deployment:
    """Deploys one stage, stack after stack, each through a change set."""

    def __init__(self, stage_name: str, session, work_dir: Path, say: Say, *, progress: Progress = quiet_progress,
                 timing: Timing | None = None, build_image: BuildImage | None = None, migrate: Migrate | None = None,
                 package: PackageApps | None = None):
        if not session.region_name:
            raise DeployError("no AWS region: set AWS_REGION (e.g. export AWS_REGION=eu-west-1)")
        self.stage = load_stage(stage_name, say)
        self.session = session
        self.work_dir = work_dir
        self.say = say
        self.progress = progress
        self.timing = timing or Timing()
        self.build_image = build_image
        self.migrate = migrate or migrate_through_data_api
        self.package = package or _packager()
        self.outputs: dict[str, dict[str, str]] = {}

    def output(self, concern: str, name: str) -> str:
        try:
            return self.outputs[concern][name]
        except KeyError:
            raise DeployError(f"{self.stage.stack_name(concern)} has no output {name}; deploy it again") from None

    def _deployer(self, billing_region: bool = False) -> StackDeployer:
        region = BILLING_REGION if billing_region else self.session.region_name
        return StackDeployer(self.session.client("cloudformation", region_name=region), self.say,
                             self.progress, self.timing)

    def _deploy_template(self, concern: str, **computed: str) -> None:
        spec = next(s for s in STACKS if s.concern == concern)
        parameters = stack_parameters(self.stage, concern, self.output, **computed)
        self.outputs[concern] = self._deployer(spec.billing_region).deploy(
            self.stage.stack_name(concern), read_template(concern), parameters, self._tags())

    def _tags(self) -> dict[str, str]:
        return {"application": "conveyor", "stage": self.stage.name}

    def run(self, image_tag: str | None = None) -> DeployResult:
        identity = self.session.client("sts").get_caller_identity()
        context = AwsContext(region=self.session.region_name, account_id=identity["Account"],
                             partition=identity["Arn"].split(":")[1])
        self.say(f"deploying stage {self.stage.name} to account {context.account_id} in {context.region}")
        for concern in ("network", "artifacts", "database", "queues"):
            self._deploy_template(concern)
        tag = image_tag or self._image()
        self._deploy_template("service", ImageTag=tag)
        self._deploy_apps(context)
        self._deploy_template("api-access")
        self._deploy_template("alarms")
        self._deploy_template("billing")
        self.say("applying database migrations through the Data API")
        self.migrate(self.output("database", "ClusterArn"), self.output("database", "SecretArn"),
                     self.output("database", "DatabaseName"))
        return DeployResult(self.outputs, self.output("api", "EndpointURL"), self.output("service", "ConsoleUrl"),
                            self.output("api-access", "UsagePlanId"))

    def _image(self) -> str:
        from conveyor_tools.deploy.image import build_and_push

        build = self.build_image or build_and_push
        return build(self.session.client("ecr"), self.output("artifacts", "RepositoryUri"),
                     self.output("artifacts", "RepositoryName"), self.say)

    def _deploy_apps(self, context: AwsContext) -> None:
        packages = _package_apps(self.stage, context, self.output, self.work_dir, self.package, self.say)
        s3 = self.session.client("s3")
        bucket = self.output("artifacts", "PackagesBucketName")
        for app in CHALICE_APPS:
            directory = packages[app]
            key = _code_key(self.stage, app, directory / "deployment.zip")
            s3.upload_file(str(directory / "deployment.zip"), bucket, key)
            sam = json.loads((directory / "sam.json").read_text())
            template = expand(with_code_in_s3(sam, bucket, key), context.region)
            (directory / "template.json").write_text(template_json(template))
            self.outputs[app] = self._deployer().deploy(self.stage.stack_name(app), template_json(template), {},
                                                        self._tags())


def first_client_instructions(stage: StageConfig, result: DeployResult, region: str) -> str:
    database = result.outputs["database"]
    return "\n".join([
        f"API:     {result.api_url}",
        f"console: {result.console_url}  (its admin token: aws secretsmanager get-secret-value"
        f" --secret-id {result.outputs['service'].get('AdminTokenSecretArn', '?')} --query SecretString --output text)",
        "Create the first client (prints its API key once, on the last line):",
        f"  export AWS_REGION={region} CONVEYOR_USAGE_PLAN_ID={result.usage_plan_id} \\",
        f"    DATA_API_RESOURCE_ARN={database['ClusterArn']} \\",
        f"    DATA_API_SECRET_ARN={database['SecretArn']} DATA_API_DATABASE={database['DatabaseName']}",
        "  conveyor clients create NAME",
        f"  curl -sS {result.api_url.rstrip('/')}/orders -H \"X-Api-Key: $KEY\"",
    ])


def stage_to_destroy(stage_name: str, force: bool, say: Say) -> StageConfig:
    stage = load_stage(stage_name, say)
    if stage.is_prod and not force:
        raise DeployError("destroying prod deletes its API, queues and service for good: pass --force."
                          " Its database is deleted after a final snapshot.")
    return stage


def destroy(stage_name: str, session, say: Say, *, force: bool = False, progress: Progress = quiet_progress,
            timing: Timing | None = None) -> list[str]:
    """Delete a stage's stacks, newest first; returns the stacks deleted. Prod's database leaves a snapshot."""
    stage = stage_to_destroy(stage_name, force, say)
    if not session.region_name:
        raise DeployError("no AWS region: set AWS_REGION to the stage's region")
    deleted = []
    for spec in reversed(STACKS):
        region = BILLING_REGION if spec.billing_region else session.region_name
        cfn = session.client("cloudformation", region_name=region)
        name = stage.stack_name(spec.concern)
        if spec.concern == "artifacts":
            _empty_packages_bucket(session, cfn, name, say)
        if spec.concern == "database" and stage.is_prod:
            _lift_deletion_protection(session, stage, say)
        if StackDeployer(cfn, say, progress, timing or Timing()).delete(name):
            deleted.append(name)
            say(f"{name}: deleted")
    if any(name.endswith("-database") for name in deleted):
        say(f"the database left a final snapshot: aws rds describe-db-cluster-snapshots"
            f" --db-cluster-identifier conveyor-{stage.name}")
    return deleted


def _empty_packages_bucket(session, cfn, stack: str, say: Say) -> None:
    from conveyor_tools.deploy.cloudformation import stack_outputs, stack_status

    if stack_status(cfn, stack) is None:
        return
    bucket = stack_outputs(cfn, stack).get("PackagesBucketName")
    if not bucket:
        return
    s3 = session.client("s3")
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        objects = [{"Key": o["Key"], "VersionId": o["VersionId"]}
                   for o in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if objects:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
    say(f"emptied the package bucket {bucket}")


def _lift_deletion_protection(session, stage: StageConfig, say: Say) -> None:
    from botocore.exceptions import ClientError

    try:
        session.client("rds").modify_db_cluster(DBClusterIdentifier=f"conveyor-{stage.name}",
                                                DeletionProtection=False, ApplyImmediately=True)
        say(f"lifted deletion protection from conveyor-{stage.name}; CloudFormation snapshots it before deleting")
    except ClientError as exc:
        if "DBClusterNotFound" not in str(exc):
            raise
