"""Schemathesis against the running stack: no input, however hostile, gets a 5xx or a non-JSON error."""
from __future__ import annotations

import json
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from conveyor.openapi import openapi_document

schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def api_key(stack, session_database) -> str:
    from conveyor.services.admin import create_client

    return create_client(session_database, f"schemathesis-{uuid.uuid4().hex[:8]}").api_key


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_every_error_names_its_field(case, stack, api_key):
    response = case.call(base_url=stack.api_url, headers={"X-Api-Key": api_key}, timeout=10)

    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = json.loads(response.text)
        error = body["error"]
        assert error["message"]
        assert error["fields"] and all(f["field"] for f in error["fields"]), response.text
