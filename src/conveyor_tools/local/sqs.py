"""A real SQS HTTP API on 127.0.0.1, served by moto, with the orders queue and its DLQ.

moto runs in a process of its own: in-process it would share the GIL with the API and
the pollers, and every SendMessage would wait behind them (about 17 ms instead of 3 ms).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from types import TracebackType

import boto3
from botocore.client import BaseClient
from botocore.config import Config

LOOPBACK = "127.0.0.1"
# moto accepts any credentials; these only keep boto3 from searching for real ones.
FAKE_CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
_NOT_STARTED = "LocalSqs is not started; call start() or use it as a context manager"


def _credentials_in_environment() -> bool:
    has_keys = bool(os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"))
    return has_keys or bool(os.environ.get("AWS_PROFILE"))


def sqs_client(endpoint_url: str | None, region: str, *, max_pool_connections: int = 10) -> BaseClient:
    """An SQS client; for a local endpoint it gets fake credentials unless the environment has some.

    Passing explicit fake credentials also stops boto3 from walking its credential chain,
    whose last step asks the EC2 instance metadata service over the network.
    With endpoint_url None the client talks to real AWS and uses boto3's own chain.
    """
    use_fake_credentials = endpoint_url is not None and not _credentials_in_environment()
    return boto3.client(
        "sqs",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(max_pool_connections=max_pool_connections),
        **(FAKE_CREDENTIALS if use_fake_credentials else {}),
    )


@dataclass(frozen=True)
class _Queues:
    queue_url: str
    queue_arn: str
    dlq_url: str
    dlq_arn: str


class LocalSqs:
    """moto's SQS server on 127.0.0.1 with an orders queue that redrives to a DLQ."""

    def __init__(
        self,
        *,
        port: int = 0,
        queue_name: str = "conveyor-orders",
        dlq_name: str = "conveyor-orders-dlq",
        max_receive_count: int = 5,
        visibility_timeout: int = 10,
        region: str = "us-east-1",
    ) -> None:
        self._requested_port = port
        self.queue_name = queue_name
        self.dlq_name = dlq_name
        self.max_receive_count = max_receive_count
        self.visibility_timeout = visibility_timeout
        self.region = region
        self._server: _MotoServerProcess | None = None
        self._queues: _Queues | None = None

    def start(self) -> LocalSqs:
        """Start the server unless it runs already, then create both queues if they are missing."""
        if self._server is not None:
            self._queues = self._create_queues()
            return self
        self._server = _MotoServerProcess(self._requested_port or free_port())
        try:
            self._queues = self._create_queues()
        except Exception:
            # __exit__ does not run when __enter__ raises, so do not leave the server behind.
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
            self._queues = None

    def __enter__(self) -> LocalSqs:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port the server is bound to, which the OS picked if 0 was requested."""
        if self._server is None:
            raise RuntimeError(_NOT_STARTED)
        return self._server.port

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def queue_url(self) -> str:
        return self._require_started().queue_url

    @property
    def queue_arn(self) -> str:
        return self._require_started().queue_arn

    @property
    def dlq_url(self) -> str:
        return self._require_started().dlq_url

    @property
    def dlq_arn(self) -> str:
        return self._require_started().dlq_arn

    def _require_started(self) -> _Queues:
        if self._server is None or self._queues is None:
            raise RuntimeError(_NOT_STARTED)
        return self._queues

    def _create_queues(self) -> _Queues:
        # create_queue returns the existing queue when the attributes match, so this is idempotent.
        client = sqs_client(self.endpoint_url, self.region)
        dlq_url = client.create_queue(QueueName=self.dlq_name)["QueueUrl"]
        dlq_arn = _queue_arn(client, dlq_url)
        redrive_policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(self.max_receive_count)}
        queue_url = client.create_queue(
            QueueName=self.queue_name,
            Attributes={
                "RedrivePolicy": json.dumps(redrive_policy),
                "VisibilityTimeout": str(self.visibility_timeout),
            },
        )["QueueUrl"]
        queue_arn = _queue_arn(client, queue_url)
        return _Queues(queue_url=queue_url, queue_arn=queue_arn, dlq_url=dlq_url, dlq_arn=dlq_arn)


class _MotoServerProcess:
    """moto's server (see conveyor_tools.local.moto_server) on 127.0.0.1, ready when it answers."""

    def __init__(self, port: int, startup_timeout: float = 30.0):
        self.port = port
        # moto's web server logs every request; keep it out of the console.
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "conveyor_tools.local.moto_server", "-H", LOOPBACK, "-p", str(port)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the terminal must not stop it before the pollers.
            start_new_session=True,
        )
        deadline = time.monotonic() + startup_timeout
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto's server did not start on port {port}: {self._output()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read()[-2000:].decode(errors="replace") or "no output"

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _queue_arn(client: BaseClient, queue_url: str) -> str:
    attributes = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
    return attributes["QueueArn"]
