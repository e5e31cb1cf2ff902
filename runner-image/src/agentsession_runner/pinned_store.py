"""A SessionStore view that pins every key to one logical project, whatever the SDK derived.

The SDK names a transcript's project after the working directory (`/workspace` -> `-workspace`),
so the same session would live under different keys if the next attempt mounted its workspace
elsewhere. The runner wraps the namespace-scoped store in this view so resumes find a session by
its id wherever the pod (or a local run) keeps its files.
"""

from __future__ import annotations

import time

from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)

from agentsession_contract.store import TranscriptStore
from agentsession_contract.store.keys import LOGICAL_PROJECT


class PinnedProjectStore:
    """Delegates to `inner` with `project_key` replaced by a fixed logical project."""

    def __init__(self, inner: TranscriptStore, project: str = LOGICAL_PROJECT) -> None:
        self.inner = inner
        self.project = project
        self.load_seconds = 0.0
        """Time spent in `load` so far (the run loop's phase logs: resume hydration)."""

    def pin(self, key: SessionKey) -> SessionKey:
        pinned: SessionKey = {"project_key": self.project, "session_id": key["session_id"]}
        if "subpath" in key:
            pinned["subpath"] = key["subpath"]
        return pinned

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        await self.inner.append(self.pin(key), entries)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        started = time.monotonic()
        try:
            return await self.inner.load(self.pin(key))
        finally:
            self.load_seconds += time.monotonic() - started

    async def exists(self, key: SessionKey) -> bool:
        return await self.inner.exists(self.pin(key))

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        return await self.inner.list_sessions(self.project)

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        return await self.inner.list_session_summaries(self.project)

    async def delete(self, key: SessionKey) -> None:
        await self.inner.delete(self.pin(key))

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        return await self.inner.list_subkeys(
            {"project_key": self.project, "session_id": key["session_id"]}
        )

    async def check(self) -> None:
        await self.inner.check()

    async def compact(self, key: SessionKey) -> None:
        await self.inner.compact(self.pin(key))

    def uri(self, key: SessionKey | None = None) -> str:
        return self.inner.uri(self.pin(key) if key is not None else None)

    async def put_result(self, session_id: str, data: bytes) -> str:
        return await self.inner.put_result(self.project, session_id, data)
