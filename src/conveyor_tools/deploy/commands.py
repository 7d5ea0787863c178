"""The CLI's deploy and destroy: options in, progress and a summary out."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from conveyor_tools.deploy.plan import DeployError


def _spinner(console) -> Callable[[str], object]:
    @contextmanager
    def progress(description: str) -> Iterator[Callable[[str], None]]:
        with console.status(description) as status:
            yield lambda text: status.update(text)

    return progress


def _session():
    import boto3
    from botocore.exceptions import NoCredentialsError, ProfileNotFound

    try:
        session = boto3.session.Session()
        if session.get_credentials() is None:
            raise NoCredentialsError()
    except (NoCredentialsError, ProfileNotFound):
        raise DeployError("no AWS credentials: configure them (aws configure, AWS_PROFILE or AWS_ACCESS_KEY_ID),"
                          " or use --dry-run to write everything offline") from None
    return session


def deploy(stage: str, *, dry_run: bool, out: Path | None, image_tag: str | None, console) -> int:
    from conveyor_tools.deploy.run import Deployment, dry_run as write_offline, first_client_instructions

    say = lambda text: console.print(text, soft_wrap=True, markup=False)  # noqa: E731
    work_dir = out or Path(".conveyor") / "deploy" / stage
    if dry_run:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        write_offline(stage, work_dir, say, region=region)
        return 0
    session = _session()
    deployment = Deployment(stage, session, work_dir, say, progress=_spinner(console))
    result = deployment.run(image_tag=image_tag)
    say(first_client_instructions(deployment.stage, result, session.region_name))
    return 0


def destroy(stage: str, *, force: bool, console) -> int:
    from conveyor_tools.deploy.run import destroy as tear_down, stage_to_destroy

    say = lambda text: console.print(text, soft_wrap=True, markup=False)  # noqa: E731
    stage_to_destroy(stage, force, say)  # refuse before asking for credentials
    deleted = tear_down(stage, _session(), say, force=force, progress=_spinner(console))
    say(f"stage {stage}: {len(deleted)} stack(s) deleted" if deleted else f"stage {stage}: nothing to delete")
    return 0
