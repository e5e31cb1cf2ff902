"""moto's S3 server as a loopback subprocess for tests and benchmarks (never an in-process mock).

with MotoServer() as server:
    bucket = server.create_bucket()
    os.environ.update(server.env())   # boto3 clients now talk to it
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing-secret-never-printed"
REGION = "us-east-1"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on a running MotoServer, with the store URL for an optional prefix."""

    name: str
    endpoint_url: str

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"


class MotoServer:
    """`python -m moto.server` on 127.0.0.1:<free port>; start() waits until it answers HTTP."""

    def __init__(self, *, host: str = "127.0.0.1", startup_timeout: float = 30.0) -> None:
        self.host = host
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def env(self) -> dict[str, str]:
        """Environment that points boto3 (and so the store) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("moto server already started")
        # The port is free when probed but could be taken before moto binds it; retry then.
        for _ in range(3):
            self.port = free_port(self.host)
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError("moto server did not start; see the log above")

    def _wait_ready(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                sys.stderr.write(self._log_tail())
                return False
            connection = http.client.HTTPConnection(self.host, self.port, timeout=1)
            try:
                connection.request("GET", "/moto-api/")
                connection.getresponse().read()
                return True  # any HTTP answer means it is serving
            except OSError:
                time.sleep(0.05)  # poll interval, bounded by the deadline
            finally:
                connection.close()
        sys.stderr.write(self._log_tail())
        return False

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-4000:].decode(errors="replace")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()  # SIGTERM to the pid we started, nothing else
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def client(self) -> S3Client:
        """A boto3 client for test setup, configured explicitly (not from the environment)."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
        )

    def create_bucket(self, name: str | None = None) -> S3Bucket:
        name = name or f"test-{uuid.uuid4().hex[:24]}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return S3Bucket(name=name, endpoint_url=self.endpoint_url)

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
