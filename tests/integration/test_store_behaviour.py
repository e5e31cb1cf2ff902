"""Transcript store behaviour beyond SDK conformance, on both backends (scoping, order, compaction).

Tenant scoping, ordering across writers, uuid dedup, compaction under concurrency, summary
compare-and-swap, the runner's result document and URIs.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
import pytest

from agentsession_contract.store import InvalidKeyError, TranscriptStore
from agentsession_contract.store.backend import PreconditionFailed
from agentsession_contract.store.transcript import MAX_CONCURRENCY, wall_clock_us
from agentsession_gateway.s3 import open_store
from tests.support.s3server import SECRET_ACCESS_KEY, S3Bucket

T = TypeVar("T")
KEY: dict[str, Any] = {"project_key": "-workspace", "session_id": "sess-1"}
SUB_KEY: dict[str, Any] = {**KEY, "subpath": "subagents/agent-1"}


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


def batch(tag: str, count: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"type": "user", "uuid": f"{tag}-{i}", "n": i, **extra} for i in range(count)]


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        return bucket.url("transcripts")
    return (tmp_path / "transcripts").as_uri()


def all_object_keys(url: str) -> list[str]:
    """Every object under the store URL, relative to it: what a tenant could possibly reach."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        root = Path(parts.path)
        return sorted(
            str(Path(directory, name).relative_to(root))
            for directory, _, names in os.walk(root)
            for name in names
        )
    client = boto3.session.Session().client("s3")
    prefix = parts.path.strip("/") + "/"
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=parts.netloc, Prefix=prefix
    ):
        keys.extend(item["Key"][len(prefix) :] for item in page.get("Contents", []))
    client.close()
    return sorted(keys)


def stream_objects(store: TranscriptStore, key: dict[str, Any]) -> list[str]:
    stream_dir = f"{key['project_key']}/{key['session_id']}/" + (
        "main/" if "subpath" not in key else f"sub/{key['subpath']}/"
    )
    return sorted(obj.key.rpartition("/")[2] for obj in store._backend.list_children(stream_dir))


def reopen(store: TranscriptStore, **options: Any) -> TranscriptStore:
    """Another writer (as if another process) on the same backend."""
    return TranscriptStore(store._backend, **options)


# --- tenant scoping -------------------------------------------------------------------------


def test_namespaces_cannot_see_or_name_each_other(store_url: str) -> None:
    async def scenario() -> None:
        async with open_store(store_url, "team-a") as a, open_store(store_url, "team-b") as b:
            await a.append(KEY, batch("a", 2))
            await a.append(SUB_KEY, batch("a-sub", 1))
            await a.put_result(KEY["project_key"], KEY["session_id"], b"{}")
            assert await b.load(KEY) is None
            assert await b.list_sessions(KEY["project_key"]) == []
            assert await b.list_session_summaries(KEY["project_key"]) == []
            assert await b.list_subkeys(KEY) == []
            await b.delete(KEY)  # B deleting "the same" session must not touch A's
            assert await a.load(KEY) == batch("a", 2)
            for escape in (
                {"project_key": "..", "session_id": "team-a"},
                {"project_key": "../team-a", "session_id": "sess-1"},
                {"project_key": KEY["project_key"], "session_id": "../../team-a/x"},
                {**KEY, "subpath": "../../../team-a/-workspace/sess-1/main"},
                {**KEY, "subpath": "/team-a"},
                {"project_key": "/abs", "session_id": "s"},
                {"project_key": "%2e%2e", "session_id": "s"},
                {"project_key": "p", "session_id": "a\x00b"},
            ):
                with pytest.raises(InvalidKeyError):
                    await b.load(escape)
                with pytest.raises(InvalidKeyError):
                    await b.append(escape, batch("evil", 1))
            for project in ("..", "../team-a", "a/b", ""):
                with pytest.raises(InvalidKeyError):
                    await b.list_sessions(project)

    run(scenario)
    objects = all_object_keys(store_url)
    assert objects, "team-a wrote nothing"
    assert all(key.startswith("team-a/-workspace/sess-1/") for key in objects), objects


def test_namespace_must_be_a_dns_label(store_url: str) -> None:
    for namespace in ("", "..", "Team", "a/b", "../x", "a b"):
        with pytest.raises(InvalidKeyError):
            open_store(store_url, namespace)


# --- ordering and dedup ---------------------------------------------------------------------


def test_two_writers_appending_alternately_keep_call_order(store_url: str) -> None:
    async def scenario() -> None:
        async with open_store(store_url, "ns") as first, open_store(store_url, "ns") as second:
            expected: list[dict[str, Any]] = []
            for round_ in range(6):
                for writer, store in (("first", first), ("second", second)):
                    entries = batch(f"{writer}-{round_}", 2)
                    await store.append(KEY, entries)
                    expected.extend(entries)
            async with open_store(store_url, "ns") as reader:
                assert await reader.load(KEY) == expected

    run(scenario)


def test_writer_with_a_lagging_clock_still_appends_after_what_it_can_see(store_url: str) -> None:
    hour_us = 3600 * 1_000_000

    async def scenario() -> None:
        async with open_store(store_url, "ns") as first:
            await first.append(KEY, batch("before", 2))
            lagging = reopen(first, clock_us=lambda: wall_clock_us() - hour_us)
            await lagging.append(KEY, batch("after", 2))
            await lagging.append(KEY, batch("later", 1))
            assert await first.load(KEY) == batch("before", 2) + batch("after", 2) + batch(
                "later", 1
            )

    run(scenario)


def test_concurrent_appends_from_one_writer_keep_call_order(store_url: str) -> None:
    async def scenario() -> None:
        async with open_store(store_url, "ns") as store:
            # The first append of a stream lists it for the sequence floor; later calls must
            # still not overtake it.
            await asyncio.gather(*(store.append(KEY, batch(f"b{i}", 2)) for i in range(20)))
            assert await store.load(KEY) == [e for i in range(20) for e in batch(f"b{i}", 2)]

    run(scenario)


def test_loads_read_up_to_sixteen_objects_at_once_and_no_more(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with open_store(store_url, "ns") as store:
            for i in range(40):
                await store.append(SUB_KEY, batch(f"p{i}", 1))
            read = store._backend.read
            all_sixteen_in_flight = threading.Barrier(MAX_CONCURRENCY, timeout=30)
            lock = threading.Lock()
            state = {"started": 0, "in_flight": 0, "peak": 0}

            def gated_read(key: str) -> Any:
                with lock:
                    state["started"] += 1
                    state["in_flight"] += 1
                    state["peak"] = max(state["peak"], state["in_flight"])
                    first_wave = state["started"] <= MAX_CONCURRENCY
                try:
                    if first_wave:
                        # Passes only once 16 reads are in flight together; a lower bound on
                        # parallelism would break the barrier and fail the load.
                        all_sixteen_in_flight.wait()
                    return read(key)
                finally:
                    with lock:
                        state["in_flight"] -= 1

            monkeypatch.setattr(store._backend, "read", gated_read)
            # Another instance: the writer itself keeps what it wrote and would read nothing.
            async with reopen(store) as reader:
                loaded = await reader.load(SUB_KEY)
            assert loaded == [e for i in range(40) for e in batch(f"p{i}", 1)]
            assert state["peak"] == MAX_CONCURRENCY

    run(scenario)


APPEND_SCRIPT = """
import asyncio, json, sys
from agentsession_gateway.s3 import open_store

async def main() -> None:
    url, namespace, key, entries = sys.argv[1:]
    async with open_store(url, namespace) as store:
        await store.append(json.loads(key), json.loads(entries))

asyncio.run(main())
"""


def test_a_second_process_appends_in_order(store_url: str) -> None:
    async def scenario() -> None:
        async with open_store(store_url, "ns") as parent:
            await parent.append(KEY, batch("parent-1", 3))
            await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", APPEND_SCRIPT, store_url, "ns", json.dumps(KEY),
                 json.dumps(batch("child", 3))],
                check=True,
                timeout=120,
            )  # fmt: skip
            await parent.append(KEY, batch("parent-2", 3))
            expected = batch("parent-1", 3) + batch("child", 3) + batch("parent-2", 3)
            assert await parent.load(KEY) == expected

    run(scenario)


def test_duplicate_uuids_load_once_first_wins_and_uuidless_entries_stay(store_url: str) -> None:
    title = {"type": "custom-title", "customTitle": "t"}

    async def scenario() -> None:
        async with open_store(store_url, "ns") as store:
            await store.append(KEY, [*batch("u", 2), title])
            # What the SDK does when a timed-out batch actually landed: it sends it again.
            await store.append(KEY, [{"type": "user", "uuid": "u-1", "n": "retry"}, title])
            await store.append(KEY, batch("v", 1))
            assert await store.load(KEY) == [*batch("u", 2), title, title, *batch("v", 1)]

    run(scenario)


# --- compaction -----------------------------------------------------------------------------


def test_compaction_keeps_the_entries_and_leaves_one_object(store_url: str) -> None:
    title = {"type": "custom-title", "customTitle": "t"}

    async def scenario() -> None:
        async with open_store(store_url, "ns") as store:
            for i in range(12):
                await store.append(KEY, [*batch(f"m{i}", 3), title])
                await store.append(SUB_KEY, batch(f"s{i}", 2))
            await store.append(KEY, batch("m0", 3))  # duplicates across parts
            main_before, sub_before = await store.load(KEY), await store.load(SUB_KEY)
            summaries_before = await store.list_session_summaries(KEY["project_key"])

            await store.compact(KEY)
            await store.compact(SUB_KEY)

            assert await store.load(KEY) == main_before
            assert await store.load(SUB_KEY) == sub_before
            (compacted,) = stream_objects(store, KEY)
            (sub_compacted,) = stream_objects(store, SUB_KEY)
            assert compacted.startswith("compacted-")
            assert sub_compacted.startswith("compacted-")
            summaries = await store.list_session_summaries(KEY["project_key"])
            assert [s["data"] for s in summaries] == [s["data"] for s in summaries_before]

            await store.compact(KEY)  # already compact: nothing changes
            assert stream_objects(store, KEY) == [compacted]

            await store.append(KEY, batch("tail", 2))
            assert await store.load(KEY) == [*main_before, *batch("tail", 2)]
            await store.compact(KEY)
            assert len(stream_objects(store, KEY)) == 1
            assert await store.load(KEY) == [*main_before, *batch("tail", 2)]

    run(scenario)


def test_a_writer_lists_but_never_downloads_objects_it_wrote_or_read(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner after a query: load (reconcile), compact, load again: listings only, no GET of
    a transcript object this instance already holds; another writer's part is still fetched."""

    async def scenario() -> None:
        async with open_store(store_url, "ns") as store:
            async with reopen(store) as earlier_attempt:
                await earlier_attempt.append(KEY, batch("old", 50))
                await earlier_attempt.compact(KEY)
            hydrated = await store.load(KEY)
            for i in range(5):
                await store.append(KEY, batch(f"new{i}", 3))
            async with reopen(store) as other_writer:
                await other_writer.append(KEY, batch("other", 2))
            read = store._backend.read
            reads: list[str] = []

            def counting_read(key: str) -> Any:
                reads.append(key.rpartition("/")[2])
                return read(key)

            monkeypatch.setattr(store._backend, "read", counting_read)
            expected = [*(hydrated or []), *(e for i in range(5) for e in batch(f"new{i}", 3))]
            expected += batch("other", 2)
            assert await store.load(KEY) == expected
            assert len(reads) == 1, reads  # only the other writer's part
            await store.compact(KEY)
            assert await store.load(KEY) == expected
            assert len(reads) == 1, reads  # compaction and the reload: listings only
            async with reopen(store) as fresh:
                assert await fresh.load(KEY) == expected  # what compaction wrote is complete
            assert len(reads) == 2, reads

    run(scenario)


def test_part_appended_while_compaction_runs_is_not_lost(store_url: str) -> None:
    async def scenario() -> None:
        async with open_store(store_url, "ns") as compactor, open_store(store_url, "ns") as writer:
            for i in range(5):
                await writer.append(KEY, batch(f"early{i}", 2))

            async def append_between_read_and_delete() -> None:
                await writer.append(KEY, batch("racing", 2))

            await compactor._compact(KEY, before_commit=append_between_read_and_delete)

            objects = stream_objects(compactor, KEY)
            assert len(objects) == 2  # the compacted object and the racing part it did not read
            expected = [e for i in range(5) for e in batch(f"early{i}", 2)] + batch("racing", 2)
            assert await compactor.load(KEY) == expected
            await compactor.compact(KEY)
            assert len(stream_objects(compactor, KEY)) == 1
            assert await compactor.load(KEY) == expected

    run(scenario)


def test_overlapping_compactions_never_duplicate_entries(store_url: str) -> None:
    marker = {"type": "mode", "mode": "plan"}  # no uuid: only segment bookkeeping prevents doubles

    async def scenario() -> None:
        async with open_store(store_url, "ns") as first, open_store(store_url, "ns") as second:
            for i in range(4):
                await first.append(KEY, [*batch(f"p{i}", 2), marker])
            expected = await first.load(KEY)
            assert expected is not None

            async def other_compaction_finishes_first() -> None:
                await second.compact(KEY)

            # `first` read the parts, then `second` compacts and deletes them, then `first`
            # commits a compacted object covering parts that no longer exist.
            await first._compact(KEY, before_commit=other_compaction_finishes_first)
            assert len(stream_objects(first, KEY)) == 2
            assert await first.load(KEY) == expected
            await first.compact(KEY)
            assert len(stream_objects(first, KEY)) == 1
            assert await first.load(KEY) == expected

    run(scenario)


def test_compaction_interrupted_before_deleting_parts_loads_no_doubles(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = {"type": "mode", "mode": "plan"}

    async def scenario() -> None:
        async with open_store(store_url, "ns") as store:
            for i in range(3):
                await store.append(KEY, [*batch(f"p{i}", 1), marker])
            expected = await store.load(KEY)

            def crash(keys: object) -> None:
                raise RuntimeError("pod killed before the delete")

            with monkeypatch.context() as patch:
                patch.setattr(store._backend, "delete", crash)
                with pytest.raises(RuntimeError):
                    await store.compact(KEY)
            assert len(stream_objects(store, KEY)) == 4
            assert await store.load(KEY) == expected
            await store.compact(KEY)
            assert len(stream_objects(store, KEY)) == 1
            assert await store.load(KEY) == expected

    run(scenario)


def test_load_racing_a_compaction_returns_the_whole_transcript(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with open_store(store_url, "ns") as writer:
            for i in range(4):
                await writer.append(KEY, batch(f"p{i}", 2))
            expected = await writer.load(KEY)
            list_children = writer._backend.list_children
            raced = False

            def list_then_compact(prefix: str) -> Any:
                # The reader lists, then a compaction deletes what it listed before it reads.
                nonlocal raced
                listed = list_children(prefix)
                if not raced:
                    raced = True
                    asyncio.run(reopen(writer).compact(KEY))
                return listed

            monkeypatch.setattr(writer._backend, "list_children", list_then_compact)
            assert await writer.load(KEY) == expected
            assert raced
            assert len(stream_objects(writer, KEY)) == 1

    run(scenario)


# --- summaries ------------------------------------------------------------------------------


def test_racing_summary_folds_both_land(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with open_store(store_url, "ns") as a, open_store(store_url, "ns") as b:
            conflicts: list[str] = []
            write_if = b._backend.write_if

            def counting_write_if(key: str, data: bytes, etag: str | None) -> str:
                try:
                    return write_if(key, data, etag)
                except PreconditionFailed:
                    conflicts.append(key)
                    raise

            # b folds first and remembers the sidecar's etag ...
            await b.append(KEY, [{"type": "x", "uuid": "b1", "customTitle": "title-from-b"}])
            await b.flush()
            # ... a folds on top, so b's remembered etag is now stale ...
            await a.append(KEY, [{"type": "x", "uuid": "a1", "gitBranch": "branch-from-a"}])
            await a.flush()
            # ... and b's next conditional write must lose, re-read, re-fold and land.
            monkeypatch.setattr(b._backend, "write_if", counting_write_if)
            await b.append(KEY, [{"type": "x", "uuid": "b2", "aiTitle": "ai-title-from-b"}])
            await b.flush()

            assert len(conflicts) == 1
            (summary,) = await a.list_session_summaries(KEY["project_key"])
            assert summary["data"]["custom_title"] == "title-from-b"
            assert summary["data"]["git_branch"] == "branch-from-a"
            assert summary["data"]["ai_title"] == "ai-title-from-b"

    run(scenario)


def test_a_session_seen_empty_gets_its_summary_written_without_a_read_or_a_second_listing(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's first append to a new session: the preflight saw the stream empty, so the
    append neither lists it again nor reads a summary that is not there; a summary that appeared
    meanwhile after all (another writer) is still folded in by the conditional write."""

    async def scenario() -> None:
        async with open_store(store_url, "ns") as store:
            assert await store.load(KEY) is None
            calls: list[str] = []
            for name in ("read", "list_children", "list_tree"):
                method = getattr(store._backend, name)

                def counted(*args: Any, _name: str = name, _method: Any = method) -> Any:
                    calls.append(_name)
                    return _method(*args)

                monkeypatch.setattr(store._backend, name, counted)
            await store.append(KEY, [{"type": "x", "uuid": "a1", "customTitle": "mine"}])
            assert calls == []
            (summary,) = await store.list_session_summaries(KEY["project_key"])
            assert summary["data"]["custom_title"] == "mine"

            other_key = {**KEY, "session_id": "sess-2"}
            assert await store.load(other_key) is None
            async with reopen(store) as other_writer:
                await other_writer.append(
                    other_key, [{"type": "x", "uuid": "b1", "gitBranch": "branch-of-other"}]
                )
            await store.append(other_key, [{"type": "x", "uuid": "a2", "customTitle": "mine"}])
            summaries = await store.list_session_summaries(KEY["project_key"])
            (summary,) = [s for s in summaries if s["session_id"] == "sess-2"]
            assert summary["data"]["git_branch"] == "branch-of-other"
            assert summary["data"]["custom_title"] == "mine"

    run(scenario)


def test_append_returns_once_its_part_is_stored_and_the_summary_follows(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK waits for each append before the next: it must not wait for the summary. Folds
    queued while a summary write is in flight are written together, and readers through the
    store wait for them."""

    async def scenario() -> None:
        async with open_store(store_url, "ns") as store:
            released = threading.Event()
            summary_writes: list[str] = []
            write_if = store._backend.write_if

            def held_write_if(key: str, data: bytes, etag: str | None) -> str:
                summary_writes.append(key)
                assert released.wait(timeout=30), "the test never released the summary write"
                return write_if(key, data, etag)

            monkeypatch.setattr(store._backend, "write_if", held_write_if)
            titles = ["first", "second", "third", "fourth"]
            for i, title in enumerate(titles):
                # Each append returns although the summary write is held.
                await asyncio.wait_for(
                    store.append(KEY, [{"type": "x", "uuid": f"e{i}", "customTitle": title}]),
                    timeout=10,
                )
            assert [e["uuid"] for e in await store.load(KEY) or []] == ["e0", "e1", "e2", "e3"]
            assert len(summary_writes) == 1  # the first fold, still being written
            summaries = asyncio.ensure_future(store.list_session_summaries(KEY["project_key"]))
            # A negative check: a reader that did not wait would answer well within this time.
            done, _ = await asyncio.wait({summaries}, timeout=0.2)
            assert not done, "a reader must wait for the folds queued so far"
            released.set()
            (summary,) = await summaries
            assert summary["data"]["custom_title"] == "fourth"
            assert len(summary_writes) == 2  # the other three folds in one write
            (listed,) = await store.list_sessions(KEY["project_key"])
            assert summary["mtime"] >= listed["mtime"]

    run(scenario)


def test_summary_mtime_is_never_older_than_the_session(store_url: str) -> None:
    async def scenario() -> None:
        async with open_store(store_url, "ns") as store:
            for step in range(3):
                await store.append(KEY, batch(f"s{step}", 2, timestamp="2024-01-01T00:00:00Z"))
                await store.append(SUB_KEY, batch(f"sub{step}", 1))
                await check_mtimes(store)
            await store.compact(KEY)
            await check_mtimes(store)

    async def check_mtimes(store: TranscriptStore) -> None:
        (listed,) = await store.list_sessions(KEY["project_key"])
        (summary,) = await store.list_session_summaries(KEY["project_key"])
        assert summary["mtime"] >= listed["mtime"] > 1e12

    run(scenario)


# --- runner extras --------------------------------------------------------------------------


def test_result_document_is_not_part_of_the_transcript(store_url: str) -> None:
    async def scenario() -> None:
        async with open_store(store_url, "ns") as store:
            uri = await store.put_result(KEY["project_key"], KEY["session_id"], b'{"n": 1}')
            assert uri == store.uri(KEY) + "result.json"
            assert await store.load(KEY) is None
            assert await store.list_sessions(KEY["project_key"]) == []
            assert await store.list_subkeys(KEY) == []
            await store.append(KEY, batch("m", 2))
            uri = await store.put_result(KEY["project_key"], KEY["session_id"], b'{"n": 2}')
            assert await store.load(KEY) == batch("m", 2)
            assert [s["session_id"] for s in await store.list_sessions(KEY["project_key"])] == [
                KEY["session_id"]
            ]
            assert await store.list_subkeys(KEY) == []
            await store.compact(KEY)
            assert await store.load(KEY) == batch("m", 2)
            assert read_uri(uri) == b'{"n": 2}'
            with pytest.raises(InvalidKeyError):
                await store.put_result("..", "x", b"{}")
            await store.delete(KEY)
            assert await store.list_session_summaries(KEY["project_key"]) == []

    run(scenario)
    assert all_object_keys(store_url) == []


def read_uri(uri: str) -> bytes:
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(parts.path).read_bytes()
    client = boto3.session.Session().client("s3")
    try:
        return client.get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))["Body"].read()
    finally:
        client.close()


def test_uris_name_the_root_session_and_subagent_without_secrets(store_url: str) -> None:
    store = open_store(store_url, "ns")
    base = store_url.rstrip("/")
    assert store.uri() == f"{base}/ns/"
    assert store.uri(KEY) == f"{base}/ns/-workspace/sess-1/"
    assert store.uri(SUB_KEY) == f"{base}/ns/-workspace/sess-1/sub/subagents/agent-1/"
    assert SECRET_ACCESS_KEY not in store.uri(KEY)
    with pytest.raises(InvalidKeyError):
        store.uri({"project_key": "..", "session_id": "x"})
    run(store.close)


def test_delete_of_a_subagent_leaves_the_session_and_nested_subagents(store_url: str) -> None:
    nested = {**KEY, "subpath": "subagents/agent-1/child"}

    async def scenario() -> None:
        async with open_store(store_url, "ns") as store:
            await store.append(KEY, batch("m", 1))
            await store.append(SUB_KEY, batch("s", 1))
            await store.append(nested, batch("n", 1))
            assert await store.list_subkeys(KEY) == ["subagents/agent-1", "subagents/agent-1/child"]
            await store.delete(SUB_KEY)
            assert await store.load(SUB_KEY) is None
            assert await store.load(nested) == batch("n", 1)
            assert await store.load(KEY) == batch("m", 1)
            assert await store.list_subkeys(KEY) == ["subagents/agent-1/child"]

    run(scenario)
