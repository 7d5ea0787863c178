"""Create or update a stack through a change set: show the diff, wait with progress, explain a failure."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from conveyor_tools.deploy.plan import DeployError

MAX_TEMPLATE_BODY_BYTES = 51_200  # larger templates must come from S3
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
ACTION_MARKS = {"Add": "+", "Modify": "~", "Remove": "-", "Import": ">", "Dynamic": "?"}


@dataclass(frozen=True)
class Timing:
    poll_seconds: float = 5.0
    stack_timeout_seconds: float = 3600.0  # an Aurora cluster takes 10-15 minutes; a big update longer


Say = Callable[[str], None]
# (description) -> context manager yielding update(text): the CLI shows a spinner, tests record.
Progress = Callable[[str], Any]


@contextmanager
def quiet_progress(description: str) -> Iterator[Callable[[str], None]]:
    yield lambda text: None


def stack_status(cfn, name: str) -> str | None:
    try:
        return cfn.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise


def stack_outputs(cfn, name: str) -> dict[str, str]:
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


def describe_change(change: Mapping[str, Any]) -> str:
    """One line of a change set's diff, e.g. '~ Modify  TaskDefinition (AWS::ECS::TaskDefinition) replaces it'."""
    detail = change["ResourceChange"]
    action = detail["Action"]
    line = f"{ACTION_MARKS.get(action, '?')} {action:<7} {detail['LogicalResourceId']} ({detail.get('ResourceType', '?')})"
    replacement = detail.get("Replacement")
    if action == "Modify":
        changed = sorted({d.get("Target", {}).get("Name") or d.get("Target", {}).get("Attribute", "?")
                          for d in detail.get("Details", [])} - {None})
        if changed:
            line += f": {', '.join(changed)}"
        if replacement == "True":
            line += " - REPLACES the resource"
        elif replacement == "Conditional":
            line += " - may replace the resource"
    return line


def failure_events(cfn, name: str, since: float) -> list[str]:
    """The stack's *_FAILED events since a time, oldest first, as 'LogicalId (Type): reason'."""
    lines = []
    for page in cfn.get_paginator("describe_stack_events").paginate(StackName=name):
        for event in page["StackEvents"]:
            if event["Timestamp"].timestamp() < since - 1:
                return list(reversed(lines))
            if event["ResourceStatus"].endswith("FAILED"):
                lines.append(f"{event['LogicalResourceId']} ({event['ResourceType']}): "
                             f"{event['ResourceStatus']} {event.get('ResourceStatusReason', '')}".rstrip())
    return list(reversed(lines))


class StackDeployer:
    def __init__(self, cfn, say: Say, progress: Progress = quiet_progress, timing: Timing = Timing(),
                 upload_template: Callable[[str, str], str] | None = None):
        self.cfn = cfn
        self.say = say
        self.progress = progress
        self.timing = timing
        self.upload_template = upload_template  # (stack name, body) -> an S3 URL, for large templates

    def deploy(self, name: str, template_body: str, parameters: Mapping[str, str],
               tags: Mapping[str, str] | None = None) -> dict[str, str]:
        """Create or update `name`; returns its outputs. Raises DeployError with the failing events."""
        status = stack_status(self.cfn, name)
        if status == "ROLLBACK_COMPLETE":  # a first create that failed cannot be updated
            self.say(f"{name}: its first creation failed and rolled back; deleting it to try again")
            self.delete(name)
            status = None
        elif status and status.endswith("_IN_PROGRESS"):
            raise DeployError(f"{name} is busy ({status}); wait for it to finish and run the command again")
        change_set_type = "UPDATE" if status else "CREATE"
        change_set = f"conveyor-{uuid.uuid4().hex[:12]}"
        request: dict[str, Any] = {
            "StackName": name, "ChangeSetName": change_set, "ChangeSetType": change_set_type,
            "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
            "Capabilities": CAPABILITIES,
            "Tags": [{"Key": k, "Value": v} for k, v in (tags or {}).items()],
        }
        if len(template_body.encode()) > MAX_TEMPLATE_BODY_BYTES and self.upload_template:
            request["TemplateURL"] = self.upload_template(name, template_body)
        else:
            request["TemplateBody"] = template_body
        self.cfn.create_change_set(**request)
        described = self._wait_for_change_set(name, change_set)
        if described["Status"] == "FAILED":
            reason = described.get("StatusReason", "")
            self.cfn.delete_change_set(StackName=name, ChangeSetName=change_set)
            if any(text in reason for text in NO_CHANGES):
                self.say(f"{name}: no changes")
                return stack_outputs(self.cfn, name)
            raise DeployError(f"{name}: CloudFormation refused the change set: {reason}")
        changes = described.get("Changes", [])
        self.say(f"{name}: {'create' if change_set_type == 'CREATE' else 'update'}, {len(changes)} change(s)")
        for change in changes:
            self.say("    " + describe_change(change))
        started = time.time()
        self.cfn.execute_change_set(StackName=name, ChangeSetName=change_set)
        final = self._wait_for_stack(name, f"{name}: applying {len(changes)} change(s)")
        if final not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
            raise DeployError(self._failure(name, final, started))
        return stack_outputs(self.cfn, name)

    def delete(self, name: str) -> bool:
        """Delete a stack and wait; False when there was none."""
        if stack_status(self.cfn, name) is None:
            return False
        started = time.time()
        self.cfn.delete_stack(StackName=name)
        final = self._wait_for_stack(name, f"{name}: deleting")
        if final not in (None, "DELETE_COMPLETE"):
            raise DeployError(self._failure(name, final, started))
        return True

    def _failure(self, name: str, status: str, since: float) -> str:
        events = failure_events(self.cfn, name, since)
        listed = "\n".join(f"    {line}" for line in events) or "    (no failed resource events)"
        return (f"{name} ended in {status}. Failing resources:\n{listed}\n"
                "Fix the cause above and run the command again; the stack kept its last working state.")

    def _wait_for_change_set(self, name: str, change_set: str) -> dict[str, Any]:
        deadline = time.monotonic() + 300
        while True:
            described = self.cfn.describe_change_set(StackName=name, ChangeSetName=change_set)
            if described["Status"] in ("CREATE_COMPLETE", "FAILED"):
                changes = list(described.get("Changes", []))
                while described.get("NextToken"):
                    described = self.cfn.describe_change_set(StackName=name, ChangeSetName=change_set,
                                                             NextToken=described["NextToken"])
                    changes += described.get("Changes", [])
                return {**described, "Changes": changes}
            if time.monotonic() > deadline:
                raise DeployError(f"{name}: the change set was not ready within 5 minutes; run the command again")
            time.sleep(self.timing.poll_seconds)

    def _wait_for_stack(self, name: str, description: str) -> str | None:
        deadline = time.monotonic() + self.timing.stack_timeout_seconds
        started = time.monotonic()
        with self.progress(description) as update:
            while True:
                status = stack_status(self.cfn, name)
                if status is None or not status.endswith("_IN_PROGRESS"):
                    return status
                update(f"{description}: {status} ({time.monotonic() - started:.0f} s)")
                if time.monotonic() > deadline:
                    raise DeployError(f"{name} is still {status} after {self.timing.stack_timeout_seconds:.0f} s;"
                                      " follow it in the CloudFormation console")
                time.sleep(self.timing.poll_seconds)


def template_json(template: Mapping[str, Any]) -> str:
    return json.dumps(template, indent=1, sort_keys=False)
