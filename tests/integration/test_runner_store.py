"""The runner's view of the transcript store on a real (filesystem) backend: the mirror that
writes the SDK's appends in order and together when they come in a burst, the preflight's
preload that the SDK's resume takes over, and the reconcile after the query, which asks the store
only about lines this process has not seen it hold. Store requests are counted at the backend."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from claude_agent_sdk.types import SessionKey

from agentsession_contract.store import StoreError, TranscriptStore
from agentsession_contract.store.filesystem import FilesystemBackend
from agentsession_runner.pinned_store import PinnedProjectStore
from agentsession_runner.transcripts import TranscriptTap, reconcile

T = TypeVar("T")
SOURCE = "0b6f3c1e-7a52-4d0e-9f61-3c2b8a9d4e10"
FORK = "5d2e8f47-1c3b-4a96-8e07-b4f1a2c3d5e6"
BACKEND_CALLS = ("list_children", "list_tree", "read", "write", "write_if", "delete", "check")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


class CountingBackend(FilesystemBackend):
    """The filesystem backend, recording every storage call by name; its plain writes (the
    transcript parts) can be held until released, or refused."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: list[str] = []
        self.released = threading.Event()
        self.released.set()
        self.refuse_writes = False

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if name in BACKEND_CALLS:
            super().__getattribute__("calls").append(name)
        return attribute

    def write(self, key: str, data: bytes) -> None:
        assert self.released.wait(timeout=30), "the test never released the write"
        if self.refuse_writes:
            raise StoreError(f"refused write of {key}")
        super().write(key, data)


def lines(tag: str, count: int) -> list[dict[str, Any]]:
    return [{"type": "user", "uuid": f"{tag}-{i}", "n": i} for i in range(count)]


def key(session_id: str) -> SessionKey:
    # The project the SDK derives from the working directory; the runner's store pins it.
    return {"project_key": "-workspace", "session_id": session_id}


def write_local(config_dir: Path, session_id: str, entries: list[dict[str, Any]]) -> None:
    """A transcript file as the CLI leaves it under its config dir."""
    path = config_dir / "projects" / "-workspace" / f"{session_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))


def test_the_sdk_resume_takes_what_the_preflight_loaded(tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = CountingBackend(tmp_path / "store")
        async with TranscriptStore(backend) as earlier_attempt:
            await earlier_attempt.append({**key(SOURCE), "project_key": "sessions"}, lines("a", 3))
            sub_key: SessionKey = {
                "project_key": "sessions",
                "session_id": SOURCE,
                "subpath": "subagents/agent-1",
            }
            await earlier_attempt.append(sub_key, lines("sub", 1))
        store = PinnedProjectStore(TranscriptStore(backend))
        backend.calls.clear()
        assert await store.preload(SOURCE, subkeys=True) is True
        assert sorted(backend.calls) == ["list_children", "list_tree", "read"]
        assert await store.preload(FORK) is False

        backend.calls.clear()
        assert await store.load(key(SOURCE)) == lines("a", 3)
        assert await store.list_subkeys(key(SOURCE)) == ["subagents/agent-1"]
        assert backend.calls == [], "the resume's loads were served from the preload"
        assert await store.load(key(SOURCE)) == lines("a", 3)
        assert backend.calls, "a preload is handed over once; later loads ask the store"
        await store.inner.close()

    run(scenario)


def test_reconcile_asks_the_store_only_about_lines_it_has_not_seen_stored(tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = CountingBackend(tmp_path / "store")
        store = PinnedProjectStore(TranscriptStore(backend))
        config_dir = tmp_path / "config"
        tap = TranscriptTap(config_dir, tmp_path / "sdk-tmp", tmp_path / "tap")
        written = lines("q", 4)
        write_local(config_dir, FORK, written)
        tap.capture()
        for entry in written:  # the SDK's eager mirror: one append per line, all landed
            await store.append(key(FORK), [entry])  # type: ignore[list-item]
        await store.wait_mirrored()

        backend.calls.clear()
        assert await reconcile(store, tap) == {FORK: 0}
        assert backend.calls == [], "every local line was seen stored: no round trip"

        # A batch the SDK gave up on, though its write landed, and a line never mirrored.
        landed, never_sent = lines("landed", 1), lines("lost", 1)
        await store.inner.append({**key(FORK), "project_key": "sessions"}, landed)  # type: ignore[list-item]
        write_local(config_dir, FORK, written + landed + never_sent)
        assert await reconcile(store, tap) == {FORK: 1}
        assert "list_children" in backend.calls
        assert await store.inner.load({**key(FORK), "project_key": "sessions"}) == (
            written + landed + never_sent
        )
        await store.inner.close()

    run(scenario)


def test_reconcile_leaves_a_fork_source_alone(tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = CountingBackend(tmp_path / "store")
        store = PinnedProjectStore(TranscriptStore(backend))
        config_dir = tmp_path / "config"
        tap = TranscriptTap(config_dir, tmp_path / "sdk-tmp", tmp_path / "tap")
        write_local(config_dir, SOURCE, lines("history", 2))  # the materialized source
        write_local(config_dir, FORK, lines("history", 2) + lines("new", 1))
        tap.capture()
        backend.calls.clear()
        assert await reconcile(store, tap, skip_sessions={SOURCE}) == {FORK: 3}
        assert await store.inner.load({**key(SOURCE), "project_key": "sessions"}) is None
        await store.inner.close()

    run(scenario)


def test_the_mirror_writes_a_burst_of_appends_as_the_next_part(tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = CountingBackend(tmp_path / "store")
        store = PinnedProjectStore(TranscriptStore(backend))
        backend.released.clear()
        frames = [lines(f"frame{i}", 2) for i in range(5)]
        for frame in frames:
            # The SDK appends one frame at a time and waits: none waits for a write.
            await asyncio.wait_for(store.append(key(FORK), frame), timeout=10)  # type: ignore[arg-type]
        mirrored = asyncio.ensure_future(store.wait_mirrored())
        # A negative check: a mirror that did not wait for its writes would be done by now.
        done, _ = await asyncio.wait({mirrored}, timeout=0.2)
        assert not done
        backend.released.set()
        await mirrored
        assert backend.calls.count("write") == 2, "the first frame, then the four queued behind it"
        everything = [entry for frame in frames for entry in frame]
        assert await store.load(key(FORK)) == everything
        tap = TranscriptTap(tmp_path / "config", tmp_path / "sdk-tmp", tmp_path / "tap")
        write_local(tmp_path / "config", FORK, everything)
        tap.capture()
        backend.calls.clear()
        assert await reconcile(store, tap) == {FORK: 0}
        assert backend.calls == []
        await store.inner.close()

    run(scenario)


def test_lines_the_mirror_gives_up_on_are_reported_and_left_to_the_reconcile(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        backend = CountingBackend(tmp_path / "store")
        failures: list[tuple[str, int, str]] = []
        store = PinnedProjectStore(
            TranscriptStore(backend),
            on_mirror_failure=lambda k, n, e: failures.append((k["session_id"], n, str(e))),
        )
        backend.refuse_writes = True
        await store.append(key(FORK), lines("outage", 3))  # type: ignore[arg-type]
        await store.wait_mirrored()
        ((session, count, error),) = failures
        assert (session, count) == (FORK, 3)
        assert error.startswith("refused write of sessions/")
        assert backend.calls.count("write") == 3, "three attempts, as the SDK makes"

        backend.refuse_writes = False
        tap = TranscriptTap(tmp_path / "config", tmp_path / "sdk-tmp", tmp_path / "tap")
        write_local(tmp_path / "config", FORK, lines("outage", 3))
        tap.capture()
        assert await reconcile(store, tap) == {FORK: 3}
        assert await store.load(key(FORK)) == lines("outage", 3)
        await store.inner.close()

    run(scenario)
