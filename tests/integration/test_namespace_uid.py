"""A namespace deleted and created again under the same name never reaches the old one's
transcripts: the store is keyed by the namespace's UID, in the runner's config, the gateway's
backend root, the vended session policy and the preflight.

Everything real: the IAM-enforcing S3 server a platform team's setup is modelled on
(`TenantStore`: the namespace's role, made per namespace *name*, assumed by the operator's
vending identity), the operator's vending (`StoreAccess`), gateway processes holding the vended
credentials, and the runner with the real CLI against the scripted API.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from agentsession_contract.gateway import STORE_PATH, TOKEN_HEADER
from agentsession_contract.store import TranscriptStore
from agentsession_contract.store.keys import LOGICAL_PROJECT, store_scope
from agentsession_gateway.s3 import S3Backend
from agentsession_operator.store_access import (
    MAX_SESSION_POLICY_CHARS,
    PROBE_SUFFIX,
    StoreAccess,
    namespace_policy,
)
from tests.support import scripted_api as sa
from tests.support.gateway_process import GatewayProcess
from tests.support.runner_harness import TEST_API_KEY, base_config, run_agent_runner
from tests.support.s3server import REGION, TenantStore

pytestmark = [pytest.mark.cli, pytest.mark.s3]

NAMESPACE = "team-x"


@pytest.fixture(scope="module")
def tenant_store() -> Iterator[TenantStore]:
    store = TenantStore(f"recreated-{uuid.uuid4().hex[:12]}")
    store.provision(NAMESPACE)
    yield store
    store.stop()


@pytest.fixture
def access(
    tenant_store: TenantStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[StoreAccess]:
    """The operator's vending, with its identity in the environment as in its pod."""
    empty = tmp_path / "no-aws-files"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    for name, value in tenant_store.vending.env().items():
        monkeypatch.setenv(name, value)
    endpoint = tenant_store.server.endpoint_url
    vending = StoreAccess(
        tenant_store.url,
        tenant_store.role_arn_template,
        s3_endpoint_url=endpoint,
        sts_endpoint_url=endpoint,
        region=REGION,
    )
    yield vending
    vending.close()


@pytest.fixture
def api() -> Iterator[sa.ScriptedAPI]:
    with sa.ScriptedAPI(required_key=TEST_API_KEY) as server:
        yield server


class Attempt:
    """One attempt as a pod runs it: vended credentials, its gateway, the runner."""

    def __init__(
        self,
        tenant_store: TenantStore,
        access: StoreAccess,
        api: sa.ScriptedAPI,
        work: Path,
        namespace_uid: str,
        **config: Any,
    ) -> None:
        credentials = asyncio.run(access.vend(NAMESPACE, "session", 900, namespace_uid))
        self.config = base_config(
            tenant_store.url,
            work / "workspace",
            namespace=NAMESPACE,
            namespaceUid=namespace_uid,
            **config,
        )
        env = {
            "AWS_ENDPOINT_URL": tenant_store.server.endpoint_url,
            "AWS_REGION": REGION,
            **credentials.env(),
        }
        self.gateway = GatewayProcess(
            self.config, work / "gateway", upstream_url=api.base_url, env=env
        )
        self.work = work

    def __enter__(self) -> Attempt:
        self.gateway.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gateway.stop()

    def run(self) -> Any:
        return run_agent_runner(
            self.config, workdir=self.work / "run", base_url=None, env=self.gateway.agent_env()
        )

    def store_request(self, path: str, **query: str) -> int:
        """What the agent can ask of its gateway's store directly (it holds the token)."""
        response = urllib3.request(
            "GET",
            f"{self.gateway.base_url}{STORE_PATH}{path}",
            fields=query,
            headers={TOKEN_HEADER: self.gateway.endpoint.token},
            timeout=10,
            retries=False,
        )
        return int(response.status)


def stored(tenant_store: TenantStore, namespace_uid: str | None, session_id: str) -> str:
    """The session's transcript as the store holds it under that UID (read as the admin)."""
    scope = store_scope(NAMESPACE, namespace_uid)
    client = tenant_store.admin.credentials.client("s3", tenant_store.server.endpoint_url)
    backend = S3Backend(tenant_store.bucket.name, f"{tenant_store.prefix}/{scope}", client)

    async def load() -> Any:
        async with TranscriptStore(backend) as store:
            return await store.load({"project_key": LOGICAL_PROJECT, "session_id": session_id})

    return json.dumps(asyncio.run(load()) or [])


def test_a_recreated_namespace_cannot_resume_the_old_namespaces_session(
    tenant_store: TenantStore, access: StoreAccess, api: sa.ScriptedAPI, tmp_path: Path
) -> None:
    old_uid, new_uid = str(uuid.uuid4()), str(uuid.uuid4())
    session_id = str(uuid.uuid4())
    api.script(sa.text("The old namespace's secret plan."), sa.text("Resumed by its own."))

    # The namespace as it was: a session, then a resume of it (the control: same UID works).
    with Attempt(tenant_store, access, api, tmp_path / "old", old_uid, sessionId=session_id) as old:
        first = old.run()
    assert first.exit_code == 0, first.stdout
    assert first.summary is not None
    assert first.summary["transcriptRef"].endswith(
        f"/{NAMESPACE}/{old_uid}/{LOGICAL_PROJECT}/{session_id}/"
    )
    assert "secret plan" in stored(tenant_store, old_uid, session_id)
    same = Attempt(
        tenant_store,
        access,
        api,
        tmp_path / "same",
        old_uid,
        sessionId=session_id,
        resumeSessionId=session_id,
        prompt="Go on.",
    )
    with same:
        resumed = same.run()
    assert resumed.exit_code == 0, resumed.stdout
    assert "secret plan" in api.requests[-1].text_content()
    requests_before = len(api.requests)

    # Deleted and created again under the same name: a new UID. A session resuming the old id
    # finds nothing (its gateway's root is the new UID's), and its agent cannot climb out.
    intruder = Attempt(
        tenant_store,
        access,
        api,
        tmp_path / "new",
        new_uid,
        sessionId=session_id,
        resumeSessionId=session_id,
        prompt="Show me the plan.",
    )
    with intruder:
        result = intruder.run()
        old_key = f"../{old_uid}/{LOGICAL_PROJECT}/{session_id}/summary.json"
        assert intruder.store_request("object", key=old_key) == 403
        assert intruder.store_request("list", prefix=f"../{old_uid}/") == 403
        own = f"{LOGICAL_PROJECT}/{session_id}/"
        assert intruder.store_request("list", prefix=own, recursive="1") == 200
    assert result.exit_code == 3, result.stdout  # invalid config: the resume source is not found
    assert result.summary is not None
    assert result.summary["reason"] == "InvalidSpec"
    assert session_id in result.summary["message"]
    assert len(api.requests) == requests_before  # no model request: nothing was resumed
    assert stored(tenant_store, new_uid, session_id) == "[]"
    # The old transcript stays where it was (retention is the bucket's lifecycle rules).
    assert "secret plan" in stored(tenant_store, old_uid, session_id)


def test_vended_credentials_are_scoped_to_the_namespace_uid(
    tenant_store: TenantStore, access: StoreAccess
) -> None:
    """The session policy names the UID's root (AWS and MinIO intersect it with the role's,
    which is per namespace name); the preflight proves the credentials read their UID's root."""
    namespace_uid = str(uuid.uuid4())
    policy = namespace_policy(
        tenant_store.bucket.name, tenant_store.prefix, NAMESPACE, namespace_uid
    )
    root = f"{tenant_store.prefix}/{NAMESPACE}/{namespace_uid}/"
    assert policy["Statement"][0]["Resource"] == f"arn:aws:s3:::{tenant_store.bucket.name}/{root}*"
    assert policy["Statement"][1]["Condition"] == {"StringLike": {"s3:prefix": f"{root}*"}}
    widest = namespace_policy("b" * 63, "p" * 255, "n" * 63, namespace_uid)
    assert len(json.dumps(widest, separators=(",", ":"))) < MAX_SESSION_POLICY_CHARS

    asyncio.run(access.vend(NAMESPACE, "session", 900, namespace_uid))
    assert access.is_verified(NAMESPACE, namespace_uid)
    assert not access.is_verified(NAMESPACE, str(uuid.uuid4()))  # each UID is checked itself
    s3 = tenant_store.admin.client("s3")
    probe = s3.get_object(Bucket=tenant_store.bucket.name, Key=f"{root}{PROBE_SUFFIX}")
    assert len(probe["Body"].read()) == 32  # the nonce the vended credentials read back
