"""Chalice's SAM template as plain CloudFormation: the code in S3, the SAM transform done here.

Expanding here rather than in CloudFormation means the template that is linted offline is the one
deployed, and it deploys to endpoints that have no SAM transform (moto's server in the tests).
"""
from __future__ import annotations

import copy
from typing import Any

import boto3
from samtranslator.metrics.metrics import DummyMetricsPublisher, Metrics
from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

from conveyor_tools.deploy.plan import DeployError


def with_code_in_s3(sam_template: dict[str, Any], bucket: str, key: str) -> dict[str, Any]:
    """The template with every function's CodeUri pointing at s3://bucket/key."""
    template = copy.deepcopy(sam_template)
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = f"s3://{bucket}/{key}"
    return template


def expand(sam_template: dict[str, Any], region: str) -> dict[str, Any]:
    """Translate AWS::Serverless-2016-10-31 resources into CloudFormation ones (offline: no AWS call)."""
    # The translator times itself into a metrics cache; its default publisher discards them, and a
    # cache left unpublished warns on stderr when collected.
    metrics = Metrics("ServerlessTransform", DummyMetricsPublisher())
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region), metrics=metrics)
    try:
        # Chalice's templates name no managed policy, so the policy map (an IAM call) is never needed.
        return translator.translate(copy.deepcopy(sam_template), parameter_values={},
                                    get_managed_policy_map=lambda: {})
    except InvalidDocumentException as exc:
        reasons = "; ".join(str(cause) for cause in exc.causes)
        raise DeployError(f"the Chalice template does not translate: {reasons}. Check the merge templates"
                          " (worker/.chalice/merge-template.json, conveyor_tools/deploy/plan.py)") from None
    finally:
        metrics.publish()
