"""moto's S3 server as a loopback subprocess for tests and benchmarks (never an in-process mock).

with MotoServer() as server:
    bucket = server.create_bucket()
    os.environ.update(server.env())   # boto3 clients now talk to it

IAM-enforcing mode (a server of its own: enforcement is global to the moto process):

with MotoServer() as server:
    admin = server.enforce_iam()      # from now on every request needs an IAM identity
    vending = admin.create_user("vending", vending_policy(bucket, role_arn("agentsession-*")))
    role = admin.create_role("agentsession-ns", [user_arn("vending")], namespace_policy(...))
    tenant = assume_role(server.endpoint_url, vending, role, "sess-1", policy=...)

What moto enforces (and does not) is in docs/s3-isolation-moto.md.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing-secret-never-printed"
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account: the one every IAM and STS ARN here names


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

    def set_no_auth_action_count(self, count: float) -> float:
        """POST /moto-api/reset-auth: enforce IAM on every request after the next `count` ones.

        0 enforces from the next request on; math.inf (moto's default) never enforces. The
        setting is global to the server process. Returns the previous count.
        """
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request("POST", "/moto-api/reset-auth", body=str(count).encode())
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"moto reset-auth answered HTTP {response.status}: {body!r}")
        previous: float = float(json.loads(body)["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"])
        return previous

    def enforce_iam(self, admin_name: str = "admin") -> IamAdmin:
        """Create IAM user `admin_name` allowed every action, then enforce IAM from now on.

        The user is created with the root test keys while moto still lets every request through;
        afterwards those keys are refused (S3: InvalidAccessKeyId, IAM/STS: InvalidClientTokenId),
        and so are client(), create_bucket() and env(): set everything up through the returned
        IamAdmin. Call once per server.
        """
        import boto3

        iam = boto3.session.Session().client(
            "iam",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
        )
        try:
            credentials = _create_user(iam, admin_name, ADMIN_POLICY)
        finally:
            iam.close()
        self.set_no_auth_action_count(0)
        return IamAdmin(self.endpoint_url, credentials)

    def relax_iam(self) -> None:
        """Stop enforcing IAM (moto's default): every request is let through again."""
        self.set_no_auth_action_count(math.inf)

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


# --- IAM-enforcing mode --------------------------------------------------------------------------

ADMIN_POLICY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


def user_arn(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT_ID}:user/{name}"


def role_arn(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT_ID}:role/{name}"


def namespace_root(prefix: str, namespace: str) -> str:
    """`<prefix>/<namespace>/` (or `<namespace>/` for an empty prefix): the store's key root."""
    prefix = prefix.strip("/")
    return f"{prefix}/{namespace}/" if prefix else f"{namespace}/"


def namespace_policy(bucket: str, prefix: str, namespace: str) -> dict[str, Any]:
    """The policy for one namespace's credentials: as the per-namespace role's policy and as the
    AssumeRole session policy (docs/s3-isolation-moto.md explains what each server enforces).

    Object actions only under `<prefix>/<namespace>/`; listing only with a prefix inside it (a
    condition moto does not evaluate).
    """
    root = namespace_root(prefix, namespace)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "NamespaceObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                "Resource": f"arn:aws:s3:::{bucket}/{root}*",
            },
            {
                "Sid": "ListNamespacePrefix",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:aws:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": f"{root}*"}},
            },
        ],
    }


def vending_policy(bucket: str, role_arn_pattern: str) -> dict[str, Any]:
    """The operator's vending identity: AssumeRole on the namespace roles, the whole bucket."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role_arn_pattern},
            {
                "Effect": "Allow",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            },
        ],
    }


def trust_policy(principal_arns: Sequence[str]) -> dict[str, Any]:
    """A role trust policy letting exactly these IAM principals assume the role.

    Always a list: moto matches a single string Principal by substring.
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": list(principal_arns)},
                "Action": "sts:AssumeRole",
            }
        ],
    }


@dataclass(frozen=True)
class AwsCredentials:
    """Keys as boto3 takes them; STS credentials also carry a session token and an expiry."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    expiration: datetime | None = None

    def env(self) -> dict[str, str]:
        """boto3's standard environment variables for these keys (endpoint and region apart)."""
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }
        if self.session_token is not None:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env

    def client(self, service: str, endpoint_url: str, *, validate: bool = True) -> Any:
        """A boto3 client for `service` with these keys; validate=False skips boto3's own checks
        of request parameters (to send values moto should refuse). Errors are not retried."""
        import boto3
        from botocore.config import Config

        # Any: `service` is a plain str, which boto3-stubs' per-service overloads do not take.
        session: Any = boto3.session.Session()
        return session.client(
            service,
            endpoint_url=endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            aws_session_token=self.session_token,
            region_name=REGION,
            config=Config(parameter_validation=validate, retries={"total_max_attempts": 1}),
        )


class IamAdmin:
    """IAM set-up on an IAM-enforcing MotoServer, made as its all-powerful admin user.

    Its clients are cached (one per service): use an IamAdmin from one thread.
    """

    def __init__(self, endpoint_url: str, credentials: AwsCredentials) -> None:
        self.endpoint_url = endpoint_url
        self.credentials = credentials
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        """The admin's client for `service` (shared: do not close it)."""
        if service not in self._clients:
            self._clients[service] = self.credentials.client(service, self.endpoint_url)
        return self._clients[service]

    def create_bucket(self, name: str | None = None) -> S3Bucket:
        name = name or f"test-{uuid.uuid4().hex[:24]}"
        self.client("s3").create_bucket(Bucket=name)
        return S3Bucket(name=name, endpoint_url=self.endpoint_url)

    def create_user(self, name: str, policy: dict[str, Any]) -> AwsCredentials:
        """IAM user `name` with `policy` inline; returns a fresh access key of it."""
        return _create_user(self.client("iam"), name, policy)

    def create_role(
        self, name: str, trusted: Sequence[str], policy: dict[str, Any] | None = None
    ) -> str:
        """Role `name` that `trusted` principal ARNs may assume, with `policy` inline (if any);
        returns its ARN."""
        arn: str = self.client("iam").create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(trust_policy(trusted))
        )["Role"]["Arn"]
        if policy is not None:
            self.put_role_policy(name, policy)
        return arn

    def put_role_policy(self, role_name: str, policy: dict[str, Any]) -> None:
        """Set (replace) the role's inline policy."""
        self.client("iam").put_role_policy(
            RoleName=role_name, PolicyName="store", PolicyDocument=json.dumps(policy)
        )

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def assume_role(
    endpoint_url: str,
    caller: AwsCredentials,
    role: str,
    session_name: str,
    *,
    policy: dict[str, Any] | None = None,
    duration_seconds: int = 900,
) -> AwsCredentials:
    """STS AssumeRole as `caller` (the vending identity), optionally with a session policy.

    Raises botocore's ClientError when moto refuses (AccessDenied for a missing sts:AssumeRole
    grant or trust). duration_seconds is passed through unchecked (moto accepts any value).
    """
    sts = caller.client("sts", endpoint_url, validate=900 <= duration_seconds <= 43200)
    try:
        arguments: dict[str, Any] = {
            "RoleArn": role,
            "RoleSessionName": session_name,
            "DurationSeconds": duration_seconds,
        }
        if policy is not None:
            arguments["Policy"] = json.dumps(policy)
        issued = sts.assume_role(**arguments)["Credentials"]
    finally:
        sts.close()
    return AwsCredentials(
        access_key_id=issued["AccessKeyId"],
        secret_access_key=issued["SecretAccessKey"],
        session_token=issued["SessionToken"],
        expiration=issued["Expiration"],
    )


def _create_user(iam: Any, name: str, policy: dict[str, Any]) -> AwsCredentials:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="policy", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return AwsCredentials(key["AccessKeyId"], key["SecretAccessKey"])


# --- a multi-tenant store: what the e2e tests, chart tests and the demo run against -------------

VENDING_USER = "agentsession-vending"
ROLE_PREFIX = "agentsession-"


class TenantStore:
    """An IAM-enforcing moto server with one bucket, the operator's vending identity and a role
    per namespace (`agentsession-<namespace>`, its policy limited to the namespace's prefix), as
    a platform team would provision them for the operator's STS vending (docs/store.md)."""

    def __init__(self, bucket: str, prefix: str = "agents", *, host: str = "127.0.0.1") -> None:
        self.server = MotoServer(host=host)
        self.server.start()
        try:
            self.admin = self.server.enforce_iam()
            self.bucket = self.admin.create_bucket(bucket)
            self.prefix = prefix
            pattern = role_arn(f"{ROLE_PREFIX}*")
            self.vending = self.admin.create_user(
                VENDING_USER, vending_policy(self.bucket.name, pattern)
            )
        except BaseException:
            self.server.stop()
            raise
        self._provisioned: set[str] = set()

    @property
    def url(self) -> str:
        return self.bucket.url(self.prefix)

    @property
    def role_arn_template(self) -> str:
        return role_arn(ROLE_PREFIX + "{namespace}")

    def provision(self, namespace: str) -> None:
        """The namespace's role (idempotent): what the operator assumes for its sessions."""
        if namespace in self._provisioned:
            return
        self.admin.create_role(
            ROLE_PREFIX + namespace,
            [user_arn(VENDING_USER)],
            namespace_policy(self.bucket.name, self.prefix, namespace),
        )
        self._provisioned.add(namespace)

    def credentials_for(self, namespace: str) -> AwsCredentials:
        """What the operator vends for `namespace`: its role, assumed by the vending user."""
        self.provision(namespace)
        return assume_role(
            self.server.endpoint_url,
            self.vending,
            role_arn(ROLE_PREFIX + namespace),
            "agentsession-test",
            policy=namespace_policy(self.bucket.name, self.prefix, namespace),
        )

    def operator_env(self) -> dict[str, str]:
        """The operator's store settings and its own (vending) identity."""
        return {
            "AGENTSESSION_STORE_URL": self.url,
            "AGENTSESSION_S3_ENDPOINT_URL": self.server.endpoint_url,
            "AGENTSESSION_S3_REGION": REGION,
            "AGENTSESSION_STORE_ROLE_ARN": self.role_arn_template,
            "AGENTSESSION_STORE_STS_ENDPOINT_URL": self.server.endpoint_url,
            "AWS_REGION": REGION,
            **self.vending.env(),
        }

    def chart_values(self, operator_secret: str) -> dict[str, Any]:
        """The chart's `store` values for this store; the operator's identity in `operator_secret`
        (see `operator_secret`)."""
        return {
            "url": self.url,
            "s3": {"endpointUrl": self.server.endpoint_url, "region": REGION},
            "credentials": {
                "roleArn": self.role_arn_template,
                "stsEndpointUrl": self.server.endpoint_url,
                "operatorSecret": operator_secret,
            },
        }

    def operator_secret(self, name: str) -> dict[str, Any]:
        """The Secret (in the release namespace) with the operator's vending keys, for the chart."""
        return {"metadata": {"name": name}, "stringData": self.vending.env()}

    def reader_env(self) -> dict[str, str]:
        """boto3's environment for tests that read the store directly (the admin's keys)."""
        return {
            "AWS_ENDPOINT_URL": self.server.endpoint_url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            **self.admin.credentials.env(),
        }

    def stop(self) -> None:
        self.admin.close()
        self.server.stop()


def main() -> int:
    """`python -m tests.support.s3server tenant-store ...`: a TenantStore for hack/kind-e2e.sh,
    reachable from kind's pods; writes its port and the operator's keys as JSON, then waits."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["tenant-store"])
    parser.add_argument("--host", default="0.0.0.0")  # kind's pods are not on loopback
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="agents")
    parser.add_argument("--provision", action="append", default=[], metavar="NAMESPACE")
    parser.add_argument("--write", required=True, metavar="FILE")
    args = parser.parse_args()
    store = TenantStore(args.bucket, args.prefix, host=args.host)
    try:
        for namespace in args.provision:
            store.provision(namespace)
        facts = {"port": store.server.port, "roleArn": store.role_arn_template}
        with open(args.write, "w") as out:
            json.dump({**facts, **store.vending.env()}, out)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        store.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
