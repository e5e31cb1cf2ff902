"""Per-namespace S3 credentials against moto's server with IAM enforcement, over HTTP.

Credentials come from STS AssumeRole on a per-namespace role (`agentsession-<namespace>`) whose
role policy is prefix-scoped; the same policy also goes in as the session policy. Tests named
`test_moto_gap_*` pin down what moto does NOT enforce (docs/s3-isolation-moto.md): if one fails,
moto changed and the doc must change with it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from agentsession_contract.store import StoreError, TranscriptStore
from agentsession_gateway.s3 import open_store
from tests.support.s3server import (
    ACCESS_KEY_ID,
    ACCOUNT_ID,
    REGION,
    SECRET_ACCESS_KEY,
    AwsCredentials,
    IamAdmin,
    MotoServer,
    assume_role,
    namespace_policy,
    namespace_root,
    role_arn,
    user_arn,
    vending_policy,
)

pytestmark = pytest.mark.s3

PREFIX = "transcripts"
KEY: dict[str, Any] = {"project_key": "-workspace", "session_id": "sess-1"}


@pytest.fixture(scope="module")
def iam_server() -> Iterator[tuple[MotoServer, IamAdmin]]:
    """A moto server of this module's own (enforcement is process-global), IAM enforced."""
    with MotoServer() as server:
        admin = server.enforce_iam()
        yield server, admin
        admin.close()


@dataclass
class Tenancy:
    """One bucket shared by namespaces; a vending user; one role per namespace."""

    endpoint_url: str
    admin: IamAdmin
    bucket: str
    vending: AwsCredentials
    vending_name: str
    ns: str  # the tenant under test
    other_ns: str  # another tenant of the same bucket
    sibling_ns: str  # a namespace whose name starts with ns: catches a missing '/' in policies

    def key(self, namespace: str, name: str) -> str:
        return namespace_root(PREFIX, namespace) + name

    def role(self, namespace: str) -> str:
        return role_arn(f"agentsession-{namespace}")

    def credentials(self, namespace: str | None = None, **kwargs: Any) -> AwsCredentials:
        """What the operator would vend for `namespace`: its role plus the session policy."""
        namespace = namespace or self.ns
        kwargs.setdefault("policy", namespace_policy(self.bucket, PREFIX, namespace))
        return assume_role(
            self.endpoint_url, self.vending, self.role(namespace), "sess-1", **kwargs
        )

    def s3(self, credentials: AwsCredentials) -> Any:
        return credentials.client("s3", self.endpoint_url)

    @property
    def admin_s3(self) -> Any:
        return self.admin.client("s3")

    def exists(self, key: str) -> bool:
        try:
            self.admin_s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "404":
                return False
            raise
        return True

    def body(self, key: str) -> bytes:
        data: bytes = self.admin_s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return data


@pytest.fixture
def tenancy(iam_server: tuple[MotoServer, IamAdmin]) -> Tenancy:
    server, admin = iam_server
    tag = uuid.uuid4().hex[:8]
    bucket = admin.create_bucket().name
    vending_name = f"vending-{tag}"
    vending = admin.create_user(vending_name, vending_policy(bucket, role_arn("agentsession-*")))
    world = Tenancy(
        endpoint_url=server.endpoint_url,
        admin=admin,
        bucket=bucket,
        vending=vending,
        vending_name=vending_name,
        ns=f"a{tag}",
        other_ns=f"b{tag}",
        sibling_ns=f"a{tag}-x",
    )
    for namespace in (world.ns, world.other_ns, world.sibling_ns):
        admin.create_role(
            f"agentsession-{namespace}",
            [user_arn(vending_name)],
            namespace_policy(bucket, PREFIX, namespace),
        )
    s3 = admin.client("s3")
    for namespace in (world.ns, world.other_ns, world.sibling_ns):
        s3.put_object(Bucket=bucket, Key=world.key(namespace, "seed.json"), Body=namespace.encode())
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/outside.json", Body=b"prefix level")
    s3.put_object(Bucket=bucket, Key="root.json", Body=b"bucket root")
    return world


def client_error(call: Callable[[], object]) -> dict[str, Any]:
    """The error response of a call that must fail."""
    with pytest.raises(ClientError) as info:
        call()
    response: dict[str, Any] = info.value.response
    return response


def error_of(response: dict[str, Any]) -> tuple[str, str, int]:
    error = response["Error"]
    return error["Code"], error.get("Message", ""), response["ResponseMetadata"]["HTTPStatusCode"]


ACCESS_DENIED = ("AccessDenied", "Access Denied", 403)


def not_authorized(principal: str, action: str) -> tuple[str, str, int]:
    """moto's IAM/STS denial, as it words it."""
    return ("AccessDenied", f"User: {principal} is not authorized to perform: {action}", 403)


def session_arn(namespace: str, session: str = "sess-1") -> str:
    return f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/agentsession-{namespace}/{session}"


# --- enforcement and identities -----------------------------------------------------------------


def test_enforcement_refuses_keys_iam_does_not_know(tenancy: Tenancy) -> None:
    root = AwsCredentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    s3 = root.client("s3", tenancy.endpoint_url)
    assert error_of(client_error(lambda: s3.list_objects_v2(Bucket=tenancy.bucket))) == (
        "InvalidAccessKeyId",
        "The AWS Access Key Id you provided does not exist in our records.",
        403,
    )
    iam = root.client("iam", tenancy.endpoint_url)
    assert error_of(client_error(iam.list_users)) == (
        "InvalidClientTokenId",
        "The security token included in the request is invalid.",
        403,
    )
    # The identities IAM knows still work: enforcement is on, not a blanket refusal.
    assert tenancy.admin_s3.list_objects_v2(Bucket=tenancy.bucket)["KeyCount"] == 5


def test_assumed_role_credentials_work_only_with_their_session_token(tenancy: Tenancy) -> None:
    good = tenancy.credentials()
    assert good.access_key_id.startswith("ASIA")
    assert good.session_token
    own = tenancy.key(tenancy.ns, "seed.json")
    assert tenancy.s3(good).get_object(Bucket=tenancy.bucket, Key=own)["Body"].read() == (
        tenancy.ns.encode()
    )
    whoami = good.client("sts", tenancy.endpoint_url).get_caller_identity()
    assert whoami["Arn"] == session_arn(tenancy.ns)

    def get(credentials: AwsCredentials) -> Callable[[], object]:
        return lambda: tenancy.s3(credentials).get_object(Bucket=tenancy.bucket, Key=own)

    without_token = AwsCredentials(good.access_key_id, good.secret_access_key)
    assert error_of(client_error(get(without_token)))[::2] == ("InvalidAccessKeyId", 403)
    wrong_token = AwsCredentials(good.access_key_id, good.secret_access_key, "forged")
    assert error_of(client_error(get(wrong_token))) == (
        "InvalidToken",
        "The provided token is malformed or otherwise invalid.",
        400,
    )
    wrong_secret = AwsCredentials(good.access_key_id, "guessed", good.session_token)
    assert error_of(client_error(get(wrong_secret)))[::2] == ("SignatureDoesNotMatch", 403)


# --- STS and IAM --------------------------------------------------------------------------------


def test_vending_identity_assumes_only_roles_its_policy_names(tenancy: Tenancy) -> None:
    name = f"other-{tenancy.ns}"  # trusts the vending user, but is not agentsession-*
    tenancy.admin.create_role(
        name, [user_arn(tenancy.vending_name)], namespace_policy(tenancy.bucket, PREFIX, "x")
    )
    response = client_error(
        lambda: assume_role(tenancy.endpoint_url, tenancy.vending, role_arn(name), "sess-1")
    )
    assert error_of(response) == not_authorized(user_arn(tenancy.vending_name), "sts:AssumeRole")


@pytest.mark.parametrize(
    "trusted",
    [
        pytest.param(lambda t: user_arn(f"someone-else-{t.ns}"), id="another-user"),
        # AWS would let the vending user in here (its own policy grants sts:AssumeRole); moto
        # compares principal ARNs literally, so name the vending identity itself.
        pytest.param(lambda t: f"arn:aws:iam::{ACCOUNT_ID}:root", id="account-root"),
    ],
)
def test_role_trust_policy_must_name_the_vending_identity(
    tenancy: Tenancy, trusted: Callable[[Tenancy], str]
) -> None:
    name = f"agentsession-{tenancy.ns}-untrusted"
    tenancy.admin.create_role(
        name, [trusted(tenancy)], namespace_policy(tenancy.bucket, PREFIX, tenancy.ns)
    )
    response = client_error(
        lambda: assume_role(tenancy.endpoint_url, tenancy.vending, role_arn(name), "sess-1")
    )
    assert error_of(response) == not_authorized(user_arn(tenancy.vending_name), "sts:AssumeRole")


def test_neither_tenant_nor_vending_identity_can_change_iam_or_hop_roles(tenancy: Tenancy) -> None:
    tenant = tenancy.credentials()
    widen = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
    )
    for who, principal in (
        (tenant, session_arn(tenancy.ns)),
        (tenancy.vending, user_arn(tenancy.vending_name)),
    ):
        iam = who.client("iam", tenancy.endpoint_url)
        response = client_error(
            lambda iam=iam: iam.put_role_policy(
                RoleName=f"agentsession-{tenancy.ns}", PolicyName="widen", PolicyDocument=widen
            )
        )
        assert error_of(response) == not_authorized(principal, "iam:PutRolePolicy")
    # A tenant cannot turn its credentials into another namespace's.
    response = client_error(
        lambda: assume_role(
            tenancy.endpoint_url, tenant, tenancy.role(tenancy.other_ns), "hop-sess"
        )
    )
    assert error_of(response) == not_authorized(session_arn(tenancy.ns), "sts:AssumeRole")


def test_attached_managed_role_policy_scopes_like_an_inline_one(tenancy: Tenancy) -> None:
    """moto evaluates the role's inline and attached policies (not the session policy)."""
    name = f"agentsession-{tenancy.ns}-managed"
    tenancy.admin.create_role(name, [user_arn(tenancy.vending_name)])
    iam = tenancy.admin.client("iam")
    policy_arn = iam.create_policy(
        PolicyName=f"store-{tenancy.ns}",
        PolicyDocument=json.dumps(namespace_policy(tenancy.bucket, PREFIX, tenancy.ns)),
    )["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=name, PolicyArn=policy_arn)
    s3 = tenancy.s3(assume_role(tenancy.endpoint_url, tenancy.vending, role_arn(name), "s1"))
    own = tenancy.key(tenancy.ns, "seed.json")
    assert s3.get_object(Bucket=tenancy.bucket, Key=own)["Body"].read() == tenancy.ns.encode()
    theirs = tenancy.key(tenancy.other_ns, "seed.json")
    assert error_of(client_error(lambda: s3.get_object(Bucket=tenancy.bucket, Key=theirs))) == (
        ACCESS_DENIED
    )


# --- object isolation ---------------------------------------------------------------------------

OUTSIDE_KEYS = [
    pytest.param(lambda t: t.key(t.other_ns, "seed.json"), id="other-namespace"),
    pytest.param(lambda t: t.key(t.other_ns, "missing.json"), id="other-namespace-missing"),
    pytest.param(lambda t: t.key(t.sibling_ns, "seed.json"), id="sibling-name-prefix"),
    pytest.param(lambda t: f"{PREFIX}/outside.json", id="prefix-level"),
    pytest.param(lambda t: "root.json", id="bucket-root"),
]


@pytest.mark.parametrize("outside", OUTSIDE_KEYS)
def test_scoped_credentials_cannot_read_outside_their_namespace(
    tenancy: Tenancy, outside: Callable[[Tenancy], str]
) -> None:
    s3, key = tenancy.s3(tenancy.credentials()), outside(tenancy)
    get = client_error(lambda: s3.get_object(Bucket=tenancy.bucket, Key=key))
    assert error_of(get) == ACCESS_DENIED
    # HEAD has no body: botocore reports the bare status. Missing keys answer the same 403,
    # so denials do not reveal which keys exist.
    head = client_error(lambda: s3.head_object(Bucket=tenancy.bucket, Key=key))
    assert error_of(head) == ("403", "Forbidden", 403)


WRITES = [
    pytest.param(lambda s3, b, k, etag: s3.put_object(Bucket=b, Key=k, Body=b"x"), id="put"),
    pytest.param(
        lambda s3, b, k, etag: s3.put_object(Bucket=b, Key=k, Body=b"x", IfNoneMatch="*"),
        id="put-if-none-match",
    ),
    # The right ETag: the write would succeed were it not for the policy.
    pytest.param(
        lambda s3, b, k, etag: s3.put_object(Bucket=b, Key=k, Body=b"x", IfMatch=etag),
        id="put-if-match",
    ),
    pytest.param(
        lambda s3, b, k, etag: s3.create_multipart_upload(Bucket=b, Key=k), id="multipart"
    ),
]


@pytest.mark.parametrize("write", WRITES)
@pytest.mark.parametrize(
    "name", [pytest.param("seed.json", id="existing"), pytest.param("new.json", id="new")]
)
def test_scoped_credentials_cannot_write_into_another_namespace(
    tenancy: Tenancy, write: Callable[[Any, str, str, str], object], name: str
) -> None:
    s3 = tenancy.s3(tenancy.credentials())
    key = tenancy.key(tenancy.other_ns, name)
    etag = tenancy.admin_s3.head_object(
        Bucket=tenancy.bucket, Key=tenancy.key(tenancy.other_ns, "seed.json")
    )["ETag"]
    assert error_of(client_error(lambda: write(s3, tenancy.bucket, key, etag))) == ACCESS_DENIED
    assert tenancy.body(tenancy.key(tenancy.other_ns, "seed.json")) == tenancy.other_ns.encode()
    assert not tenancy.exists(tenancy.key(tenancy.other_ns, "new.json"))


def test_scoped_credentials_cannot_delete_another_namespace_object(tenancy: Tenancy) -> None:
    s3 = tenancy.s3(tenancy.credentials())
    victim = tenancy.key(tenancy.other_ns, "seed.json")
    assert error_of(client_error(lambda: s3.delete_object(Bucket=tenancy.bucket, Key=victim))) == (
        ACCESS_DENIED
    )
    # DeleteObjects answers 200 and reports every key as denied.
    response = s3.delete_objects(
        Bucket=tenancy.bucket, Delete={"Objects": [{"Key": victim}], "Quiet": True}
    )
    assert response["Errors"] == [
        {"Key": victim, "Code": "AccessDenied", "Message": "Access Denied"}
    ]
    assert "Deleted" not in response
    assert tenancy.exists(victim)


def test_scoped_credentials_read_write_and_delete_inside_their_namespace(
    tenancy: Tenancy,
) -> None:
    """The baseline the denials are measured against: the same calls succeed inside."""
    s3, bucket = tenancy.s3(tenancy.credentials()), tenancy.bucket
    key = tenancy.key(tenancy.ns, "new.json")
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"1", IfNoneMatch="*")["ETag"]
    again = client_error(lambda: s3.put_object(Bucket=bucket, Key=key, Body=b"2", IfNoneMatch="*"))
    assert error_of(again)[::2] == ("PreconditionFailed", 412)  # authorized, then the condition
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"3", IfMatch=etag)["ETag"]
    s3.put_object(Bucket=bucket, Key=key, Body=b"4")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"4"
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == 1
    missing = client_error(lambda: s3.get_object(Bucket=bucket, Key=tenancy.key(tenancy.ns, "no")))
    assert error_of(missing)[::2] == ("NoSuchKey", 404)  # inside, absence is not hidden
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=namespace_root(PREFIX, tenancy.ns))
    assert sorted(item["Key"] for item in listed["Contents"]) == [
        tenancy.key(tenancy.ns, "new.json"),
        tenancy.key(tenancy.ns, "seed.json"),
    ]
    s3.delete_object(Bucket=bucket, Key=key)
    assert not tenancy.exists(key)


# --- the transcript store -----------------------------------------------------------------------


def store_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, t: Tenancy
) -> Callable[[AwsCredentials], None]:
    """Point boto3's standard environment (what the gateway reads) at the server."""
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    empty = tmp_path_factory.mktemp("aws") / "none"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_ENDPOINT_URL", t.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)

    def use(credentials: AwsCredentials) -> None:
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        for name, value in credentials.env().items():
            monkeypatch.setenv(name, value)

    return use


@pytest.fixture
def use_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, tenancy: Tenancy
) -> Callable[[AwsCredentials], None]:
    return store_env(monkeypatch, tmp_path_factory, tenancy)


def entries(tag: str, count: int) -> list[dict[str, Any]]:
    return [{"type": "user", "uuid": f"{tag}-{i}", "n": i} for i in range(count)]


def store_keys(t: Tenancy) -> list[str]:
    listed = t.admin_s3.list_objects_v2(Bucket=t.bucket, Prefix=f"{PREFIX}/")
    return sorted(item["Key"] for item in listed.get("Contents", []))


def test_store_works_inside_its_namespace_with_scoped_credentials(
    tenancy: Tenancy, use_credentials: Callable[[AwsCredentials], None]
) -> None:
    """check, ListObjectsV2 (Prefix, with and without Delimiter), PutObject plain and with
    IfNoneMatch / IfMatch, GetObject: everything but DeleteObjects (see the moto gaps)."""
    use_credentials(tenancy.credentials())
    before = store_keys(tenancy)

    async def scenario() -> None:
        async with open_store(f"s3://{tenancy.bucket}/{PREFIX}", tenancy.ns) as store:
            await store.check()
            await store.append(KEY, entries("first", 2))  # sidecar: conditional create
            await store.append(KEY, entries("second", 2))  # sidecar: If-Match
            await store.append({**KEY, "subpath": "subagents/agent-1"}, entries("sub", 1))
            await store.put_result(KEY["project_key"], KEY["session_id"], b"{}")
            loaded = await store.load(KEY)
            assert [entry["uuid"] for entry in loaded or []] == [
                "first-0",
                "first-1",
                "second-0",
                "second-1",
            ]
            sessions = await store.list_sessions(KEY["project_key"])
            assert [session["session_id"] for session in sessions] == [KEY["session_id"]]
            summaries = await store.list_session_summaries(KEY["project_key"])
            assert [summary["session_id"] for summary in summaries] == [KEY["session_id"]]
            assert await store.list_subkeys(KEY) == ["subagents/agent-1"]

    asyncio.run(scenario())
    written = sorted(set(store_keys(tenancy)) - set(before))
    assert written
    assert all(key.startswith(namespace_root(PREFIX, tenancy.ns)) for key in written)


def test_store_on_another_namespace_fails_with_access_denied(
    tenancy: Tenancy, use_credentials: Callable[[AwsCredentials], None]
) -> None:
    """A gateway given the wrong namespace's store: every read and write is refused."""
    url = f"s3://{tenancy.bucket}/{PREFIX}"
    use_credentials(tenancy.credentials(tenancy.other_ns))

    async def seed() -> None:
        async with open_store(url, tenancy.other_ns) as store:
            await store.append(KEY, entries("theirs", 2))

    asyncio.run(seed())
    before = store_keys(tenancy)
    use_credentials(tenancy.credentials(tenancy.ns))

    async def trespass(action: Callable[[TranscriptStore], Any]) -> str:
        async with open_store(url, tenancy.other_ns) as store:
            with pytest.raises(StoreError) as info:
                await action(store)
        return str(info.value)

    # load lists first (moto lets that through, see the gaps) and is stopped at GetObject.
    assert "AccessDenied (HTTP 403)" in asyncio.run(trespass(lambda store: store.load(KEY)))
    assert "AccessDenied (HTTP 403)" in asyncio.run(
        trespass(lambda store: store.append(KEY, entries("mine", 1)))
    )
    assert "AccessDenied (HTTP 403)" in asyncio.run(
        trespass(lambda store: store.put_result(KEY["project_key"], KEY["session_id"], b"{}"))
    )
    assert "AccessDenied" in asyncio.run(trespass(lambda store: store.delete(KEY)))
    assert store_keys(tenancy) == before


# --- preflight ----------------------------------------------------------------------------------


def probe_key(namespace: str) -> str:
    """A key no namespace owns (namespace names have no '.') that over-broad grants reach."""
    return f"{PREFIX}/{namespace}.isolation-probe"


@pytest.mark.parametrize(
    ("objects", "isolated"),
    [
        pytest.param(lambda t: f"{PREFIX}/{t.ns}/*", True, id="namespace-prefix"),
        pytest.param(lambda t: f"{PREFIX}/{t.ns}*", False, id="missing-slash"),
        pytest.param(lambda t: f"{PREFIX}/*", False, id="whole-prefix"),
        pytest.param(lambda t: "*", False, id="whole-bucket"),
    ],
)
def test_sentinel_read_probe_tells_isolated_credentials_from_over_broad_ones(
    tenancy: Tenancy, objects: Callable[[Tenancy], str], isolated: bool
) -> None:
    """The preflight moto can back: the vending identity writes a sentinel next to the
    namespace's prefix; the vended credentials must be refused reading it (and must be able to
    use their own prefix)."""
    tenancy.admin_s3.put_object(Bucket=tenancy.bucket, Key=probe_key(tenancy.ns), Body=b"probe")
    policy = namespace_policy(tenancy.bucket, PREFIX, tenancy.ns)
    policy["Statement"][0]["Resource"] = f"arn:aws:s3:::{tenancy.bucket}/{objects(tenancy)}"
    tenancy.admin.put_role_policy(f"agentsession-{tenancy.ns}", policy)
    s3 = tenancy.s3(tenancy.credentials(policy=policy))

    s3.get_object(Bucket=tenancy.bucket, Key=tenancy.key(tenancy.ns, "seed.json"))

    def probe() -> Any:
        return s3.get_object(Bucket=tenancy.bucket, Key=probe_key(tenancy.ns))

    if isolated:
        assert error_of(client_error(probe)) == ACCESS_DENIED
    else:
        assert probe()["Body"].read() == b"probe"  # the probe catches this policy


# --- what moto does not enforce -----------------------------------------------------------------


def test_moto_gap_list_prefix_condition_is_not_evaluated(tenancy: Tenancy) -> None:
    """ListBucket is all-or-nothing per bucket: the s3:prefix condition is ignored, so working
    credentials can list other namespaces' keys and a listing preflight cannot pass on moto."""
    s3 = tenancy.s3(tenancy.credentials())
    theirs = s3.list_objects_v2(
        Bucket=tenancy.bucket, Prefix=namespace_root(PREFIX, tenancy.other_ns), Delimiter="/"
    )
    assert [item["Key"] for item in theirs["Contents"]] == [
        tenancy.key(tenancy.other_ns, "seed.json")
    ]
    assert s3.list_objects_v2(Bucket=tenancy.bucket)["KeyCount"] == 5
    # StringEquals, which moto does implement, is ignored just the same: it has no s3:prefix
    # value to compare.
    equals = namespace_policy(tenancy.bucket, PREFIX, tenancy.ns)
    equals["Statement"][1]["Condition"] = {
        "StringEquals": {"s3:prefix": namespace_root(PREFIX, tenancy.ns)}
    }
    tenancy.admin.put_role_policy(f"agentsession-{tenancy.ns}", equals)
    s3 = tenancy.s3(tenancy.credentials(policy=equals))
    assert s3.list_objects_v2(Bucket=tenancy.bucket, Prefix=f"{PREFIX}/")["KeyCount"] == 4
    # A Deny with a condition always applies, so it refuses listing inside the namespace too.
    deny = namespace_policy(tenancy.bucket, PREFIX, tenancy.ns)
    deny["Statement"].append(
        {
            "Effect": "Deny",
            "Action": "s3:ListBucket",
            "Resource": f"arn:aws:s3:::{tenancy.bucket}",
            "Condition": {"StringNotLike": {"s3:prefix": f"{namespace_root(PREFIX, tenancy.ns)}*"}},
        }
    )
    tenancy.admin.put_role_policy(f"agentsession-{tenancy.ns}", deny)
    s3 = tenancy.s3(tenancy.credentials(policy=deny))
    own = namespace_root(PREFIX, tenancy.ns)
    response = client_error(lambda: s3.list_objects_v2(Bucket=tenancy.bucket, Prefix=own))
    assert error_of(response) == ACCESS_DENIED


def test_moto_gap_session_policy_is_ignored(tenancy: Tenancy) -> None:
    """Only the role's own policies count: one shared role cannot be narrowed per namespace."""
    shared = f"agentsession-shared-{tenancy.ns}"
    tenancy.admin.create_role(
        shared,
        [user_arn(tenancy.vending_name)],
        vending_policy(tenancy.bucket, role_arn("none")),
    )
    narrowed = assume_role(
        tenancy.endpoint_url,
        tenancy.vending,
        role_arn(shared),
        "sess-1",
        policy=namespace_policy(tenancy.bucket, PREFIX, tenancy.ns),
    )
    s3 = tenancy.s3(narrowed)
    theirs = tenancy.key(tenancy.other_ns, "seed.json")
    assert s3.get_object(Bucket=tenancy.bucket, Key=theirs)["Body"].read() == (
        tenancy.other_ns.encode()
    )
    # Nor is a session policy even parsed.
    garbage = tenancy.vending.client("sts", tenancy.endpoint_url).assume_role(
        RoleArn=role_arn(shared), RoleSessionName="sess-2", Policy="not a policy"
    )
    assert garbage["Credentials"]["AccessKeyId"].startswith("ASIA")


def test_moto_gap_copy_source_is_not_authorized(tenancy: Tenancy) -> None:
    """CopyObject checks s3:PutObject on the target only (AWS also requires s3:GetObject on the
    source): a tenant can copy another namespace's object into its own prefix and read it."""
    s3 = tenancy.s3(tenancy.credentials())
    stolen = tenancy.key(tenancy.ns, "stolen.json")
    s3.copy_object(
        Bucket=tenancy.bucket,
        Key=stolen,
        CopySource={"Bucket": tenancy.bucket, "Key": tenancy.key(tenancy.other_ns, "seed.json")},
    )
    assert s3.get_object(Bucket=tenancy.bucket, Key=stolen)["Body"].read() == (
        tenancy.other_ns.encode()
    )


def test_moto_gap_batch_delete_is_authorized_per_bucket(
    tenancy: Tenancy, use_credentials: Callable[[AwsCredentials], None]
) -> None:
    """DeleteObjects checks s3:DeleteObject on the bucket ARN, not per key: with the strict
    policy it deletes nothing, the caller's own keys included (so S3Backend.delete retries
    refused keys with DeleteObject), and with a grant on the bucket ARN it deletes any key,
    another namespace's too."""
    credentials = tenancy.credentials()
    own = tenancy.key(tenancy.ns, "seed.json")
    refused = tenancy.s3(credentials).delete_objects(
        Bucket=tenancy.bucket, Delete={"Objects": [{"Key": own}]}
    )
    assert [(e["Key"], e["Code"], e["Message"]) for e in refused["Errors"]] == [
        (own, "AccessDenied", "Access Denied")
    ]
    assert tenancy.exists(own)

    url = f"s3://{tenancy.bucket}/{PREFIX}"

    async def delete_own_session() -> None:
        async with open_store(url, tenancy.ns) as store:
            await store.append(KEY, entries("m", 1))
            await store.delete(KEY)

    session_dir = tenancy.key(tenancy.ns, f"{KEY['project_key']}/{KEY['session_id']}/")
    use_credentials(credentials)
    asyncio.run(delete_own_session())  # through the backend's per-key fallback
    assert not any(key.startswith(session_dir) for key in store_keys(tenancy))

    loose = namespace_policy(tenancy.bucket, PREFIX, tenancy.ns)
    loose["Statement"].append(
        {
            "Effect": "Allow",
            "Action": "s3:DeleteObject",
            "Resource": f"arn:aws:s3:::{tenancy.bucket}",
        }
    )
    tenancy.admin.put_role_policy(f"agentsession-{tenancy.ns}", loose)
    victim = tenancy.key(tenancy.other_ns, "seed.json")
    response = tenancy.s3(tenancy.credentials(policy=loose)).delete_objects(
        Bucket=tenancy.bucket, Delete={"Objects": [{"Key": victim}]}
    )
    assert response["Deleted"] == [{"Key": victim}]  # the bucket-ARN grant deletes theirs
    assert not tenancy.exists(victim)


def test_moto_gap_credentials_do_not_expire(tenancy: Tenancy) -> None:
    """DurationSeconds is neither range-checked (AWS: 900 up to the role's maximum) nor
    enforced: only the reported Expiration reflects it."""
    before = datetime.now(UTC)
    fresh = tenancy.credentials(duration_seconds=7200)
    assert fresh.expiration is not None
    expected = before + timedelta(seconds=7200)
    assert timedelta(0) <= fresh.expiration - expected < timedelta(seconds=60)

    expired = tenancy.credentials(duration_seconds=-3600)
    assert expired.expiration is not None
    assert expired.expiration < datetime.now(UTC)
    own = tenancy.key(tenancy.ns, "seed.json")
    body = tenancy.s3(expired).get_object(Bucket=tenancy.bucket, Key=own)["Body"].read()
    assert body == tenancy.ns.encode()


def test_moto_gap_assume_role_succeeds_for_a_role_that_does_not_exist(tenancy: Tenancy) -> None:
    """AWS refuses AssumeRole on a missing role; moto issues credentials that then fail with
    HTTP 500. A successful AssumeRole on moto proves nothing about the role."""
    ghost = assume_role(
        tenancy.endpoint_url, tenancy.vending, role_arn(f"agentsession-{tenancy.ns}-ghost"), "s1"
    )
    s3 = tenancy.s3(ghost)
    own = tenancy.key(tenancy.ns, "seed.json")
    response = client_error(lambda: s3.get_object(Bucket=tenancy.bucket, Key=own))
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 500


def test_moto_gap_string_trust_principal_matches_by_substring(tenancy: Tenancy) -> None:
    """A single-string Principal is matched with `in`: user `vending-x` may assume a role that
    trusts `vending-x-ops`. trust_policy() always writes a list, which matches exactly."""
    trusted = user_arn(f"{tenancy.vending_name}-ops")
    name = f"agentsession-{tenancy.ns}-ops"
    iam = tenancy.admin.client("iam")
    iam.create_role(
        RoleName=name,
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"AWS": trusted}, "Action": "sts:AssumeRole"}
                ],
            }
        ),
    )
    assume_role(tenancy.endpoint_url, tenancy.vending, role_arn(name), "sess-1")

    listed = f"agentsession-{tenancy.ns}-ops-list"
    tenancy.admin.create_role(listed, [trusted])
    response = client_error(
        lambda: assume_role(tenancy.endpoint_url, tenancy.vending, role_arn(listed), "sess-1")
    )
    assert error_of(response) == not_authorized(user_arn(tenancy.vending_name), "sts:AssumeRole")
