"""A whole local stack (SQS, pollers, worker, API) in this process, on free ports."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import requests

from conveyor_tools.local.stack import DevSettings, LocalStack
from conveyor.services.admin import create_client


@pytest.fixture(scope="session", params=["data_api", "direct"])
def stack(request, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The stack as `conveyor dev` runs it: through the Data API by default, or directly."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("DATABASE_URL", database_url)
    settings = DevSettings(api_port=0, sqs_port=0, pollers=4, visibility_timeout=1,
                           data_api=request.param == "data_api", data_api_port=0, console_port=0)
    with LocalStack(settings, tmp_path_factory.mktemp("stack")) as running:
        yield running
    monkeypatch.undo()


class ApiClient:
    def __init__(self, base_url: str, api_key: str | None):
        self.base_url = base_url
        self.session = requests.Session()
        if api_key:
            self.session.headers["X-Api-Key"] = api_key

    def post_order(self, body, key: str | None = None, **headers) -> requests.Response:
        if key is not None:
            headers["Idempotency-Key"] = key
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.session.post(f"{self.base_url}/orders", data=data,
                                 headers={"Content-Type": "application/json", **headers}, timeout=10)

    def get(self, path: str, **params) -> requests.Response:
        return self.session.get(f"{self.base_url}{path}", params=params, timeout=10)

    def post(self, path: str, **headers) -> requests.Response:
        return self.session.post(f"{self.base_url}{path}", headers=headers, timeout=10)

    def wait_settled(self, order_id: str, timeout: float = 15.0, until: Callable[[dict], bool] | None = None) -> dict:
        done = until or (lambda order: order["status"] != "PENDING")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.get(f"/orders/{order_id}")
            if response.status_code == 200 and done(response.json()):
                return response.json()
            time.sleep(0.05)
        raise AssertionError(f"order {order_id} did not settle in {timeout} s: last answer {response.status_code} {response.text}")


@pytest.fixture
def new_api_client(stack: LocalStack, session_database) -> Callable[[], ApiClient]:
    def make() -> ApiClient:
        client = create_client(session_database, f"e2e-{uuid.uuid4().hex[:8]}")
        return ApiClient(stack.api_url, client.api_key)

    return make


@pytest.fixture
def api(new_api_client) -> ApiClient:
    return new_api_client()
