"""S3 specifics of the transcript store on moto server: request counts, layout, StoreError."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import boto3
import pytest

from agentsession_contract.store import InvalidKeyError, StoreError, TranscriptStore
from agentsession_gateway.s3 import open_store
from tests.support.s3server import SECRET_ACCESS_KEY, S3Bucket, free_port

pytestmark = pytest.mark.s3

KEY: dict[str, Any] = {"project_key": "-workspace", "session_id": "sess-1"}


def batch(tag: str, count: int) -> list[dict[str, Any]]:
    return [{"type": "user", "uuid": f"{tag}-{i}", "n": i} for i in range(count)]


def count_requests(store: TranscriptStore) -> Counter[str]:
    """Count S3 API calls the store's own client makes, by operation name."""
    calls: Counter[str] = Counter()

    def record(event_name: str, **_: Any) -> None:
        calls[event_name.rsplit(".", 1)[-1]] += 1

    store._backend.client.meta.events.register("before-call.s3", record)  # type: ignore[attr-defined]
    return calls


def test_appends_and_loads_take_few_requests_and_compaction_cuts_loads_to_two(
    s3_bucket: S3Bucket,
) -> None:
    async def scenario() -> None:
        async with open_store(s3_bucket.url(), "ns") as store:
            calls = count_requests(store)
            await store.append(KEY, batch("first", 2))
            await store.flush()
            # Floor listing, the part and the sidecar's CAS write (the listing showed the session
            # empty, so no sidecar is read first).
            assert calls == {"ListObjectsV2": 1, "PutObject": 2}
            calls.clear()
            for i in range(9):
                await store.append(KEY, batch(f"more{i}", 2))
                await store.flush()
            # Steady state: the part and the sidecar CAS write with the remembered ETag.
            assert calls == {"PutObject": 18}
            calls.clear()
            before = await store.load(KEY)
            # The writer holds the parts it wrote: a listing only.
            assert calls == {"ListObjectsV2": 1}
            async with open_store(s3_bucket.url(), "ns") as reader:  # another process
                reader_calls = count_requests(reader)
                assert await reader.load(KEY) == before
                assert reader_calls == {"ListObjectsV2": 1, "GetObject": 10}
            calls.clear()
            await store.compact(KEY)
            # The listing, the compacted object, the batch delete and the sidecar's rewrite.
            assert calls == {"ListObjectsV2": 1, "PutObject": 2, "DeleteObjects": 1}

        async with open_store(s3_bucket.url(), "ns") as reader:  # as the next attempt's pod
            calls = count_requests(reader)
            assert await reader.load(KEY) == before
            assert calls == {"ListObjectsV2": 1, "GetObject": 1}

    asyncio.run(scenario())


def test_listings_follow_every_page(s3_bucket: S3Bucket) -> None:
    async def scenario() -> None:
        async with open_store(s3_bucket.url(), "ns") as store:
            for i in range(5):
                await store.append(KEY, batch(f"page{i}", 1))
            calls = count_requests(store)
            # Pages of two objects from the server: five parts and a summary take three pages.
            store._backend.client.meta.events.register(  # type: ignore[attr-defined]
                "provide-client-params.s3.ListObjectsV2",
                lambda params, **_: params.update(MaxKeys=2),
            )
            assert await store.load(KEY) == [e for i in range(5) for e in batch(f"page{i}", 1)]
            (session,) = await store.list_sessions(KEY["project_key"])
            assert session["session_id"] == KEY["session_id"]
            assert calls["ListObjectsV2"] == 3 + 3

    asyncio.run(scenario())


def test_objects_live_under_prefix_namespace_project_session(s3_bucket: S3Bucket) -> None:
    async def scenario() -> None:
        async with open_store(s3_bucket.url("deep/prefix"), "team-a") as store:
            await store.append(KEY, batch("m", 1))
            await store.append({**KEY, "subpath": "subagents/agent-1"}, batch("s", 1))
            await store.put_result(KEY["project_key"], KEY["session_id"], b"{}")

    asyncio.run(scenario())
    client = boto3.session.Session().client("s3")
    listed = client.list_objects_v2(Bucket=s3_bucket.name)["Contents"]
    client.close()
    names = sorted(item["Key"] for item in listed)
    session = "deep/prefix/team-a/-workspace/sess-1/"
    assert [name.removeprefix(session).split("/")[0] for name in names] == [
        "main",
        "result.json",
        "sub",
        "summary.json",
    ]
    assert all(name.startswith(session) for name in names)


def test_unreachable_endpoint_raises_store_error_without_secrets(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nothing listens here
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # boto3's standard knob, honoured by the store

    async def scenario() -> None:
        async with open_store(s3_bucket.url(), "ns") as store:
            calls = [
                store.check(),
                store.append(KEY, batch("m", 1)),
                store.load(KEY),
                store.list_sessions("p"),
                store.list_session_summaries("p"),
                store.list_subkeys(KEY),
                store.delete(KEY),
                store.compact(KEY),
                store.put_result("p", "s", b"{}"),
            ]
            for call in calls:
                with pytest.raises(StoreError) as caught:
                    await call
                message = str(caught.value)
                assert f"127.0.0.1:{port}" in message
                assert SECRET_ACCESS_KEY not in message
                assert s3_bucket.url() in message

    asyncio.run(scenario())


def test_invalid_keys_fail_before_any_request(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")

    async def scenario() -> None:
        async with open_store(s3_bucket.url(), "ns") as store:
            calls = count_requests(store)
            bad = {"project_key": "-workspace", "session_id": "../../other-ns/x"}
            started = time.monotonic()
            for call in (
                store.append(bad, batch("m", 1)),
                store.load(bad),
                store.delete(bad),
                store.compact(bad),
                store.list_subkeys(bad),
                store.list_sessions("../other-ns"),
                store.list_session_summaries("a/b"),
                store.put_result("p", "..", b"{}"),
            ):
                with pytest.raises(InvalidKeyError):
                    await call
            assert not calls
            assert time.monotonic() - started < 1  # no connection attempts were made

    asyncio.run(scenario())


def test_missing_bucket_raises_store_error(s3_bucket: S3Bucket) -> None:
    async def scenario() -> None:
        async with open_store("s3://no-such-bucket-for-this-test", "ns") as store:
            with pytest.raises(StoreError, match="NoSuchBucket"):
                await store.append(KEY, batch("m", 1))
            with pytest.raises(StoreError, match="NoSuchBucket"):
                await store.load(KEY)

    asyncio.run(scenario())


def test_store_urls_with_credentials_or_endpoints_are_refused() -> None:
    for url in ("s3://key:secret@bucket/x", "s3://bucket:9000/x"):
        with pytest.raises(InvalidKeyError) as caught:
            open_store(url, "ns")
        assert "secret" not in str(caught.value)
