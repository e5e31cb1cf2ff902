"""A SessionStore view that pins every key to one logical project, whatever the SDK derived.

The SDK names a transcript's project after the working directory (`/workspace` -> `-workspace`),
so the same session would live under different keys if the next attempt mounted its workspace
elsewhere. The runner wraps the namespace-scoped store in this view so resumes find a session by
its id wherever the pod (or a local run) keeps its files.

What only the runner needs rides along:
- the mirror: `append` (the SDK calls it for every transcript frame of the CLI, one at a time)
  queues the lines and returns; one task per transcript writes them in order, and the lines
  queued while a write is in flight go out together as the next part. A line waits only behind
  the write in flight, as it waited behind the SDK's previous append before, but a burst of
  frames (the CLI flushes its transcript lazily) costs two writes, not one each. A write that
  fails is retried as the SDK retries its appends (3 attempts) and then left to the reconcile
  after the query, which uploads whatever the store lacks;
- the preflight's `preload`: the runner loads a session to learn whether it exists, and the
  SDK's own load of it right after gets those entries instead of a second download;
- `known`: the entries this process saw the store hold (written or loaded), so the reconcile
  checks the local transcript against them without a round trip.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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

MIRROR_ATTEMPTS = 3
MIRROR_BACKOFF_S = (0.2, 0.8)
"""Retries of one mirror write, as the SDK retries its own appends."""

_Stream = tuple[str, str | None]
"""A transcript by session id and subpath (None: the session's main transcript)."""


@dataclass
class _Preloaded:
    entries: list[SessionStoreEntry] | None
    subkeys: list[str] | None


@dataclass
class _Mirror:
    """One transcript's lines not written yet, and the task writing them."""

    key: SessionKey
    pending: list[SessionStoreEntry]
    task: asyncio.Task[None] = field(init=False)


def _stream(key: SessionKey) -> _Stream:
    return key["session_id"], key.get("subpath")


class PinnedProjectStore:
    """Delegates to `inner` with `project_key` replaced by a fixed logical project."""

    def __init__(
        self,
        inner: TranscriptStore,
        project: str = LOGICAL_PROJECT,
        *,
        on_mirror_failure: Callable[[SessionKey, int, Exception], None] | None = None,
    ) -> None:
        self.inner = inner
        self.project = project
        self.load_seconds = 0.0
        """Time spent in `load` so far (the run loop's phase logs: resume hydration)."""
        self._on_mirror_failure = on_mirror_failure
        self._preloaded: dict[str, _Preloaded] = {}
        self._known: dict[_Stream, StoredEntries] = {}
        self._mirrors: dict[_Stream, _Mirror] = {}
        self._loads_done = 0

    def _loaded(self, key: SessionKey, entries: list[SessionStoreEntry] | None) -> None:
        # A load is the whole stored transcript at that moment: it replaces what was known.
        self._loads_done += 1
        self._known[_stream(key)] = StoredEntries.of(entries or [])

    def pin(self, key: SessionKey) -> SessionKey:
        pinned: SessionKey = {"project_key": self.project, "session_id": key["session_id"]}
        if "subpath" in key:
            pinned["subpath"] = key["subpath"]
        return pinned

    def known(self, key: SessionKey) -> StoredEntries:
        """What this process saw the store hold of `key`'s transcript (written or loaded)."""
        return self._known.setdefault(_stream(key), StoredEntries())

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
        """Queue the lines for the transcript's mirror task and return (see the module doc)."""
        if not entries:
            return
        pinned = self.pin(key)
        mirror = self._mirrors.get(_stream(pinned))
        if mirror is not None and not mirror.task.done():
            mirror.pending.extend(entries)
            return
        mirror = _Mirror(key=pinned, pending=list(entries))
        mirror.task = asyncio.get_running_loop().create_task(self._write_mirror(mirror))
        self._mirrors[_stream(pinned)] = mirror

    async def write(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Write the lines now, as one part, past the mirror; raises StoreError if that fails
        (the reconcile's uploads, which must know)."""
        pinned = self.pin(key)
        loads_before = self._loads_done
        await self.inner.append(pinned, entries)
        if self._loads_done == loads_before:
            self.known(pinned).add(entries)

    async def _write_mirror(self, mirror: _Mirror) -> None:
        while mirror.pending:
            batch, mirror.pending = mirror.pending, []
            loads_before = self._loads_done
            for attempt in range(MIRROR_ATTEMPTS):
                try:
                    await self.inner.append(mirror.key, batch)
                except Exception as exc:  # whatever broke, the reconcile uploads these lines
                    if attempt + 1 < MIRROR_ATTEMPTS:
                        # Backoff between attempts of one write, not synchronisation.
                        await asyncio.sleep(MIRROR_BACKOFF_S[attempt])
                        continue
                    if self._on_mirror_failure is not None:
                        self._on_mirror_failure(mirror.key, len(batch), exc)
                    break
                if self._loads_done == loads_before:
                    # (A load that ended meanwhile may already count these: never count twice.)
                    self.known(mirror.key).add(batch)
                break

    async def wait_mirrored(self, session_id: str | None = None) -> None:
        """Wait until every line appended so far (to `session_id`'s transcripts, or to all) has
        been written, or given up on after its retries."""
        while True:
            running = [
                mirror.task
                for (mirrored_session, _), mirror in self._mirrors.items()
                if session_id in (None, mirrored_session) and not mirror.task.done()
            ]
            if not running:
                return
            await asyncio.gather(*running)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        pinned = self.pin(key)
        await self.wait_mirrored(pinned["session_id"])
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
        await self.wait_mirrored()
        return await self.inner.list_sessions(self.project)

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        await self.wait_mirrored()
        return await self.inner.list_session_summaries(self.project)

    async def delete(self, key: SessionKey) -> None:
        await self.wait_mirrored(key["session_id"])
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
        await self.wait_mirrored(key["session_id"])
        return await self.inner.list_subkeys(
            {"project_key": self.project, "session_id": key["session_id"]}
        )

    async def check(self) -> None:
        await self.inner.check()

    async def flush(self) -> None:
        """Wait for the mirror and for the summaries behind it."""
        await self.wait_mirrored()
        await self.inner.flush()

    async def compact(self, key: SessionKey) -> None:
        await self.wait_mirrored(key["session_id"])
        await self.inner.compact(self.pin(key))

    def uri(self, key: SessionKey | None = None) -> str:
        return self.inner.uri(self.pin(key) if key is not None else None)

    async def put_result(self, session_id: str, data: bytes) -> str:
        return await self.inner.put_result(self.project, session_id, data)
