"""End to end: a namespace deleted and created again under the same name does not see the old
one's transcripts. The store is keyed by the namespace's UID (docs/store.md#namespace-uid), so a
session of the new namespace that resumes the old one's SDK session id finds nothing to resume.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from claude_agent_sdk.types import SessionKey
from kubernetes import client

from agentsession_gateway.s3 import open_store
from tests.e2e.conftest import Sessions, marker, namespace_uid
from tests.support import scripted_api as sa
from tests.support.cluster import LocalCluster, wait_for
from tests.support.operator_process import OperatorProcess
from tests.support.s3server import TenantStore
from tests.support.session_secrets import add_session_secrets

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]


def make_namespace(cluster: LocalCluster, store: TenantStore, name: str) -> Sessions:
    cluster.create_namespace(labels={}, name=name)
    add_session_secrets(cluster, name)
    store.provision(name)  # the platform team's role is per namespace name: the same one again
    return Sessions(cluster, name)


def delete_namespace(cluster: LocalCluster, name: str) -> None:
    cluster.delete_namespace(name)
    api_client = cluster.api_client()
    core = client.CoreV1Api(api_client)

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except client.ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    try:
        wait_for(gone, timeout=120, what=f"namespace {name} to be deleted")
    finally:
        api_client.close()


def stored(
    store: TenantStore, namespace: str, uid: str, session_id: str, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The transcript as the store holds it under the namespace as it was (`uid`), admin view."""
    for key, value in store.reader_env().items():
        monkeypatch.setenv(key, value)
    key: SessionKey = {"project_key": "sessions", "session_id": session_id}
    entries = asyncio.run(open_store(store.url, namespace, uid).load(key))
    return json.dumps(entries or [])


def test_a_recreated_namespace_cannot_resume_the_old_ones_session(
    local_cluster: LocalCluster,
    operator: OperatorProcess,
    tenant_store: TenantStore,
    scripted_api: sa.ScriptedAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"reborn-{uuid.uuid4().hex[:8]}"
    tag, tag_new = marker(), marker()
    scripted_api.route(tag, sa.text("The old tenant's plan: rotate every key on Friday."))

    old = make_namespace(local_cluster, tenant_store, name)
    try:
        old.create("source", {"prompt": f"{tag}: make a plan"})
        source = old.wait("source")
        assert source["phase"] == "Succeeded", source
        old_uid = namespace_uid(local_cluster, name)
        assert source["namespaceUid"] == old_uid
        assert f"/{name}/{old_uid}/sessions/{source['sessionId']}/" in source["transcriptRef"]
    finally:
        old.close()
    session_id = source["sessionId"]
    assert "rotate every key" in stored(tenant_store, name, old_uid, session_id, monkeypatch)

    delete_namespace(local_cluster, name)
    new = make_namespace(local_cluster, tenant_store, name)
    try:
        new_uid = namespace_uid(local_cluster, name)
        assert new_uid != old_uid
        new.create(
            "intruder", {"prompt": f"{tag_new}: continue", "resume": {"sessionId": session_id}}
        )
        intruder = new.wait("intruder")
        assert intruder["phase"] == "Failed", intruder
        assert intruder["reason"] == "InvalidSpec"
        assert session_id in intruder["message"]
        assert intruder["namespaceUid"] == new_uid
        assert intruder["attempts"] == 1, "an invalid spec is not retried"
    finally:
        new.close()
        delete_namespace(local_cluster, name)
    # Nothing was resumed: the model never saw a request of the new namespace's session.
    assert not [r for r in scripted_api.model_requests() if tag_new in r.text_content()]
    assert len(scripted_api.requests_for(tag)) == 1
    # The old transcript is where it was (retention: the bucket's lifecycle rules), unreachable.
    assert "rotate every key" in stored(tenant_store, name, old_uid, session_id, monkeypatch)
    assert stored(tenant_store, name, new_uid, session_id, monkeypatch) == "[]"
