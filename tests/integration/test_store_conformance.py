"""The SDK's SessionStore conformance suite, nothing skipped, on every transcript store backend:
the filesystem, S3 directly, and the runner's view in a pod: TranscriptStore over the gateway's
store service (real HTTP on loopback, the gateway's grant, S3 behind it)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from claude_agent_sdk import SessionStore
from claude_agent_sdk.testing import run_session_store_conformance

from agentsession_contract.gateway import GatewayEndpoint
from agentsession_contract.store import TranscriptStore
from agentsession_contract.store.gateway_client import GatewayBackend
from agentsession_gateway.s3 import S3Backend, make_s3_client, open_store
from agentsession_gateway.store_service import StoreGrant, StoreService
from tests.support.s3server import S3Bucket
from tests.support.store_service import ServedStore

# Every project and session the suite touches: the grant a real gateway would hold for them.
SUITE_PROJECTS = frozenset({"proj", "A", "B", "other", "other-proj", "never-appended-project"})
SUITE_SESSIONS = frozenset(
    {
        "a", "b", "c", "elsewhere", "main", "never-appended", "never-written", "nope",
        "other-sess", "s1", "sess", "sess2", "summ-sess",
    }
)  # fmt: skip

OPTIONAL_METHODS = ("list_sessions", "list_session_summaries", "delete", "list_subkeys")


def assert_every_optional_method_is_implemented(store: TranscriptStore) -> None:
    # The suite silently skips a contract whose method is inherited from the protocol; the SDK
    # detects an override exactly like this, so all 14 contracts run.
    for method in OPTIONAL_METHODS:
        assert getattr(type(store), method) is not getattr(SessionStore, method), method


def test_filesystem_store_passes_sdk_conformance(tmp_path: Path) -> None:
    runs = itertools.count()

    def make_store() -> TranscriptStore:
        # A fresh directory per contract, as the suite expects isolated stores.
        return open_store((tmp_path / f"run-{next(runs)}").as_uri(), "tenant")

    assert_every_optional_method_is_implemented(make_store())
    asyncio.run(run_session_store_conformance(make_store, skip_optional=frozenset()))


@pytest.mark.s3
def test_s3_store_passes_sdk_conformance(s3_bucket: S3Bucket) -> None:
    runs = itertools.count()

    def make_store() -> TranscriptStore:
        return open_store(s3_bucket.url(f"run-{next(runs)}"), "tenant")

    assert_every_optional_method_is_implemented(make_store())
    asyncio.run(run_session_store_conformance(make_store, skip_optional=frozenset()))


@pytest.mark.s3
def test_store_through_the_gateway_passes_sdk_conformance(s3_bucket: S3Bucket) -> None:
    runs = itertools.count()
    grant = StoreGrant(SUITE_PROJECTS, SUITE_SESSIONS, SUITE_SESSIONS)
    served: list[ServedStore] = []

    def make_store() -> TranscriptStore:
        backend = S3Backend(s3_bucket.name, f"run-{next(runs)}/tenant/", make_s3_client(16))
        service = ServedStore(StoreService(backend, grant, "t" * 43))
        served.append(service)
        endpoint = GatewayEndpoint(port=service.port, token="t" * 43, store_uri=backend.uri(""))
        return TranscriptStore(GatewayBackend(endpoint))

    try:
        assert_every_optional_method_is_implemented(make_store())
        asyncio.run(run_session_store_conformance(make_store, skip_optional=frozenset()))
    finally:
        for service in served:
            service.stop()
