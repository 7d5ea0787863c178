"""Build the console image with docker, or podman where there is no docker, and push it to ECR."""
from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from conveyor_tools.deploy.plan import DeployError, repository_root


def container_tool() -> str:
    for tool in ("docker", "podman"):
        if shutil.which(tool):
            return tool
    raise DeployError("neither docker nor podman is installed: install one to build the console image,"
                      " or pass --image-tag TAG of an image already in the stage's ECR repository")


def _run(command: list[str], say: Callable[[str], None], *, stdin: str | None = None) -> str:
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise DeployError(f"`{' '.join(command[:3])} …` failed ({result.returncode}):\n" + "\n".join(tail))
    return result.stdout.strip()


def build_and_push(ecr, repository_uri: str, repository_name: str, say: Callable[[str], None],
                   context: Path | None = None) -> str:
    """Build the Dockerfile, tag it by content and push it unless ECR has it; returns the tag."""
    tool = container_tool()
    context = context or repository_root()
    local = "conveyor-console:deploy"
    say(f"building the console image with {tool} (first builds take a few minutes)")
    build = [tool, "build", "-t", local, str(context)]
    if tool == "podman":
        build[2:2] = ["--format", "docker"]  # ECR and ECS expect Docker manifests
    _run(build, say)
    image_id = _run([tool, "image", "inspect", "--format", "{{.Id}}", local], say)
    tag = "sha-" + image_id.removeprefix("sha256:")[:16]
    existing = ecr.describe_images(repositoryName=repository_name, filter={"tagStatus": "TAGGED"}).get("imageDetails", [])
    if any(tag in image.get("imageTags", []) for image in existing):
        say(f"image {tag} is already in {repository_name}")
        return tag
    token = ecr.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    registry = repository_uri.split("/", 1)[0]
    _run([tool, "login", "--username", user, "--password-stdin", registry], say, stdin=password)
    _run([tool, "tag", local, f"{repository_uri}:{tag}"], say)
    say(f"pushing {repository_uri}:{tag}")
    _run([tool, "push", f"{repository_uri}:{tag}"], say)
    return tag
