"""TranscriptStore: the SessionStore the runner hands to query(), plus compaction and results.

How it stays correct without read-modify-write of transcripts:

- Ordering: every append writes one new part object named `<seq>-<writer>.jsonl`. `seq` is the
  writer's wall clock in microseconds, forced strictly increasing within a store instance and
  above the highest seq already stored for that stream (listed once per stream per instance).
  Loads concatenate parts in name order. The floor makes a resumed session (a new pod whose
  clock may lag the previous pod's) append after everything it could see, whatever the skew;
  writers that truly overlap in time interleave by their clocks, which approximates the SDK's
  "order by storage commit time" to within the clock skew between them.
- Loads: one listing of the stream, then every object fetched in parallel on the store's
  worker threads (at most MAX_CONCURRENCY at once); after compaction that is 1 LIST + 1 GET.
  Stream objects are immutable (a name is written once, by the one writer whose id it holds),
  so an instance keeps the bytes it wrote or read (up to OBJECT_CACHE_MAX_BYTES) and lists but
  does not fetch them again: the runner's reconcile and compaction after a query cost a listing,
  not a second download of the transcript.
- Dedup: a load keeps the first entry per `uuid`, so a batch the SDK retried after a timeout
  costs bytes, never duplicates. Entries without `uuid` are kept as written.
- Compaction: list the stream, read it, write one compacted object holding every part read
  (as separate segments, see `codec`), then delete exactly the objects read. A part appended
  meanwhile is neither read nor deleted, and a load unions compacted segments and parts by part
  name, so nothing is lost or doubled whatever interleaving or crash occurs.
- Summaries: `append` folds its entries into `<session>/summary.json` with compare-and-swap
  writes (S3 If-Match / If-None-Match; flock+compare on the filesystem), re-reading and
  re-folding on conflict. The sidecar's mtime is its storage time, on the same clock as the
  transcript objects `list_sessions` reports, and it is written after the part, so it is never
  older than the transcript it summarises; compaction rewrites it after its own write for the
  same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from claude_agent_sdk import fold_session_summary

from agentsession_contract.store import codec, keys
from agentsession_contract.store.backend import (
    Backend,
    ObjectVersion,
    PreconditionFailed,
    StoredObject,
)
from agentsession_contract.store.errors import StoreError
from agentsession_contract.store.keys import StreamKey

if TYPE_CHECKING:
    from claude_agent_sdk.types import (
        SessionKey,
        SessionListSubkeysKey,
        SessionStore,
        SessionStoreEntry,
        SessionStoreListEntry,
        SessionSummaryEntry,
    )

_P = ParamSpec("_P")
_T = TypeVar("_T")

log = logging.getLogger(__name__)

MAX_CONCURRENCY = 16
"""Worker threads per store: bounds concurrent requests (a load's GETs) and connections."""
SUMMARY_CAS_ATTEMPTS = 10
SNAPSHOT_ATTEMPTS = 5
OBJECT_CACHE_MAX_BYTES = 32 * 1024 * 1024
"""Bytes of immutable stream objects one instance keeps by default (oldest dropped first beyond
it; 0 keeps none, as a reader that must fetch everything, like the next attempt's pod)."""
"""How often a load or compaction re-lists after an object vanished (a concurrent compaction)."""


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class _ObjectVanished(Exception):
    """An object listed a moment ago is gone: a concurrent compaction or delete; list again."""


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The objects of one stream as listed, with every part's lines keyed by part name."""

    objects: list[StoredObject]
    segments: dict[str, list[bytes]]
    names: list[keys.StreamObjectName]

    def is_compact(self) -> bool:
        # One object already loads with a single GET, whatever kind it is.
        return len(self.names) <= 1

    def ordered_lines(self) -> list[bytes]:
        lines: list[bytes] = []
        for part in sorted(self.segments):
            lines.extend(self.segments[part])
        return lines


@dataclass(frozen=True, slots=True)
class _Sidecar:
    """A summary sidecar as last read or written: data (None if absent) and its etag."""

    data: dict[str, Any] | None
    etag: str | None

    @classmethod
    def from_object(cls, stored: ObjectVersion | None) -> _Sidecar:
        if stored is None:
            return cls(data=None, etag=None)
        try:
            return cls(data=codec.decode_sidecar(stored.data), etag=stored.etag)
        except ValueError:
            # Unreadable sidecar: refold from scratch and overwrite it (the etag still guards).
            log.warning("summary sidecar is malformed; rebuilding it")
            return cls(data=None, etag=stored.etag)


class TranscriptStore:
    """SessionStore over a Backend, scoped to one namespace (the backend's root).

    Create with `open_store(url, namespace)`. One instance is one writer: its id goes into every
    part name. Use an instance from one event loop at a time.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_concurrency: int = MAX_CONCURRENCY,
        clock_us: Callable[[], int] = wall_clock_us,
        writer_id: str | None = None,
        object_cache_bytes: int = OBJECT_CACHE_MAX_BYTES,
    ) -> None:
        if writer_id is not None and not keys.is_writer_id(writer_id):
            raise ValueError("writer_id must be 16 lowercase hex digits")
        self._backend = backend
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="transcript-store")
        self._clock_us = clock_us
        self.writer_id = writer_id or secrets.token_hex(8)
        self._last_seq = 0
        self._floors: dict[str, int] = {}  # stream dir -> highest seq known to be stored
        self._sidecars: dict[str, _Sidecar] = {}  # summary path -> what we last wrote
        self._objects: dict[str, bytes] = {}  # stream object key -> its bytes (insertion order)
        self._objects_bytes = 0
        self._object_cache_bytes = object_cache_bytes
        self._seq_locks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Lock]
        ] = weakref.WeakKeyDictionary()

    # --- plumbing ---------------------------------------------------------------------------

    async def _io(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(call, *args, **kwargs))

    @property
    def backend(self) -> Backend:
        """The storage it runs on (workspace snapshots use it too)."""
        return self._backend

    def _seq_lock(self, stream_dir: str) -> asyncio.Lock:
        locks = self._seq_locks.setdefault(asyncio.get_running_loop(), {})
        return locks.setdefault(stream_dir, asyncio.Lock())

    def _remember(self, key: str, data: bytes) -> None:
        if key in self._objects or len(data) > self._object_cache_bytes:
            return
        self._objects[key] = data
        self._objects_bytes += len(data)
        while self._objects_bytes > self._object_cache_bytes:
            oldest = next(iter(self._objects))
            self._objects_bytes -= len(self._objects.pop(oldest))

    async def _read_stream_object(self, key: str) -> bytes | None:
        cached = self._objects.get(key)
        if cached is not None:
            return cached
        stored = await self._io(self._backend.read, key)
        if stored is None:
            return None
        self._remember(key, stored.data)
        return stored.data

    async def _write_stream_object(self, key: str, data: bytes) -> None:
        await self._io(self._backend.write, key, data)
        self._remember(key, data)

    def _note_stored(self, stream_dir: str, names: list[keys.StreamObjectName]) -> None:
        highest = max((name.seq for name in names), default=0)
        self._floors[stream_dir] = max(self._floors.get(stream_dir, 0), highest)

    async def _next_seq(self, stream: StreamKey) -> int:
        stream_dir = stream.stream_dir
        # The lock is uncontended (and does not yield) once the floor is known; it exists so that
        # concurrent first appends to a stream still get sequence numbers in call order.
        async with self._seq_lock(stream_dir):
            if stream_dir not in self._floors:
                listed = await self._io(self._backend.list_children, stream_dir)
                self._note_stored(stream_dir, _stream_names(listed))
            seq = max(self._clock_us(), self._last_seq + 1, self._floors[stream_dir] + 1)
            self._last_seq = seq
            return seq

    async def _snapshot(self, stream: StreamKey) -> _Snapshot:
        listed = await self._io(self._backend.list_children, stream.stream_dir)
        by_name = {obj.key.rpartition("/")[2]: obj for obj in listed}
        names = sorted(_stream_names(listed))
        self._note_stored(stream.stream_dir, names)
        objects = [by_name[name.name] for name in names]
        bodies = await asyncio.gather(*(self._read_stream_object(obj.key) for obj in objects))
        segments: dict[str, list[bytes]] = {}
        for name, obj, body in zip(names, objects, bodies, strict=True):
            if body is None:
                raise _ObjectVanished(obj.key)
            if name.kind == "part":
                segments.setdefault(name.name, codec.split_lines(body))
                continue
            try:
                parts = codec.decode_compacted(body)
            except ValueError as exc:
                raise StoreError(f"corrupt compacted object {self._backend.uri(obj.key)}") from exc
            for part, lines in parts:
                segments.setdefault(part, lines)
        return _Snapshot(objects=objects, segments=segments, names=names)

    async def _stable_snapshot(self, stream: StreamKey) -> _Snapshot:
        for _ in range(SNAPSHOT_ATTEMPTS):
            try:
                return await self._snapshot(stream)
            except _ObjectVanished:
                continue  # compaction writes its object before deleting, so a re-list sees it
        raise StoreError(
            f"transcript {self._backend.uri(stream.stream_dir)} kept changing while being read"
        )

    # --- SessionStore -----------------------------------------------------------------------

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        stream = keys.parse_key(key)
        if not entries:
            return
        body = codec.encode_entries(cast("list[Mapping[str, Any]]", entries))
        seq = await self._next_seq(stream)
        part_key = stream.stream_dir + keys.part_name(seq, self.writer_id)
        if stream.subpath is not None:
            # Subagent transcripts must not feed the main session's summary.
            await self._write_stream_object(part_key, body)
            return
        summary_key = keys.summary_path(stream.project_key, stream.session_id)
        sidecar = self._sidecars.get(summary_key)
        if sidecar is not None:
            await self._write_stream_object(part_key, body)
        else:
            # Fetch the sidecar while the part uploads; the sidecar write itself must follow the
            # part so its storage time is not older than the part's.
            written, fetched = await asyncio.gather(
                self._write_stream_object(part_key, body),
                self._io(self._backend.read, summary_key),
                return_exceptions=True,
            )
            if isinstance(written, BaseException):
                raise written
            if not isinstance(fetched, BaseException):
                sidecar = _Sidecar.from_object(fetched)
        await self._fold_summary(stream, summary_key, entries, sidecar)

    async def _fold_summary(
        self,
        stream: StreamKey,
        summary_key: str,
        entries: list[SessionStoreEntry],
        sidecar: _Sidecar | None,
    ) -> None:
        """Fold `entries` into the sidecar by compare-and-swap; `sidecar` None means unknown.

        Failures are logged, not raised: the part is already durable, and raising would make the
        SDK re-append the batch, duplicating its uuid-less entries. A summary left behind is
        detected by readers because its mtime is older than the session's. A conflict reported
        for a retried request whose first attempt landed re-folds the same entries, which is
        harmless: every summary field is set-once or last-wins.
        """
        session_key: SessionKey = {
            "project_key": stream.project_key,
            "session_id": stream.session_id,
        }
        for attempt in range(SUMMARY_CAS_ATTEMPTS):
            try:
                if sidecar is None:
                    sidecar = _Sidecar.from_object(await self._io(self._backend.read, summary_key))
                previous: SessionSummaryEntry | None = None
                if sidecar.data is not None:
                    previous = {"session_id": stream.session_id, "mtime": 0, "data": sidecar.data}
                folded = fold_session_summary(previous, session_key, entries)
                body = codec.encode_sidecar(stream.session_id, folded["data"])
                etag = await self._io(self._backend.write_if, summary_key, body, sidecar.etag)
            except PreconditionFailed:
                sidecar = None
                self._sidecars.pop(summary_key, None)
                # Jittered backoff spreads writers that keep colliding on one sidecar.
                await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))  # noqa: S311
                continue
            except Exception as exc:
                # Whatever broke (storage, a malformed entry for the fold), the summary is only
                # an index; the transcript part already landed and must not be sent again.
                self._sidecars.pop(summary_key, None)
                log.warning("summary update of %s failed: %s", summary_key, exc)
                return
            self._sidecars[summary_key] = _Sidecar(data=folded["data"], etag=etag)
            return
        log.warning(
            "summary update of %s gave up after %d conflicts", summary_key, SUMMARY_CAS_ATTEMPTS
        )

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        stream = keys.parse_key(key)
        snapshot = await self._stable_snapshot(stream)
        if not snapshot.objects:
            return None
        try:
            entries: list[SessionStoreEntry] = codec.decode_entries(snapshot.ordered_lines())
        except ValueError as exc:
            raise StoreError(
                f"transcript {self._backend.uri(stream.stream_dir)} has a malformed line"
            ) from exc
        return entries

    async def exists(self, key: SessionKey) -> bool:
        """Does the store hold any of this transcript? One listing, nothing read (a resume
        check need not load what the SDK loads again right after)."""
        stream = keys.parse_key(key)
        listed = await self._io(self._backend.list_children, stream.stream_dir)
        return bool(_stream_names(listed))

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        project_dir = keys.project_dir(keys.check_segment(project_key, "project_key"))
        listed = await self._io(self._backend.list_tree, project_dir)
        mtimes: dict[str, int] = {}
        for obj in listed:
            session_id = keys.main_session_of(obj.key[len(project_dir) :])
            if session_id is not None:
                mtimes[session_id] = max(mtimes.get(session_id, 0), obj.mtime_ms)
        return [{"session_id": sid, "mtime": mtime} for sid, mtime in sorted(mtimes.items())]

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        project_dir = keys.project_dir(keys.check_segment(project_key, "project_key"))
        listed = await self._io(self._backend.list_tree, project_dir)
        sidecars = {
            session_id: obj.key
            for obj in listed
            if (session_id := keys.summary_session_of(obj.key[len(project_dir) :])) is not None
        }
        bodies = await asyncio.gather(
            *(self._io(self._backend.read, key) for key in sidecars.values())
        )
        summaries: list[SessionSummaryEntry] = []
        for session_id, stored in zip(sidecars, bodies, strict=True):
            if stored is None:
                continue  # deleted since the listing
            try:
                data = codec.decode_sidecar(stored.data)
            except ValueError:
                continue  # the SDK falls back to loading a session that has no usable summary
            summaries.append({"session_id": session_id, "mtime": stored.mtime_ms, "data": data})
        return summaries

    async def delete(self, key: SessionKey) -> None:
        stream = keys.parse_key(key)
        if stream.subpath is None:
            # The whole session: subagent transcripts, summary and result go with it.
            listed = await self._io(self._backend.list_tree, stream.session_dir)
            doomed = [obj.key for obj in listed]
            self._forget(lambda path: path.startswith(stream.session_dir))
        else:
            listed = await self._io(self._backend.list_children, stream.stream_dir)
            doomed = [obj.key for obj in listed if _name_of(obj) is not None]
            self._forget(lambda path: path == stream.stream_dir)
        if doomed:
            await self._io(self._backend.delete, doomed)
            self._forget_objects(doomed)

    def _forget(self, matches: Callable[[str], bool]) -> None:
        for cache in (self._floors, self._sidecars):
            for path in [path for path in cache if matches(path)]:
                del cache[path]

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        session_dir = keys.session_dir(
            keys.check_segment(key.get("project_key"), "project_key"),
            keys.check_segment(key.get("session_id"), "session_id"),
        )
        sub_dir = f"{session_dir}{keys.SUB_DIR}/"
        listed = await self._io(self._backend.list_tree, sub_dir)
        subpaths = {keys.subpath_of(obj.key[len(sub_dir) :]) for obj in listed}
        return sorted(subpath for subpath in subpaths if subpath is not None)

    # --- runner extras ----------------------------------------------------------------------

    def uri(self, key: SessionKey | None = None) -> str:
        """URI of the store root (key None), a session (main key) or a subagent transcript."""
        if key is None:
            return self._backend.uri("")
        stream = keys.parse_key(key)
        return self._backend.uri(
            stream.session_dir if stream.subpath is None else stream.stream_dir
        )

    async def put_result(self, project_key: str, session_id: str, data: bytes) -> str:
        """Write (or overwrite) the session's result.json; return its URI."""
        path = keys.result_path(
            keys.check_segment(project_key, "project_key"),
            keys.check_segment(session_id, "session_id"),
        )
        await self._io(self._backend.write, path, data)
        return self._backend.uri(path)

    async def compact(self, key: SessionKey) -> None:
        """Merge the transcript's objects into one; concurrent appends are never lost."""
        await self._compact(key)

    async def _compact(
        self, key: SessionKey, *, before_commit: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """`compact`, with a hook tests use to act between reading the parts and committing."""
        stream = keys.parse_key(key)
        for _ in range(SNAPSHOT_ATTEMPTS):
            try:
                snapshot = await self._snapshot(stream)
            except _ObjectVanished:
                continue  # another compaction got there first; start over from its result
            if not snapshot.objects or snapshot.is_compact():
                return
            if before_commit is not None:
                await before_commit()
            segments = [(part, snapshot.segments[part]) for part in sorted(snapshot.segments)]
            seq = await self._next_seq(stream)
            compacted_key = stream.stream_dir + keys.compacted_name(seq, self.writer_id)
            await self._write_stream_object(compacted_key, codec.encode_compacted(segments))
            doomed = [obj.key for obj in snapshot.objects]
            await self._io(self._backend.delete, doomed)
            self._forget_objects(doomed)
            if stream.subpath is None:
                await self._touch_summary(stream)
            return
        raise StoreError(
            f"transcript {self._backend.uri(stream.stream_dir)} kept changing during compaction"
        )

    def _forget_objects(self, deleted: list[str]) -> None:
        for key in deleted:
            data = self._objects.pop(key, None)
            if data is not None:
                self._objects_bytes -= len(data)

    async def _touch_summary(self, stream: StreamKey) -> None:
        """Rewrite the sidecar unchanged so its mtime is again >= the compacted object's."""
        summary_key = keys.summary_path(stream.project_key, stream.session_id)
        known = self._sidecars.pop(summary_key, None)
        if known is not None and known.data is not None and known.etag is not None:
            # What this instance last wrote: no need to read it back. If someone rewrote it
            # since, the condition fails and their write is just as fresh.
            data, etag = codec.encode_sidecar(stream.session_id, known.data), known.etag
        else:
            stored = await self._io(self._backend.read, summary_key)
            if stored is None:
                return
            data, etag = stored.data, stored.etag
        with contextlib.suppress(PreconditionFailed):
            new_etag = await self._io(self._backend.write_if, summary_key, data, etag)
            if known is not None:
                self._sidecars[summary_key] = _Sidecar(data=known.data, etag=new_etag)

    async def check(self) -> None:
        """Raise StoreError now if the store cannot be reached or used."""
        await self._io(self._backend.check)

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self._backend.close()

    async def __aenter__(self) -> TranscriptStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


if TYPE_CHECKING:

    def _is_a_session_store(store: TranscriptStore) -> SessionStore:
        return store  # mypy checks TranscriptStore against the SDK protocol here


def _name_of(obj: StoredObject) -> keys.StreamObjectName | None:
    return keys.parse_object_name(obj.key.rpartition("/")[2])


def _stream_names(listed: list[StoredObject]) -> list[keys.StreamObjectName]:
    return [name for obj in listed if (name := _name_of(obj)) is not None]
