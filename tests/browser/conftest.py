"""Browser tests: Playwright drives Debian's chromium against a whole local stack (`conveyor dev`).

Playwright cannot download its own browser here, so it launches /usr/bin/chromium (CHROMIUM_PATH
overrides). Debian's security updates move chromium ahead of the version Playwright was built
for: a different major version is a warning, and only a browser that cannot be driven fails.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor_tools.local.stack import DevSettings, LocalStack
from conveyor.services import users
from conveyor.services.access import Actor, Role
from browser_support import PASSWORD

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def expected_chromium_version() -> str:
    import playwright

    browsers = Path(playwright.__file__).parent / "driver" / "package" / "browsers.json"
    return next(b["browserVersion"] for b in json.loads(browsers.read_text())["browsers"] if b["name"] == "chromium")


def installed_chromium_version() -> str:
    output = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"(\d+\.\d+\.\d+\.\d+)", output)
    return match.group(1) if match else output.strip()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import Error, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no chromium at {CHROMIUM}: install it (apt-get install -y chromium) or set CHROMIUM_PATH")
    expected, installed = expected_chromium_version(), installed_chromium_version()
    if expected.split(".")[0] != installed.split(".")[0]:
        message = (f"chromium {installed} at {CHROMIUM} is not the major version Playwright expects"
                   f" ({expected}); the tests go on, and fail only if it cannot be driven")
        print(f"\nWARNING: {message}")
        warnings.warn(message, stacklevel=1)
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        except Error as exc:
            pytest.fail(f"Playwright could not drive chromium {installed} at {CHROMIUM} (it expects {expected}): {exc}")
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("CONSOLE_SECRET_KEY", raising=False)
    settings = DevSettings(api_port=0, sqs_port=0, pollers=2, visibility_timeout=1, data_api=False,
                           console_port=0)
    directory = tmp_path_factory.mktemp("browser-stack")
    with LocalStack(settings, directory) as running:
        running.admin_password = (directory / "console-admin-password").read_text().strip()
        yield running
    monkeypatch.undo()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    print(f"\nbrowser screenshots: {ARTIFACTS}")
    return ARTIFACTS


@pytest.fixture
def page(browser, stack, artifacts):
    context = browser.new_context(base_url=stack.console_url, timezone_id="Europe/Paris", accept_downloads=True)
    context.set_default_timeout(15_000)
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def new_user(session_database):
    """A console user with a unique name: the admin of `conveyor dev` stays as the stack made it."""

    def make(role: Role) -> str:
        name = f"{role.label}-{uuid.uuid4().hex[:6]}"
        users.create_user(session_database, Actor(name="browser-tests", role=Role.ADMIN), name, role, PASSWORD)
        return name

    return make
