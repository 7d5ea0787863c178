"""Offline checks of what `conveyor deploy` produces: a dry run's output, and a deploy to moto's server."""
from __future__ import annotations

from pathlib import Path

import pytest

from conveyor_tools.deploy.run import dry_run


@pytest.fixture(scope="session")
def dry_run_out(tmp_path_factory) -> Path:
    """`conveyor deploy --stage demo --dry-run` with no AWS credentials at all."""
    out = tmp_path_factory.mktemp("dry-run")
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                         "AWS_ENDPOINT_URL"):
            patch.delenv(variable, raising=False)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(out / "no-credentials"))
        patch.setenv("AWS_CONFIG_FILE", str(out / "no-config"))
        patch.chdir(out.parent)  # named relative to the working folder, as `--out out/` is
        dry_run("demo", Path(out.name), lambda text: None, region="eu-west-1")
    return out
