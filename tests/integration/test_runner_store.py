"""The runner's view of the transcript store on a real (filesystem) backend: the preflight's
preload that the SDK's resume takes over, and the reconcile after the query, which asks the store
only about lines this process has not seen it hold. Store requests are counted at the backend."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from claude_agent_sdk.types import SessionKey

from agentsession_contract.store import TranscriptStore
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
    """The filesystem backend, recording every storage call by name."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if name in BACKEND_CALLS:
            super().__getattribute__("calls").append(name)
        return attribute


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
