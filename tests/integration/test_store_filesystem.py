"""Filesystem specifics of the transcript store: concurrent folds, unusable roots, foreign files."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agentsession_contract.store import InvalidKeyError, StoreError, open_store

KEY: dict[str, Any] = {"project_key": "-workspace", "session_id": "sess-1"}

# One summary field per writer: the final summary holds all of them only if every fold landed.
FIELD_PER_WRITER = [
    ({"customTitle": "t"}, "custom_title"),
    ({"aiTitle": "a"}, "ai_title"),
    ({"lastPrompt": "p"}, "last_prompt"),
    ({"summary": "s"}, "summary_hint"),
    ({"gitBranch": "b"}, "git_branch"),
    ({"cwd": "/workspace"}, "cwd"),
    ({"type": "tag", "tag": "nightly"}, "tag"),
    ({"timestamp": "2024-01-01T00:00:00Z"}, "created_at"),
]


def test_concurrent_summary_folds_from_many_writers_all_land(tmp_path: Path) -> None:
    url = tmp_path.as_uri()

    async def scenario() -> None:
        stores = [open_store(url, "ns") for _ in FIELD_PER_WRITER]
        await asyncio.gather(
            *(
                store.append(KEY, [{"type": "x", "uuid": f"w{i}", **fields}])
                for i, (store, (fields, _)) in enumerate(zip(stores, FIELD_PER_WRITER, strict=True))
            )
        )
        await asyncio.gather(*(store.flush() for store in stores))  # each writer's fold written
        (summary,) = await stores[0].list_session_summaries(KEY["project_key"])
        assert {name for _, name in FIELD_PER_WRITER} <= set(summary["data"])
        assert len(await stores[0].load(KEY) or []) == len(FIELD_PER_WRITER)
        for store in stores:
            await store.close()

    asyncio.run(scenario())


def test_unusable_root_raises_store_error(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")

    async def scenario() -> None:
        async with open_store(not_a_directory.as_uri(), "ns") as store:
            for call in (
                store.check(),
                store.append(KEY, [{"type": "x"}]),
                store.load(KEY),
                store.list_sessions("p"),
                store.list_subkeys(KEY),
                store.put_result("p", "s", b"{}"),
            ):
                with pytest.raises(StoreError, match="filesystem"):
                    await call
            with pytest.raises(InvalidKeyError):
                await store.load({"project_key": "..", "session_id": "s"})

    asyncio.run(scenario())


def test_files_the_store_did_not_write_are_ignored(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_store(tmp_path.as_uri(), "ns") as store:
            await store.append(KEY, [{"type": "x", "uuid": "a"}])
            await store.append({**KEY, "subpath": "subagents/agent-1"}, [{"type": "x"}])
            session = tmp_path / "ns" / "-workspace" / "sess-1"
            (session / "main" / ".00000000000000000001-0123456789abcdef.jsonl.x.tmp").write_text(
                "{"
            )
            (session / "main" / "notes.txt").write_text("not json")
            (session / "sub" / "subagents" / "README").write_text("x")
            (session / "sub" / "stray").mkdir()
            assert await store.load(KEY) == [{"type": "x", "uuid": "a"}]
            assert await store.list_subkeys(KEY) == ["subagents/agent-1"]
            assert [s["session_id"] for s in await store.list_sessions("-workspace")] == ["sess-1"]

    asyncio.run(scenario())


def test_a_corrupt_part_is_a_store_error_not_garbage(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_store(tmp_path.as_uri(), "ns") as store:
            await store.append(KEY, [{"type": "x", "uuid": "a"}])
            main = tmp_path / "ns" / "-workspace" / "sess-1" / "main"
            (main / "99999999999999999999-0123456789abcdef.jsonl").write_bytes(b'{"type":\n')
            with pytest.raises(StoreError, match="malformed"):
                await store.load(KEY)

    asyncio.run(scenario())
