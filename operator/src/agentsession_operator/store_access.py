"""The operator's S3 and STS I/O: namespace-scoped store credentials, and reading what gateways
left in the store.

Built once at start-up by `agentsession_operator.main` (from the `AGENTSESSION_STORE_*` settings)
and used by the controller:

- `StoreAccess.vend` gives an attempt's gateway short-lived credentials for
  `<prefix>/<namespace>/` only: STS AssumeRole on the namespace's role (an ARN template), with
  `namespace_policy` as the session policy. Before a namespace's first credentials (and again once
  the cached result is older than the TTL), a preflight proves with the very credentials being
  handed out that they read their own prefix and are refused a sentinel just outside it; on
  failure nothing is vended (`IsolationRefused`).
- `StoreAccess.read_attempt_report` reads the report a gateway saved in the store, for a pod that
  vanished without one in its status.

The operator's own (vending) identity comes from boto3's standard environment of the operator
process. What each S3 server enforces, and why the preflight looks like this, is in
docs/s3-isolation-moto.md. Pure helpers (`namespace_policy`, `role_arn`, `role_session_name`,
`clamp_duration`) sit here too, next to the calls that use them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from agentsession_contract.gateway import REPORT_DIR
from agentsession_contract.redaction import redact
from agentsession_contract.store.keys import (
    LOGICAL_PROJECT,
    S3Location,
    check_namespace,
    check_segment,
    parse_store_url,
    store_scope,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIN_DURATION_SECONDS = 900  # STS's minimum DurationSeconds
MAX_DURATION_SECONDS = 43200  # STS's maximum (a role's MaxSessionDuration can be at most this)
MAX_SESSION_POLICY_CHARS = 2048  # AWS and MinIO: plaintext limit of an AssumeRole session policy
PROBE_SUFFIX = ".isolation-probe"
"""`<prefix>/<ns>.isolation-probe` is outside every namespace (namespace names have no '.') but
inside any grant wider than `<prefix>/<ns>/`; `<prefix>/<ns>/.isolation-probe` is inside the
namespace, where the store never looks (its keys all start with a project directory)."""
GATEWAY_REPORT_DIR = REPORT_DIR
MAX_REPORT_BYTES = 256 * 1024
"""A report is a few KiB; anything bigger was not written by a gateway, and is not loaded."""

_SESSION_NAME_CHARS = re.compile(r"[^\w+=,.@-]", re.ASCII)  # STS RoleSessionName: [\w+=,.@-]
_MAX_SESSION_NAME = 64
_ROLE_ARN_RE = re.compile(r"arn:[a-z-]+:iam::\d{12}:role/[\w+=,.@/-]+", re.ASCII)
_NAMESPACE_PLACEHOLDER = "{namespace}"
_URL_USERINFO_RE = re.compile(r"//[^/@\s\"']+@")


class StoreAccessError(Exception):
    """An S3 or STS call failed, or its answer was unusable; the message names the namespace and
    the object or role, never a credential. Usually worth retrying later."""


class IsolationRefused(StoreAccessError):
    """The preflight found credentials for `namespace` that do not isolate it (`reason` says
    how): a configuration error of the namespace's role, so nothing is vended until it is fixed.
    Not cached: the next vend for the namespace checks again."""

    def __init__(self, namespace: str, reason: str) -> None:
        super().__init__(f"store credentials for namespace {namespace!r} refused: {reason}")
        self.namespace = namespace
        self.reason = reason


@dataclass(frozen=True)
class VendedCredentials:
    """One attempt's STS credentials, for its gateway only. The secret parts stay out of repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime | None

    def env(self) -> dict[str, str]:
        """boto3's standard variables for these keys (the attempt's store Secret holds these)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_SESSION_TOKEN": self.session_token,
        }


# --- pure helpers ---------------------------------------------------------------------------


def namespace_root(prefix: str, namespace: str, namespace_uid: str | None = None) -> str:
    """`<prefix>/<namespace>/` (`<namespace>/` for an empty prefix): what the namespace's role
    reaches; with `namespace_uid`, `<prefix>/<namespace>/<namespace_uid>/`, the store root of the
    namespace as it exists now (keys.store_scope)."""
    prefix = prefix.strip("/")
    scope = store_scope(namespace, namespace_uid)
    return f"{prefix}/{scope}" if prefix else scope


def namespace_policy(
    bucket: str, prefix: str, namespace: str, namespace_uid: str | None = None
) -> dict[str, Any]:
    """The policy of one namespace's credentials: the session policy of every AssumeRole (with
    the namespace's UID), and the policy its role should have (without: the role is made per
    namespace name, before any UID exists; docs/s3-isolation-moto.md).

    Objects only under `<prefix>/<namespace>/[<namespace_uid>/]` (the trailing '/' keeps
    `<namespace>-x` out); listing only with a prefix inside it. AWS intersects this with the
    role's policy, so there the UID confines the credentials to the namespace as it exists now;
    on MinIO it is the only narrowing; moto ignores it and enforces the role's policy alone.
    """
    root = namespace_root(prefix, namespace, namespace_uid)
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


def check_role_arn_template(template: str) -> str:
    """Return `template` if it is an IAM role ARN, `{namespace}` allowed anywhere in its name;
    raise ValueError otherwise (a start-up configuration error).

    A template without `{namespace}` (one role for all) is accepted: AWS narrows it by the
    session policy, and where that is not enforced (moto) the preflight refuses it.
    """
    rendered = template.replace(_NAMESPACE_PLACEHOLDER, "ns")
    if "{" in rendered or "}" in rendered:
        raise ValueError(f"role ARN template {template!r}: only {{namespace}} may be substituted")
    if not _ROLE_ARN_RE.fullmatch(rendered):
        raise ValueError(
            f"role ARN template {template!r} is not an IAM role ARN "
            "(arn:aws:iam::<account>:role/<name>)"
        )
    return template


def role_arn(template: str, namespace: str) -> str:
    """The namespace's role: `template` with `{namespace}` replaced (plain replacement, never
    str.format, so no other field of the template can be expanded)."""
    return check_role_arn_template(template).replace(
        _NAMESPACE_PLACEHOLDER, check_namespace(namespace)
    )


def role_session_name(namespace: str, session_name: str) -> str:
    """STS RoleSessionName `<namespace>.<session>`: it shows in the assumed-role ARN, so audit
    logs name the session. Too long (over 64) or with characters STS refuses, it is cut and a
    hash of the whole keeps different sessions apart."""
    if not session_name:
        raise ValueError("session name must not be empty")
    full = f"{check_namespace(namespace)}.{session_name}"
    safe = _SESSION_NAME_CHARS.sub("-", full)
    if safe == full and len(full) <= _MAX_SESSION_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:12]
    return f"{safe[: _MAX_SESSION_NAME - len(digest) - 1]}-{digest}"


def clamp_duration(duration_seconds: int, max_duration_seconds: int) -> int:
    """DurationSeconds within what STS accepts: at least 900, at most the configured maximum."""
    return max(MIN_DURATION_SECONDS, min(duration_seconds, max_duration_seconds))


def _describe(exc: Exception) -> str:
    """An S3/STS failure as text safe for logs and status: code, HTTP status, message."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        text = f"{error.get('Code', 'Unknown')} (HTTP {status}) {error.get('Message', '')}"
    else:
        text = str(exc)
    # An endpoint URL may carry user:password@; redact() handles key=value shaped secrets.
    return redact(_URL_USERINFO_RE.sub("//***@", text)).strip()


def _error_code(exc: ClientError) -> str:
    code: str = exc.response.get("Error", {}).get("Code", "")
    return code


# --- I/O ------------------------------------------------------------------------------------


def _client_config() -> Config:
    return Config(
        retries={"mode": "standard"},  # throttling, 5xx and connection errors, with backoff
        connect_timeout=10,
        read_timeout=30,
        # As in the gateway: several S3-compatible servers refuse boto3's default CRC trailers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


class StoreAccess:
    """The operator's store and STS clients, built once; safe to use from several threads.

    The `*_sync` methods block; the async ones run them in a worker thread for the controller.
    """

    def __init__(
        self,
        store_url: str,
        role_arn_template: str,
        *,
        s3_endpoint_url: str | None = None,
        sts_endpoint_url: str | None = None,
        region: str | None = None,
        max_duration_seconds: int = MAX_DURATION_SECONDS,
        preflight_ttl_seconds: float = 600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        location = parse_store_url(store_url)
        if not isinstance(location, S3Location):
            raise ValueError("vending store credentials needs an s3:// store URL")
        if not MIN_DURATION_SECONDS <= max_duration_seconds <= MAX_DURATION_SECONDS:
            raise ValueError(
                f"max_duration_seconds must be within [{MIN_DURATION_SECONDS}, "
                f"{MAX_DURATION_SECONDS}], got {max_duration_seconds}"
            )
        if preflight_ttl_seconds < 0:
            raise ValueError("preflight_ttl_seconds must not be negative")
        self.bucket = location.bucket
        self.prefix = location.prefix  # '' or ending in '/'
        self.role_arn_template = check_role_arn_template(role_arn_template)
        self.s3_endpoint_url = s3_endpoint_url
        self.region = region
        self.max_duration_seconds = max_duration_seconds
        self.preflight_ttl_seconds = preflight_ttl_seconds
        self._clock = clock
        self._verified: dict[str, float] = {}  # store scope -> clock() when its check expires
        self._lock = threading.Lock()  # guards the two dicts
        # One preflight per namespace at a time: concurrent ones would overwrite each other's
        # probes, and the others can use its result.
        self._preflight_locks: dict[str, threading.Lock] = {}
        # A boto3 session is not thread-safe but its clients are: make both clients here, once.
        session = boto3.session.Session()
        self._s3: S3Client = session.client(
            "s3", endpoint_url=s3_endpoint_url, region_name=region, config=_client_config()
        )
        # No STS stubs are installed; the two calls used are checked by the integration tests.
        self._sts: Any = session.client(
            "sts", endpoint_url=sts_endpoint_url, region_name=region, config=_client_config()
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # --- vending ----------------------------------------------------------------------------

    async def vend(
        self,
        namespace: str,
        session_name: str,
        duration_seconds: int,
        namespace_uid: str | None = None,
    ) -> VendedCredentials:
        """Credentials for `<prefix>/<namespace>/<namespace_uid>/` only, valid for
        `duration_seconds` clamped to [900, max]. Raises IsolationRefused if the preflight
        refuses them, StoreAccessError if STS or S3 fails."""
        return await asyncio.to_thread(
            self.vend_sync, namespace, session_name, duration_seconds, namespace_uid
        )

    def vend_sync(
        self,
        namespace: str,
        session_name: str,
        duration_seconds: int,
        namespace_uid: str | None = None,
    ) -> VendedCredentials:
        namespace = check_namespace(namespace)
        scope = store_scope(namespace, namespace_uid)
        credentials = self._assume_role(namespace, session_name, duration_seconds, namespace_uid)
        if self._verified_now(scope):
            return credentials
        with self._lock:
            preflight_lock = self._preflight_locks.setdefault(scope, threading.Lock())
        with preflight_lock:
            if not self._verified_now(scope):  # unless a concurrent vend just checked it
                # The credentials handed out are the ones checked, so a role changed since the
                # last check is caught at the next check at the latest (one TTL).
                self._preflight(namespace, namespace_uid, credentials)
                with self._lock:
                    self._verified[scope] = self._clock() + self.preflight_ttl_seconds
        return credentials

    def is_verified(self, namespace: str, namespace_uid: str | None = None) -> bool:
        """Whether the namespace (as of `namespace_uid`) passed its preflight less than the TTL
        ago."""
        return self._verified_now(store_scope(namespace, namespace_uid))

    def _verified_now(self, scope: str) -> bool:
        with self._lock:
            expires = self._verified.get(scope)
            if expires is not None and self._clock() >= expires:
                del self._verified[scope]
                expires = None
        return expires is not None

    def forget(self, namespace: str, namespace_uid: str | None = None) -> None:
        """Drop the namespace's cached preflight: the next vend checks again (for example after
        its gateway reported AccessDenied)."""
        with self._lock:
            self._verified.pop(store_scope(namespace, namespace_uid), None)

    def _assume_role(
        self,
        namespace: str,
        session_name: str,
        duration_seconds: int,
        namespace_uid: str | None = None,
    ) -> VendedCredentials:
        arn = role_arn(self.role_arn_template, namespace)
        policy = json.dumps(
            namespace_policy(self.bucket, self.prefix, namespace, namespace_uid),
            separators=(",", ":"),
        )
        if len(policy) > MAX_SESSION_POLICY_CHARS:
            raise StoreAccessError(
                f"session policy for namespace {namespace!r} is {len(policy)} characters, over "
                f"STS's {MAX_SESSION_POLICY_CHARS}: shorten the store URL's bucket or prefix"
            )
        try:
            issued = self._sts.assume_role(
                RoleArn=arn,
                RoleSessionName=role_session_name(namespace, session_name),
                # AWS intersects the role's policy with this one; MinIO has no roles and only
                # this narrows its credentials (docs/s3-isolation-moto.md). Always send it.
                Policy=policy,
                DurationSeconds=clamp_duration(duration_seconds, self.max_duration_seconds),
            )["Credentials"]
        except (ClientError, BotoCoreError) as exc:
            raise StoreAccessError(
                f"STS AssumeRole of {arn} for namespace {namespace!r} failed: {_describe(exc)}"
            ) from None  # the request parameters in a traceback are not worth the risk
        expiration = issued.get("Expiration")
        return VendedCredentials(
            access_key_id=issued["AccessKeyId"],
            secret_access_key=issued["SecretAccessKey"],
            session_token=issued["SessionToken"],
            expiration=expiration if isinstance(expiration, datetime) else None,
        )

    def _preflight(
        self, namespace: str, namespace_uid: str | None, credentials: VendedCredentials
    ) -> None:
        """Prove the vended credentials isolate the namespace, with probes only the operator
        writes: they must read one inside their store root `<prefix>/<ns>/<uid>/` (else the
        role is another namespace's, missing, or too narrow) and be refused one just outside
        `<prefix>/<ns>/` (else the role's policy is wider than the namespace's prefix). Both
        probes exist when read: on AWS a missing key may answer 403 as well, which would make a
        refusal meaningless.

        Listing outside the prefix is not probed: moto never scopes ListBucket, so such a
        check would refuse every working credential there (docs/s3-isolation-moto.md). Nor is a
        sibling UID's root: the role is per namespace name, so only the session policy (which
        moto ignores) keeps the credentials below the UID.
        """
        inside = f"{namespace_root(self.prefix, namespace, namespace_uid)}{PROBE_SUFFIX}"
        outside = f"{namespace_root(self.prefix, namespace)[:-1]}{PROBE_SUFFIX}"
        # A fresh nonce each time: reading it back proves this very write was read, not a copy.
        nonce = secrets.token_hex(16).encode()
        for key in (inside, outside):
            try:
                self._s3.put_object(Bucket=self.bucket, Key=key, Body=nonce)
            except (ClientError, BotoCoreError) as exc:
                raise StoreAccessError(
                    f"isolation preflight of namespace {namespace!r}: the operator could not "
                    f"write {self.uri(key)}: {_describe(exc)}"
                ) from None
        tenant = self._tenant_client(credentials)
        try:
            self._probe_inside(namespace, tenant, inside, nonce)
            self._probe_outside(namespace, tenant, outside)
        finally:
            tenant.close()

    def _probe_inside(self, namespace: str, tenant: S3Client, key: str, nonce: bytes) -> None:
        root = key.removesuffix(PROBE_SUFFIX)
        try:
            body = tenant.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _error_code(exc) == "AccessDenied":
                raise IsolationRefused(
                    namespace,
                    f"they cannot read {self.uri(key)} in the namespace's own prefix: check "
                    f"that role {role_arn(self.role_arn_template, namespace)} exists and grants "
                    f"s3:GetObject, s3:PutObject and s3:DeleteObject on {self.uri(root)}*",
                ) from None
            raise self._probe_failed(namespace, key, exc) from None
        except BotoCoreError as exc:
            raise self._probe_failed(namespace, key, exc) from None
        if body != nonce:
            # Someone wrote it since (another operator replica's preflight, say): no verdict.
            raise StoreAccessError(
                f"isolation preflight of namespace {namespace!r}: {self.uri(key)} changed while "
                "being checked; try again"
            )

    def _probe_outside(self, namespace: str, tenant: S3Client, key: str) -> None:
        try:
            tenant.get_object(Bucket=self.bucket, Key=key)["Body"].close()
        except ClientError as exc:
            if _error_code(exc) == "AccessDenied":
                return  # the one answer that proves the grant stops at the prefix
            raise self._probe_failed(namespace, key, exc) from None
        except BotoCoreError as exc:
            raise self._probe_failed(namespace, key, exc) from None
        raise IsolationRefused(
            namespace,
            f"they can read {self.uri(key)}, outside the namespace's prefix: the policy of role "
            f"{role_arn(self.role_arn_template, namespace)} is wider than "
            f"{self.uri(namespace_root(self.prefix, namespace))}",
        )

    def _probe_failed(self, namespace: str, key: str, exc: Exception) -> StoreAccessError:
        return StoreAccessError(
            f"isolation preflight of namespace {namespace!r}: reading {self.uri(key)} with the "
            f"vended credentials failed: {_describe(exc)}"
        )

    def _tenant_client(self, credentials: VendedCredentials) -> S3Client:
        """An S3 client with the vended credentials, as the gateway will have them."""
        client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.s3_endpoint_url,
            region_name=self.region,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
            config=_client_config(),
        )
        return client

    # --- attempt reports --------------------------------------------------------------------

    def report_key(
        self, namespace: str, session_id: str, attempt_id: str, namespace_uid: str | None = None
    ) -> str:
        """The full object key of an attempt's gateway report."""
        root = namespace_root(self.prefix, namespace, namespace_uid)
        session_id = check_segment(session_id, "session id")
        attempt_id = check_segment(attempt_id, "attempt id")
        return f"{root}{LOGICAL_PROJECT}/{session_id}/{GATEWAY_REPORT_DIR}/{attempt_id}.json"

    async def read_attempt_report(
        self, namespace: str, session_id: str, attempt_id: str, namespace_uid: str | None = None
    ) -> dict[str, Any] | None:
        """The report the attempt's gateway last saved, as JSON; None if it saved none.

        Read with the operator's own credentials. The object is in the tenant's prefix, so the
        caller must validate it (agentsession_contract.gateway.GatewayReport) like any input.
        """
        return await asyncio.to_thread(
            self.read_attempt_report_sync, namespace, session_id, attempt_id, namespace_uid
        )

    def read_attempt_report_sync(
        self, namespace: str, session_id: str, attempt_id: str, namespace_uid: str | None = None
    ) -> dict[str, Any] | None:
        key = self.report_key(namespace, session_id, attempt_id, namespace_uid)
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=key)
            # Bounded: whoever holds the namespace's credentials can write this object.
            data = response["Body"].read(MAX_REPORT_BYTES + 1)
            response["Body"].close()
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise StoreAccessError(f"S3 get of {self.uri(key)} failed: {_describe(exc)}") from None
        except BotoCoreError as exc:
            raise StoreAccessError(f"S3 get of {self.uri(key)} failed: {_describe(exc)}") from None
        if len(data) > MAX_REPORT_BYTES:
            raise StoreAccessError(
                f"{self.uri(key)} is over {MAX_REPORT_BYTES} bytes: not a gateway report"
            )
        try:
            report = json.loads(data)
        except ValueError:
            raise StoreAccessError(f"{self.uri(key)} is not JSON") from None
        if not isinstance(report, dict):
            raise StoreAccessError(f"{self.uri(key)} is not a JSON object")
        return report

    def close(self) -> None:
        self._s3.close()
        self._sts.close()
