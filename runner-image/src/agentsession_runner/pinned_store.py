"""A SessionStore view that pins every key to one logical project, whatever the SDK derived.

The SDK names a transcript's project after the working directory (`/workspace` -> `-workspace`),
so the same session would live under different keys if the next attempt mounted its workspace
elsewhere. The runner wraps the namespace-scoped store in this view so resumes find a session by
its id wherever the pod (or a local run) keeps its files.

Two things only the runner needs ride along: the preflight's `preload` (the runner loads a session
to learn whether it exists, and the SDK's own load of it right after gets those entries instead of
a second download), and `known`, the entries this process saw the store hold (appended or loaded),
so the reconcile after the query checks the local transcript against them without a round trip.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)

from agentsession_contract.store import TranscriptStore
from agentsession_contract.store.keys import LOGICAL_PROJECT
from agentsession_runner.transcripts import StoredEntries


@dataclass
class _Preloaded:
    entries: list[SessionStoreEntry] | None
    subkeys: list[str] | None


class PinnedProjectStore:
    """Delegates to `inner` with `project_key` replaced by a fixed logical project."""

    def __init__(self, inner: TranscriptStore, project: str = LOGICAL_PROJECT) -> None:
        self.inner = inner
        self.project = project
        self.load_seconds = 0.0
        """Time spent in `load` so far (the run loop's phase logs: resume hydration)."""
        self._preloaded: dict[str, _Preloaded] = {}
        self._known: dict[tuple[str, str | None], StoredEntries] = {}
        self._loads_done = 0

    def _loaded(self, key: SessionKey, entries: list[SessionStoreEntry] | None) -> None:
        # A load is the whole stored transcript at that moment: it replaces what was known.
        self._loads_done += 1
        self._known[(key["session_id"], key.get("subpath"))] = StoredEntries.of(entries or [])

    def pin(self, key: SessionKey) -> SessionKey:
        pinned: SessionKey = {"project_key": self.project, "session_id": key["session_id"]}
        if "subpath" in key:
            pinned["subpath"] = key["subpath"]
        return pinned

    def known(self, key: SessionKey) -> StoredEntries:
        """What this process saw the store hold of `key`'s transcript (appended or loaded)."""
        return self._known.setdefault((key["session_id"], key.get("subpath")), StoredEntries())

    async def preload(self, session_id: str, *, subkeys: bool = False) -> bool:
        """Load the session's main transcript (and, with `subkeys`, list its subagent
        transcripts, at the same time) for the SDK's resume to take; True if it exists."""
        key = self.pin({"project_key": "", "session_id": session_id})
        if subkeys:
            entries, listed = await asyncio.gather(
                self.inner.load(key), self.inner.list_subkeys(key)
            )
        else:
            entries, listed = await self.inner.load(key), None
        self._loaded(key, entries)
        self._preloaded[session_id] = _Preloaded(entries, listed)
        return bool(entries)

    def drop_preloaded(self, session_id: str) -> None:
        """Forget a preload the attempt will not resume from."""
        self._preloaded.pop(session_id, None)

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        pinned = self.pin(key)
        loads_before = self._loads_done
        await self.inner.append(pinned, entries)
        if self._loads_done == loads_before:
            # (A load that ended meanwhile may already count these: never count them twice.)
            self.known(pinned).add(entries)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        pinned = self.pin(key)
        if "subpath" not in pinned:
            preloaded = self._preloaded.get(pinned["session_id"])
            if preloaded is not None and preloaded.entries is not None:
                # Handed over once: the SDK's resume loads right after the preflight did.
                handed_over, preloaded.entries = preloaded.entries, None
                return handed_over
        started = time.monotonic()
        try:
            entries = await self.inner.load(pinned)
        finally:
            self.load_seconds += time.monotonic() - started
        self._loaded(pinned, entries)
        return entries

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        return await self.inner.list_sessions(self.project)

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        return await self.inner.list_session_summaries(self.project)

    async def delete(self, key: SessionKey) -> None:
        await self.inner.delete(self.pin(key))
        subpath = key.get("subpath")
        for known in [k for k in self._known if k[0] == key["session_id"]]:
            if subpath is None or known[1] == subpath:
                del self._known[known]

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        preloaded = self._preloaded.get(key["session_id"])
        if preloaded is not None and preloaded.subkeys is not None:
            subkeys, preloaded.subkeys = preloaded.subkeys, None
            return subkeys
        return await self.inner.list_subkeys(
            {"project_key": self.project, "session_id": key["session_id"]}
        )

    async def check(self) -> None:
        await self.inner.check()

    async def flush(self) -> None:
        await self.inner.flush()

    async def compact(self, key: SessionKey) -> None:
        await self.inner.compact(self.pin(key))

    def uri(self, key: SessionKey | None = None) -> str:
        return self.inner.uri(self.pin(key) if key is not None else None)

    async def put_result(self, session_id: str, data: bytes) -> str:
        return await self.inner.put_result(self.project, session_id, data)
