"""The operator's credential vending (`agentsession_operator.store_access`) against moto's server
with IAM enforced, over HTTP.

The world of every test: one bucket shared by namespaces; an operator identity (an IAM user)
allowed to assume `agentsession-*` roles and to use the bucket, given to the operator through
boto3's standard environment; one pre-created role per namespace whose policy is the
prefix-scoped one an administrator would provision. What moto enforces is in
docs/s3-isolation-moto.md; this module proves the operator's side of it: what it vends, what its
preflight refuses, and that a gateway's store works with what it vends.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

import pytest
from botocore.exceptions import ClientError

from agentsession_contract.gateway import REPORT_DIR as GATEWAY_DIR
from agentsession_contract.gateway import GatewayReport
from agentsession_contract.store import StoreError
from agentsession_contract.store.errors import InvalidKeyError
from agentsession_contract.store.keys import LOGICAL_PROJECT
from agentsession_gateway.s3 import S3Backend, make_s3_client, open_store
from agentsession_operator.reconcile.podspec import STORE_CREDENTIAL_KEYS
from agentsession_operator.store_access import (
    IsolationRefused,
    StoreAccess,
    StoreAccessError,
    VendedCredentials,
    clamp_duration,
    role_arn,
    role_session_name,
)
from agentsession_operator.store_access import namespace_policy as operator_namespace_policy
from tests.support.s3server import (
    ACCOUNT_ID,
    REGION,
    AwsCredentials,
    IamAdmin,
    MotoServer,
    namespace_policy,
    namespace_root,
    user_arn,
    vending_policy,
)
from tests.support.s3server import role_arn as named_role_arn

if TYPE_CHECKING:
    from claude_agent_sdk.types import SessionKey, SessionStoreEntry

pytestmark = pytest.mark.s3

PREFIX = "transcripts"
TEMPLATE = f"arn:aws:iam::{ACCOUNT_ID}:role/agentsession-{{namespace}}"
TTL = 600.0
ACCESS_DENIED = ("AccessDenied", "Access Denied", 403)


@pytest.fixture(scope="module")
def iam_server() -> Iterator[tuple[MotoServer, IamAdmin]]:
    """A moto server of this module's own (enforcement is process-global), IAM enforced."""
    with MotoServer() as server:
        admin = server.enforce_iam()
        yield server, admin
        admin.close()


class FakeClock:
    """A monotonic clock the test moves by hand (the preflight TTL is measured on it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    endpoint_url: str
    admin: IamAdmin
    bucket: str
    operator: AwsCredentials  # the vending identity
    ns: str
    other_ns: str
    clock: FakeClock
    monkeypatch: pytest.MonkeyPatch

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{PREFIX}"

    def key(self, namespace: str, name: str) -> str:
        return namespace_root(PREFIX, namespace) + name

    def access(self, template: str = TEMPLATE, **kwargs: Any) -> StoreAccess:
        """A StoreAccess as the operator builds it: its own identity from the environment."""
        self.use_env(self.operator)
        kwargs.setdefault("clock", self.clock)
        kwargs.setdefault("preflight_ttl_seconds", TTL)
        access = StoreAccess(
            self.url,
            template,
            s3_endpoint_url=self.endpoint_url,
            sts_endpoint_url=self.endpoint_url,
            region=REGION,
            **kwargs,
        )
        self.monkeypatch.delenv("AWS_ACCESS_KEY_ID")  # it must not need them after start-up
        self.monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        return access

    def use_env(self, credentials: AwsCredentials | VendedCredentials) -> None:
        """Put these keys in boto3's standard environment (the gateway gets them this way)."""
        self.monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        for name, value in credentials.env().items():
            self.monkeypatch.setenv(name, value)

    def s3(self, credentials: VendedCredentials) -> Any:
        return AwsCredentials(
            credentials.access_key_id, credentials.secret_access_key, credentials.session_token
        ).client("s3", self.endpoint_url)

    @property
    def admin_s3(self) -> Any:
        return self.admin.client("s3")

    def set_role_policy(self, namespace: str, resource: str) -> None:
        """Give the namespace's role a policy whose objects statement covers `resource`."""
        policy = namespace_policy(self.bucket, PREFIX, namespace)
        policy["Statement"][0]["Resource"] = f"arn:aws:s3:::{self.bucket}/{resource}"
        self.admin.put_role_policy(f"agentsession-{namespace}", policy)

    def exists(self, key: str) -> bool:
        try:
            self.admin_s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "404":
                return False
            raise
        return True

    def keys(self, prefix: str) -> list[str]:
        listed = self.admin_s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture
def world(
    iam_server: tuple[MotoServer, IamAdmin],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> World:
    server, admin = iam_server
    # Keep the developer's AWS profile and files out; the endpoint is the server's for boto3
    # clients configured from the environment alone (the gateway's).
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    empty = tmp_path_factory.mktemp("aws") / "none"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    tag = uuid.uuid4().hex[:8]
    bucket = admin.create_bucket().name
    operator_name = f"operator-{tag}"
    operator = admin.create_user(
        operator_name, vending_policy(bucket, named_role_arn("agentsession-*"))
    )
    world = World(
        endpoint_url=server.endpoint_url,
        admin=admin,
        bucket=bucket,
        operator=operator,
        ns=f"a{tag}",
        other_ns=f"b{tag}",
        clock=FakeClock(),
        monkeypatch=monkeypatch,
    )
    for namespace in (world.ns, world.other_ns):
        admin.create_role(
            f"agentsession-{namespace}",
            [user_arn(operator_name)],
            namespace_policy(bucket, PREFIX, namespace),
        )
        admin.client("s3").put_object(
            Bucket=bucket, Key=world.key(namespace, "seed.json"), Body=namespace.encode()
        )
    return world


def client_error(call: Callable[[], object]) -> tuple[str, str, int]:
    """Code, message and HTTP status of a call that must fail."""
    with pytest.raises(ClientError) as info:
        call()
    response = info.value.response
    return (
        response["Error"]["Code"],
        response["Error"].get("Message", ""),
        response["ResponseMetadata"]["HTTPStatusCode"],
    )


def vend(access: StoreAccess, namespace: str, **kwargs: Any) -> VendedCredentials:
    kwargs.setdefault("session_name", "session-1")
    kwargs.setdefault("duration_seconds", 3600)
    return asyncio.run(access.vend(namespace, **kwargs))


def assert_secret_free(text: str, *credentials: AwsCredentials | VendedCredentials) -> None:
    for creds in credentials:
        assert creds.secret_access_key not in text
        if creds.session_token:
            assert creds.session_token not in text


# --- what is vended -----------------------------------------------------------------------------


def test_vended_credentials_reach_only_their_namespace(world: World) -> None:
    access = world.access()
    credentials = vend(access, world.ns)
    s3 = world.s3(credentials)
    b = world.bucket

    mine = world.key(world.ns, "sessions/s1/x.json")
    s3.put_object(Bucket=b, Key=mine, Body=b"mine")
    assert s3.get_object(Bucket=b, Key=mine)["Body"].read() == b"mine"
    s3.delete_object(Bucket=b, Key=mine)
    assert not world.exists(mine)

    theirs = world.key(world.other_ns, "seed.json")
    assert client_error(lambda: s3.get_object(Bucket=b, Key=theirs)) == ACCESS_DENIED
    assert client_error(lambda: s3.put_object(Bucket=b, Key=theirs, Body=b"x")) == ACCESS_DENIED
    assert client_error(lambda: s3.delete_object(Bucket=b, Key=theirs)) == ACCESS_DENIED
    assert world.admin_s3.get_object(Bucket=b, Key=theirs)["Body"].read() == (
        world.other_ns.encode()
    )

    # The role came from the template and the session name from the session: audit logs (the
    # assumed-role ARN) name both.
    whoami = AwsCredentials(
        credentials.access_key_id, credentials.secret_access_key, credentials.session_token
    ).client("sts", world.endpoint_url)
    assert whoami.get_caller_identity()["Arn"] == (
        f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/agentsession-{world.ns}/{world.ns}.session-1"
    )


def test_vended_credentials_fit_the_store_secret_and_keep_secrets_out_of_repr(
    world: World,
) -> None:
    credentials = vend(world.access(), world.ns)
    assert set(credentials.env()) == set(STORE_CREDENTIAL_KEYS)
    assert credentials.access_key_id.startswith("ASIA")
    assert_secret_free(repr(credentials), credentials)


@pytest.mark.parametrize(
    ("asked", "maximum", "granted"),
    [
        pytest.param(60, 43200, 900, id="below-sts-minimum"),
        pytest.param(1800, 43200, 1800, id="within"),
        pytest.param(7200, 3600, 3600, id="above-configured-maximum"),
    ],
)
def test_duration_is_clamped_to_what_sts_and_the_role_accept(
    world: World, asked: int, maximum: int, granted: int
) -> None:
    """moto grants any DurationSeconds as asked (it checks no range), so the Expiration it
    reports shows exactly what the operator asked for."""
    access = world.access(max_duration_seconds=maximum)
    before = datetime.now(UTC).replace(microsecond=0)
    credentials = vend(access, world.ns, duration_seconds=asked)
    assert credentials.expiration is not None
    lifetime = credentials.expiration - before
    assert timedelta(seconds=granted) <= lifetime < timedelta(seconds=granted + 60)


def test_clamp_duration() -> None:
    assert clamp_duration(0, 3600) == 900
    assert clamp_duration(901, 3600) == 901
    assert clamp_duration(10**9, 3600) == 3600


# --- the preflight ------------------------------------------------------------------------------


def test_preflight_accepts_the_namespace_role_and_leaves_its_probes(world: World) -> None:
    access = world.access()
    assert not access.is_verified(world.ns)
    vend(access, world.ns)
    assert access.is_verified(world.ns)
    assert not access.is_verified(world.other_ns)
    # Written by the operator: one just outside the namespace, one inside it.
    assert world.exists(f"{PREFIX}/{world.ns}.isolation-probe")
    assert world.exists(world.key(world.ns, ".isolation-probe"))


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param(lambda ns: f"{PREFIX}/*", id="whole-prefix"),
        pytest.param(lambda ns: f"{PREFIX}/{ns}*", id="missing-slash"),
        pytest.param(lambda ns: "*", id="whole-bucket"),
    ],
)
def test_preflight_refuses_a_role_wider_than_its_prefix(
    world: World, resource: Callable[[str], str]
) -> None:
    world.set_role_policy(world.ns, resource(world.ns))
    access = world.access()
    with pytest.raises(IsolationRefused) as info:
        vend(access, world.ns)
    assert info.value.namespace == world.ns
    message = str(info.value)
    assert message.startswith(f"store credentials for namespace {world.ns!r} refused: ")
    assert f"can read s3://{world.bucket}/{PREFIX}/{world.ns}.isolation-probe" in message
    assert f"role arn:aws:iam::{ACCOUNT_ID}:role/agentsession-{world.ns}" in message
    assert "is wider than" in message
    assert_secret_free(message, world.operator)
    assert not access.is_verified(world.ns)


def test_preflight_refuses_a_role_scoped_to_another_namespace(world: World) -> None:
    """The outside probe alone would pass such a role: its grant misses our probe."""
    world.admin.put_role_policy(
        f"agentsession-{world.ns}", namespace_policy(world.bucket, PREFIX, world.other_ns)
    )
    access = world.access()
    with pytest.raises(IsolationRefused, match=r"cannot read .* in the namespace's own prefix"):
        vend(access, world.ns)
    assert not access.is_verified(world.ns)


def test_preflight_result_is_cached_for_its_ttl_and_refusals_are_not(world: World) -> None:
    access = world.access()
    vend(access, world.ns)
    world.set_role_policy(world.ns, f"{PREFIX}/*")  # widened after the check

    # Within the TTL nothing is checked: these credentials could read the probe, which the
    # preflight would have refused.
    world.clock.advance(TTL - 1)
    widened = vend(access, world.ns)
    probe = f"{PREFIX}/{world.ns}.isolation-probe"
    assert world.s3(widened).get_object(Bucket=world.bucket, Key=probe)["Body"].read()

    world.clock.advance(1)  # the TTL is up: checked again, and refused
    with pytest.raises(IsolationRefused, match="is wider than"):
        vend(access, world.ns)

    world.set_role_policy(world.ns, f"{PREFIX}/{world.ns}/*")  # fixed: no wait for a TTL
    vend(access, world.ns)
    assert access.is_verified(world.ns)

    world.set_role_policy(world.ns, "*")
    access.forget(world.ns)  # the controller's way to force a check
    with pytest.raises(IsolationRefused):
        vend(access, world.ns)


def test_concurrent_first_vends_of_a_namespace_all_succeed(world: World) -> None:
    """The controller vends for several sessions of a new namespace at once: their preflights
    write the same probes, so unserialized they would read each other's nonces."""
    access = world.access()

    async def many() -> list[VendedCredentials]:
        return await asyncio.gather(
            *(access.vend(world.ns, f"session-{i}", 3600) for i in range(8))
        )

    vended = asyncio.run(many())
    assert len({credentials.access_key_id for credentials in vended}) == 8
    assert access.is_verified(world.ns)


def test_a_role_that_does_not_exist_is_refused(world: World) -> None:
    """moto issues credentials for a missing role (AWS refuses the AssumeRole), which only fail
    when used: the preflight is what stops them."""
    access = world.access(f"arn:aws:iam::{ACCOUNT_ID}:role/agentsession-ghost-{{namespace}}")
    with pytest.raises(StoreAccessError, match=f"preflight of namespace '{world.ns}'"):
        vend(access, world.ns)
    assert not access.is_verified(world.ns)


def test_assume_role_refused_is_a_store_access_error_without_secrets(world: World) -> None:
    """The operator may assume agentsession-* roles only."""
    access = world.access(f"arn:aws:iam::{ACCOUNT_ID}:role/other-{{namespace}}")
    with pytest.raises(StoreAccessError) as info:
        vend(access, world.ns)
    message = str(info.value)
    assert not isinstance(info.value, IsolationRefused)
    assert message.startswith(
        f"STS AssumeRole of arn:aws:iam::{ACCOUNT_ID}:role/other-{world.ns} for namespace "
        f"'{world.ns}' failed: AccessDenied (HTTP 403) User: {user_arn('')}"
    )
    assert "is not authorized to perform: sts:AssumeRole" in message
    assert_secret_free(message, world.operator)
    assert info.value.__cause__ is None


# --- the pure helpers ---------------------------------------------------------------------------


def test_role_arn_templating() -> None:
    assert role_arn(TEMPLATE, "team-a") == f"arn:aws:iam::{ACCOUNT_ID}:role/agentsession-team-a"
    assert role_arn(f"arn:aws:iam::{ACCOUNT_ID}:role/tenants/{{namespace}}/store", "t") == (
        f"arn:aws:iam::{ACCOUNT_ID}:role/tenants/t/store"
    )
    # One role for all: accepted, the preflight decides whether it isolates.
    shared = f"arn:aws:iam::{ACCOUNT_ID}:role/agentsession"
    assert role_arn(shared, "team-a") == shared
    for template in (
        f"arn:aws:iam::{ACCOUNT_ID}:role/agentsession-{{ns}}",  # a typo of the placeholder
        f"arn:aws:iam::{ACCOUNT_ID}:role/{{namespace.__class__}}",  # str.format would expand it
        f"arn:aws:iam::{ACCOUNT_ID}:user/agentsession-{{namespace}}",  # not a role
        "agentsession-{namespace}",  # a name, not an ARN
    ):
        with pytest.raises(ValueError, match="role ARN template"):
            role_arn(template, "team-a")
    with pytest.raises(InvalidKeyError):
        role_arn(TEMPLATE, "Team_A")  # not a namespace name: never reaches an ARN


def test_role_session_name_is_valid_for_sts_and_tells_sessions_apart() -> None:
    assert role_session_name("team-a", "review-42") == "team-a.review-42"
    long_ns = "n" * 63
    first = role_session_name(long_ns, "s" * 200 + "-1")
    second = role_session_name(long_ns, "s" * 200 + "-2")
    for name in (first, second, role_session_name("team-a", "odd name/with:chars")):
        assert 2 <= len(name) <= 64
        assert all(c.isalnum() or c in "+=,.@-_" for c in name)
    assert first != second
    assert first.startswith("n" * 40)
    with pytest.raises(ValueError, match="empty"):
        role_session_name("team-a", "")


def test_a_long_session_name_is_accepted_by_sts(world: World) -> None:
    credentials = vend(world.access(), world.ns, session_name="s" * 253)
    whoami = AwsCredentials(
        credentials.access_key_id, credentials.secret_access_key, credentials.session_token
    ).client("sts", world.endpoint_url)
    arn = whoami.get_caller_identity()["Arn"]
    assert arn.endswith("/" + role_session_name(world.ns, "s" * 253))


def test_namespace_policy_is_the_documented_one() -> None:
    """The operator's session policy is the role policy docs/s3-isolation-moto.md recommends
    (the tests provision roles with that one)."""
    for prefix in ("transcripts", "a/b/", ""):
        assert operator_namespace_policy("bucket", prefix, "team-a") == namespace_policy(
            "bucket", prefix, "team-a"
        )
    policy = operator_namespace_policy("bucket", "transcripts/", "team-a")
    assert policy["Statement"][0]["Resource"] == "arn:aws:s3:::bucket/transcripts/team-a/*"
    assert operator_namespace_policy("b", "", "t")["Statement"][0]["Resource"] == (
        "arn:aws:s3:::b/t/*"
    )
    widest = operator_namespace_policy("b" * 63, "p" * 255, "n" * 63)
    assert len(json.dumps(widest, separators=(",", ":"))) < 2048


def test_start_up_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="s3:// store URL"):
        StoreAccess("file:///tmp/store", TEMPLATE)
    with pytest.raises(ValueError, match="max_duration_seconds"):
        StoreAccess("s3://bucket/p", TEMPLATE, max_duration_seconds=899)
    with pytest.raises(ValueError, match="max_duration_seconds"):
        StoreAccess("s3://bucket/p", TEMPLATE, max_duration_seconds=43201)
    with pytest.raises(ValueError, match="role ARN template"):
        StoreAccess("s3://bucket/p", "arn:aws:iam::1:role/{ns}")


# --- attempt reports ----------------------------------------------------------------------------


def test_attempt_report_round_trip(world: World) -> None:
    """The gateway saves its report with the vended credentials at its own report key; the
    operator finds it there with its own credentials."""
    access = world.access()
    world.use_env(vend(access, world.ns))
    gateway = S3Backend(
        world.bucket, namespace_root(PREFIX, world.ns), make_s3_client(max_pool_connections=1)
    )
    report = GatewayReport(
        budget_usd=Decimal("5"), spent_usd=Decimal("1.25"), requests=3, ended="running"
    )
    try:
        gateway.write(
            f"{LOGICAL_PROJECT}/sess-1/{GATEWAY_DIR}/attempt-2.json",
            json.dumps(report.to_wire()).encode(),
        )
    finally:
        gateway.close()

    read = asyncio.run(access.read_attempt_report(world.ns, "sess-1", "attempt-2"))
    assert read is not None
    assert GatewayReport.model_validate(read) == report
    assert asyncio.run(access.read_attempt_report(world.ns, "sess-1", "attempt-3")) is None
    assert asyncio.run(access.read_attempt_report(world.other_ns, "sess-1", "attempt-2")) is None


@pytest.mark.parametrize(
    ("body", "why"),
    [
        pytest.param(b"{not json", "is not JSON", id="not-json"),
        pytest.param(b"[1, 2]", "is not a JSON object", id="not-an-object"),
        pytest.param(b" " * (256 * 1024) + b"{}", "not a gateway report", id="oversized"),
    ],
)
def test_attempt_report_that_is_not_one_is_an_error(world: World, body: bytes, why: str) -> None:
    access = world.access()
    key = access.report_key(world.ns, "sess-1", "attempt-1")
    assert key == world.key(world.ns, "sessions/sess-1/gateway/attempt-1.json")
    world.admin_s3.put_object(Bucket=world.bucket, Key=key, Body=body)
    with pytest.raises(StoreAccessError, match=why):
        asyncio.run(access.read_attempt_report(world.ns, "sess-1", "attempt-1"))


def test_attempt_report_ids_are_checked_before_any_io() -> None:
    access = StoreAccess(
        "s3://bucket/p", TEMPLATE, s3_endpoint_url="http://127.0.0.1:9", region=REGION
    )
    try:
        for session_id, attempt_id in (("..", "a"), ("s", "../../x"), ("s/t", "a")):
            with pytest.raises(InvalidKeyError):
                asyncio.run(access.read_attempt_report("team-a", session_id, attempt_id))
    finally:
        access.close()


def test_attempt_report_read_failure_is_a_store_access_error(world: World) -> None:
    """The operator's identity has no grant on another bucket: refused, not 'absent'."""
    other = world.admin.create_bucket().name
    world.bucket = other
    access = world.access()
    with pytest.raises(StoreAccessError, match=r"AccessDenied \(HTTP 403\)"):
        asyncio.run(access.read_attempt_report(world.ns, "sess-1", "attempt-1"))


# --- the gateway's store with vended credentials ------------------------------------------------

KEY: SessionKey = {"project_key": LOGICAL_PROJECT, "session_id": "sess-1"}


def entries(tag: str, count: int) -> list[SessionStoreEntry]:
    return [cast("SessionStoreEntry", {"type": "user", "uuid": f"{tag}-{i}"}) for i in range(count)]


def test_transcript_store_lives_its_whole_life_in_its_namespace(world: World) -> None:
    """append, load, compact and delete through the gateway's S3Backend, configured (like the
    gateway) from the standard environment holding the vended credentials."""
    credentials = vend(world.access(), world.ns)
    world.use_env(credentials)
    session_dir = world.key(world.ns, f"{LOGICAL_PROJECT}/sess-1/")
    outside_before = [key for key in world.keys(f"{PREFIX}/") if not key.startswith(session_dir)]

    async def scenario() -> None:
        async with open_store(world.url, world.ns) as store:
            await store.check()
            for tag in ("a", "b", "c"):
                await store.append(KEY, entries(tag, 2))
            expected = [f"{tag}-{i}" for tag in ("a", "b", "c") for i in range(2)]
            loaded = await store.load(KEY)
            assert [entry["uuid"] for entry in loaded or []] == expected

            await store.compact(KEY)  # writes one object, deletes the three parts
            main = [key for key in world.keys(session_dir) if "/main/" in key]
            assert len(main) == 1
            assert main[0].rsplit("/", 1)[1].startswith("compacted-")
            loaded = await store.load(KEY)
            assert [entry["uuid"] for entry in loaded or []] == expected

            await store.delete(KEY)
            assert world.keys(session_dir) == []
            assert await store.load(KEY) is None

    asyncio.run(scenario())
    assert [key for key in world.keys(f"{PREFIX}/") if not key.startswith(session_dir)] == (
        outside_before
    )

    # What made compact and delete work: moto refuses these credentials every key of a
    # DeleteObjects, their own included, and the backend fell back to DeleteObject.
    own = world.key(world.ns, "seed.json")
    refused = world.s3(credentials).delete_objects(
        Bucket=world.bucket, Delete={"Objects": [{"Key": own}]}
    )
    assert [(e["Key"], e["Code"]) for e in refused["Errors"]] == [(own, "AccessDenied")]
    assert world.exists(own)


def test_backend_delete_fallback_still_refuses_other_namespaces(world: World) -> None:
    """The per-key retry is authorized per key: another namespace's objects stay."""
    world.use_env(vend(world.access(), world.ns))
    trespasser = S3Backend(
        world.bucket, namespace_root(PREFIX, world.other_ns), make_s3_client(max_pool_connections=1)
    )
    try:
        with pytest.raises(
            StoreError,
            match=rf"S3 delete of s3://{world.bucket}/{PREFIX}/{world.other_ns}/seed.json failed: "
            r"AccessDenied \(HTTP 403\)",
        ):
            trespasser.delete(["seed.json"])
    finally:
        trespasser.close()
    assert world.exists(world.key(world.other_ns, "seed.json"))
