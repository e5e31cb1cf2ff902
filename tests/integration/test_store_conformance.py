"""The SDK's SessionStore conformance suite, nothing skipped, on both transcript store backends."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from claude_agent_sdk import SessionStore
from claude_agent_sdk.testing import run_session_store_conformance

from agentsession_runner.store import TranscriptStore, open_store
from tests.support.s3server import S3Bucket

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
