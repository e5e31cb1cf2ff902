"""Workspace snapshots in the store: incremental, bounded, never following symlinks.

Called by the runner (a snapshot at the end of every attempt and on SIGTERM; a restore before the
agent starts) and by the gateway package's init step (restoring a resume source's or another
session's workspace before fetching sources). Storage is any `Backend` (in a pod: the gateway's
store service under the session's grant).

Layout under a session's area `sessions/<session id>/workspace/`:

    packs/<sha256>              file contents, concatenated (up to PACK_BYTES each)
    manifests/<seq>.json.gz     one per snapshot: every path with its mode, size, mtime, sha256
                                and the (pack, offset, length) chunks holding its bytes

A snapshot walks the tree (lstat only: a symlink is stored as a link, and only when its target
stays inside the workspace; special files are skipped), reuses the chunks of every file whose
stat is unchanged since the last snapshot or restore (a local stat cache, else size and mtime
from the last manifest), packs the bytes of the others, uploads the packs in parallel, then
writes the manifest: readers see the old snapshot or the new one. Restores validate every path
(relative, no `..`), create files with O_NOFOLLOW under directories they verified are not
symlinks, verify each file's sha256, and create symlinks last.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NamedTuple

from agentsession_contract.store.backend import Backend

if TYPE_CHECKING:
    import pathspec
from agentsession_contract.store.errors import StoreError

PACK_BYTES = 8 * 1024 * 1024
"""Target size of a pack: big enough that a 20,000-file tree is a few dozen PUTs, small enough to
hold a few in memory while they upload."""
UPLOAD_WORKERS = 8
_S_IFMT, _S_IFREG, _S_IFDIR, _S_IFLNK = (
    stat.S_IFMT(0o177777),
    stat.S_IFREG,
    stat.S_IFDIR,
    stat.S_IFLNK,
)
DOWNLOAD_WORKERS = 8
MANIFESTS_KEPT = 2
MAX_DEPTH = 8
"""Delta manifests written on top of a full one before the next snapshot is full again (and
collects what the older snapshots alone used)."""
MANIFEST_VERSION = 1
WARNINGS_MAX = 20
_SEQ_DIGITS = 20
_READ_CHUNK = 1024 * 1024


class SnapshotError(Exception):
    """A snapshot could not be taken or restored; the message says why."""


def area(session_id: str) -> str:
    """A session's snapshot area, relative to the namespace's store root."""
    return f"sessions/{session_id}/workspace/"


def check_relative(path: str) -> PurePosixPath:
    """`path` as a safe relative path inside a workspace, or SnapshotError (`..`, absolute, NUL,
    empty segments): applied to every path read from a manifest before anything is written."""
    if not path or "\0" in path or path.startswith("/") or "\\" in path:
        raise SnapshotError(f"unsafe path {path!r} in a workspace snapshot")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise SnapshotError(f"unsafe path {path!r} in a workspace snapshot")
    return PurePosixPath(path)


def link_stays_inside(link: str, target: str) -> bool:
    """Whether symlink `link` (relative to the workspace) pointing at `target` stays inside the
    workspace, resolved lexically (never through the filesystem): relative targets only."""
    if not target or target.startswith("/") or "\0" in target:
        return False
    depth = len(PurePosixPath(link).parts) - 1
    for part in PurePosixPath(target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part != ".":
            depth += 1
    return True


@dataclass(frozen=True)
class Chunk:
    pack: str
    offset: int
    length: int


@dataclass(frozen=True)
class FileEntry:
    path: str
    mode: int
    size: int
    mtime_ns: int
    sha256: str
    chunks: tuple[Chunk, ...]

    def to_json(self) -> list[Any]:
        return [
            self.path,
            self.mode,
            self.size,
            self.mtime_ns,
            self.sha256,
            [[c.pack, c.offset, c.length] for c in self.chunks],
        ]

    @classmethod
    def from_json(cls, raw: list[Any]) -> FileEntry:
        path, mode, size, mtime_ns, sha256, chunks = raw
        return cls(
            str(path),
            int(mode) & 0o777,
            int(size),
            int(mtime_ns),
            str(sha256),
            tuple(Chunk(str(p), int(o), int(n)) for p, o, n in chunks),
        )


@dataclass
class Manifest:
    """One snapshot: files (with their chunks), symlinks, directories."""

    files: dict[str, FileEntry] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    dirs: dict[str, int] = field(default_factory=dict)
    session: str = ""
    """The session whose area holds the packs."""
    base: str | None = None
    """A delta's base manifest: `files` are the changed ones, `removed` the paths gone; links
    and directories are always whole. None: a full manifest."""
    removed: list[str] = field(default_factory=list)
    depth: int = 0
    """Deltas between this manifest and its full base (0: full)."""

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def packs(self) -> set[str]:
        return {c.pack for f in self.files.values() for c in f.chunks}

    def encode(self) -> bytes:
        document = {
            "version": MANIFEST_VERSION,
            "session": self.session,
            "base": self.base,
            "depth": self.depth,
            "removed": self.removed,
            "files": [f.to_json() for f in self.files.values()],
            "links": [[p, t] for p, t in self.links.items()],
            "dirs": [[p, m] for p, m in self.dirs.items()],
        }
        raw = json.dumps(document, separators=(",", ":")).encode()
        return gzip.compress(raw, compresslevel=1, mtime=0)

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        try:
            document = json.loads(gzip.decompress(data))
            if document.get("version") != MANIFEST_VERSION:
                raise ValueError(f"unknown manifest version {document.get('version')!r}")
            files = [FileEntry.from_json(raw) for raw in document["files"]]
            return cls(
                files={f.path: f for f in files},
                links={str(p): str(t) for p, t in document.get("links", [])},
                dirs={str(p): int(m) & 0o777 for p, m in document.get("dirs", [])},
                session=str(document.get("session", "")),
                base=document.get("base"),
                removed=[str(p) for p in document.get("removed") or []],
                depth=int(document.get("depth") or 0),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"the snapshot manifest is unreadable: {exc}") from exc


@dataclass
class StatCache:
    """What the last snapshot or restore saw of each file (this pod only): size, mtime, ctime and
    inode. A file whose stat matches reuses its manifest entry without being read."""

    manifest_key: str | None = None
    session: str | None = None
    stats: dict[str, int] = field(default_factory=dict)
    """Per path, a signature of (size, mtime, ctime, inode): equal means unchanged."""
    depth: int = 0
    """The manifest's depth (deltas since its full base)."""

    @staticmethod
    def of(st: os.stat_result) -> int:
        # A tuple of ints hashes the same way in every process of one Python: the cache lives
        # in one pod, read by the runner that wrote it or by the next step of the same image.
        return hash((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))

    def save(self, path: Path) -> None:
        """A JSON header line, then `<signature> <path>` per file (20,000 lines: JSON of them
        took most of an incremental snapshot's time)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        header = json.dumps(
            {"manifest": self.manifest_key, "session": self.session, "depth": self.depth}
        )
        body = "\n".join(f"{sig} {p}" for p, sig in self.stats.items())
        tmp.write_text(f"{header}\n{body}\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> StatCache:
        try:
            header, _, body = path.read_text().partition("\n")
            raw = json.loads(header)
            stats = {}
            for line in body.splitlines():
                sig, _, name = line.partition(" ")
                stats[name] = int(sig)
            return cls(
                manifest_key=raw.get("manifest"),
                session=raw.get("session"),
                stats=stats,
                depth=int(raw.get("depth") or 0),
            )
        except (OSError, ValueError, TypeError, KeyError, IndexError):
            return cls()


@dataclass
class SnapshotResult:
    """What a snapshot did (the runner's summary reports it)."""

    taken: bool
    files: int = 0
    bytes: int = 0
    uploaded_bytes: int = 0
    packs_uploaded: int = 0
    manifest_key: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class RestoreResult:
    """What a restore wrote."""

    restored: bool
    files: int = 0
    bytes: int = 0
    downloaded_bytes: int = 0
    manifest_key: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def latest_manifest_key(backend: Backend, session_id: str) -> str | None:
    """The key of a session's newest snapshot manifest, or None if it has none."""
    keys = _manifest_keys(backend, session_id)
    return keys[-1] if keys else None


def _read_manifest(backend: Backend, key: str) -> Manifest:
    stored = backend.read(key)
    if stored is None:
        raise SnapshotError(f"the snapshot manifest {key} vanished")
    return Manifest.decode(stored.data)


def load_manifest(backend: Backend, key: str) -> Manifest:
    """The whole snapshot `key` names: a full manifest, or a delta applied on its bases."""
    return load_manifest_chain(backend, key)[0]


def load_manifest_chain(backend: Backend, key: str) -> tuple[Manifest, list[str]]:
    """The whole snapshot `key` names, and the keys of the manifests it is made of."""
    keys = [key]
    chain = [_read_manifest(backend, key)]
    depth = chain[0].depth
    while chain[-1].base is not None:
        if len(chain) > MAX_DEPTH + 1:
            raise SnapshotError(f"the snapshot manifest {key} has too long a chain of bases")
        base = str(chain[-1].base)
        if not base.startswith(area(chain[0].session) + "manifests/"):
            raise SnapshotError(f"the snapshot manifest {key} names a base outside its area")
        chain.append(_read_manifest(backend, base))
        keys.append(base)
    merged = chain.pop()
    while chain:
        delta = chain.pop()
        merged.files.update(delta.files)
        for path in delta.removed:
            merged.files.pop(path, None)
        merged.links, merged.dirs = delta.links, delta.dirs
    merged.base, merged.removed, merged.depth = None, [], depth
    return merged, keys


# ---- taking a snapshot --------------------------------------------------------------------------


class _Seen(NamedTuple):
    """One regular file found by the walk (a tuple: 20,000 of them are made per snapshot)."""

    path: str
    st: os.stat_result


def _walk(
    root: Path, spec: pathspec.GitIgnoreSpec | None, warnings: list[str]
) -> tuple[list[_Seen], dict[str, str], dict[str, int]]:
    """Regular files, in-workspace symlinks and directories under `root`, never following a
    symlink; excluded paths and everything else (fifos, sockets, devices, escaping links) are left
    out, the last two with a warning. (Threads listing directories in parallel were slower: the
    loop holds the GIL more than the lstat calls release it.)"""
    files: list[_Seen] = []
    links: dict[str, str] = {}
    dirs: dict[str, int] = {}
    pending: list[tuple[str, str]] = [(str(root), "")]
    append = files.append
    while pending:
        directory, rel = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            warnings.append(f"{rel or '.'}: unreadable directory ({exc.strerror})")
            continue
        for entry in entries:
            path = rel + entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed while we walked
            kind = st.st_mode & _S_IFMT
            if spec is not None and spec.match_file(path + "/" if kind == _S_IFDIR else path):
                continue
            if kind == _S_IFREG:
                append(_Seen(path, st))
            elif kind == _S_IFDIR:
                dirs[path] = st.st_mode & 0o777
                pending.append((entry.path, path + "/"))
            elif kind == _S_IFLNK:
                target = os.readlink(entry.path)
                if link_stays_inside(path, target):
                    links[path] = target
                else:
                    warnings.append(f"{path}: symlink to {target!r} leaves the workspace, skipped")
            else:
                warnings.append(f"{path}: not a regular file, directory or symlink, skipped")
    return files, links, dirs


class _Packer:
    """Accumulates file bytes into packs and uploads each full one in the background. A pack is
    named by the sha256 of its members' (file sha256, chunk index, length): determined by its
    content without hashing its bytes a second time."""

    def __init__(self, backend: Backend, session_id: str, existing: set[str]) -> None:
        self.backend = backend
        self.prefix = area(session_id) + "packs/"
        self.existing = existing
        self.parts: list[bytes | memoryview] = []
        self.size = 0
        self.members: list[tuple[_Packed, int, int, int]] = []
        self.pool = ThreadPoolExecutor(UPLOAD_WORKERS, thread_name_prefix="snapshot-upload")
        self.futures: list[Future[None]] = []
        self.slots = threading.Semaphore(UPLOAD_WORKERS * 2)  # bounds the packs held in memory
        self.uploaded_bytes = 0
        self.packs_uploaded = 0
        self._lock = threading.Lock()

    @property
    def room(self) -> int:
        return max(PACK_BYTES - self.size, 1)

    def add(self, packed: _Packed, data: bytes | memoryview) -> None:
        """Append `data` as the next chunk of `packed`."""
        index = len(packed.chunks)
        packed.chunks.append(None)
        self.members.append((packed, index, self.size, len(data)))
        self.parts.append(data)
        self.size += len(data)
        if self.size >= PACK_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        naming = hashlib.sha256()
        for packed, index, _, length in self.members:
            naming.update(f"{packed.sha256}:{index}:{length};".encode())
        name = naming.hexdigest()
        for packed, index, offset, length in self.members:
            packed.chunks[index] = Chunk(name, offset, length)
        data = b"".join(self.parts)
        self.parts, self.members, self.size = [], [], 0
        if name in self.existing:
            return
        self.existing.add(name)
        self.slots.acquire()
        self.futures.append(self.pool.submit(self._upload, name, data))

    def _upload(self, name: str, data: bytes) -> None:
        try:
            self.backend.write(self.prefix + name, data)
            with self._lock:
                self.uploaded_bytes += len(data)
                self.packs_uploaded += 1
        finally:
            self.slots.release()

    def finish(self) -> None:
        self.flush()
        try:
            for future in self.futures:
                future.result()
        finally:
            self.pool.shutdown(wait=True)


def _exclusions(patterns: list[str]) -> pathspec.GitIgnoreSpec | None:
    if not patterns:
        return None
    import pathspec  # only sessions with exclusions pay its import (15 ms) at the runner's start

    return pathspec.GitIgnoreSpec.from_lines(patterns)


def _manifest_keys(backend: Backend, session_id: str) -> list[str]:
    listed = backend.list_children(area(session_id) + "manifests/")
    return sorted(o.key for o in listed if o.key.endswith(".json.gz"))


def _next_seq(previous_key: str | None) -> str:
    """A manifest name after `previous_key`'s: the clock in microseconds, kept increasing."""
    seq = time.time_ns() // 1000
    if previous_key is not None:
        with contextlib.suppress(ValueError):
            seq = max(seq, int(PurePosixPath(previous_key).name.split(".")[0]) + 1)
    return str(seq).zfill(_SEQ_DIGITS)


def take_snapshot(
    root: Path,
    backend: Backend,
    session_id: str,
    *,
    max_bytes: int,
    exclude: list[str] | None = None,
    cache_file: Path | None = None,
) -> SnapshotResult:
    """Snapshot `root` into `session_id`'s area; only files changed since the last snapshot (or
    restore) are read and uploaded. A tree over `max_bytes` is not snapshotted (the previous
    snapshot stays). Raises StoreError when the store fails."""
    started = time.monotonic()
    warnings: list[str] = []
    files, links, dirs = _walk(root, _exclusions(list(exclude or [])), warnings)
    total = sum(f.st.st_size for f in files)
    if total > max_bytes:
        return SnapshotResult(
            taken=False,
            files=len(files),
            bytes=total,
            warnings=[
                f"the workspace holds {total} bytes, over snapshot.maxBytes {max_bytes}: not "
                "snapshotted (the previous snapshot, if any, stays)",
                *warnings,
            ][:WARNINGS_MAX],
            seconds=time.monotonic() - started,
        )
    cache = StatCache.load(cache_file) if cache_file else StatCache()
    manifest_keys = _manifest_keys(backend, session_id)
    previous_key = manifest_keys[-1] if manifest_keys else None
    if not files and not links and not dirs and previous_key is None:
        # Nothing was ever in it: no snapshot to write (sessions that never touch their
        # workspace pay one listing).
        return SnapshotResult(taken=False, warnings=warnings, seconds=time.monotonic() - started)
    # A delta when this pod knows the newest snapshot file by file (it wrote or restored it):
    # only what changed is read, packed and listed, nothing is downloaded.
    delta = (
        previous_key is not None
        and cache.manifest_key == previous_key
        and cache.session == session_id
        and cache.depth < MAX_DEPTH
    )
    previous = Manifest()
    previous_chain: list[str] = []
    if previous_key is not None and not delta:
        previous, previous_chain = load_manifest_chain(backend, previous_key)
    elif previous_key is None and cache.manifest_key is not None and cache.session == session_id:
        cache = StatCache()  # our snapshots are gone: nothing to reuse
    # Entries are reused only from a manifest of this session whose packs still exist.
    reusable = not delta and previous.session == session_id and previous_key is not None
    by_hash = {f.sha256: f for f in previous.files.values()} if reusable else {}
    stored_packs: set[str] = set()
    if not delta:
        listed = backend.list_children(area(session_id) + "packs/")
        stored_packs = {o.key.rsplit("/", 1)[1] for o in listed}
    manifest = Manifest(
        links=links,
        dirs=dirs,
        session=session_id,
        base=previous_key if delta else None,
        depth=cache.depth + 1 if delta else 0,
    )
    cached = cache.stats if cache.manifest_key == previous_key else {}
    packer = _Packer(backend, session_id, set(stored_packs))
    new_stats: dict[str, int] = {}
    packed: list[_Packed] = []
    of = StatCache.of
    if delta:
        changed = []
        for seen in files:
            new_stats[seen.path] = signature = of(seen.st)
            if cached.get(seen.path) != signature:
                changed.append(seen)
    else:
        changed = sorted(files, key=lambda s: s.path)
    try:
        for seen in changed:
            if not delta:
                now = new_stats[seen.path] = of(seen.st)
                old = previous.files.get(seen.path) if reusable else None
                if old is not None and _unchanged(old, seen.st, cached.get(seen.path), now):
                    manifest.files[seen.path] = old
                    continue
            entry = _pack_file(root, seen, packer, by_hash, warnings)
            if isinstance(entry, _Packed):
                packed.append(entry)
            elif entry is not None:
                manifest.files[seen.path] = entry
        packer.finish()
    except BaseException:
        packer.pool.shutdown(wait=True, cancel_futures=True)
        raise
    for item in packed:
        manifest.files[item.path] = item.entry()
    if delta:
        manifest.removed = sorted(set(cached) - set(new_stats))
    key = f"{area(session_id)}manifests/{_next_seq(previous_key)}.json.gz"
    body = manifest.encode()
    backend.write(key, body)
    if not delta:
        # A full snapshot: keep it and the previous snapshot (MANIFESTS_KEPT, its chain of
        # manifests) with the packs they use; the rest goes.
        live = manifest.packs() | (previous.packs() if reusable else set())
        stale = [k for k in manifest_keys if k not in previous_chain] + [
            f"{area(session_id)}packs/{name}" for name in sorted(stored_packs - live)
        ]
        if stale:
            backend.delete(stale)
    if cache_file is not None:
        StatCache(key, session_id, new_stats, manifest.depth).save(cache_file)
    return SnapshotResult(
        taken=True,
        files=len(new_stats),
        bytes=total,
        uploaded_bytes=packer.uploaded_bytes + len(body),
        packs_uploaded=packer.packs_uploaded,
        manifest_key=key,
        warnings=warnings[:WARNINGS_MAX],
        seconds=time.monotonic() - started,
    )


def _unchanged(old: FileEntry, st: os.stat_result, cached: int | None, now: int) -> bool:
    if cached is not None:
        return cached == now and old.size == st.st_size
    return old.size == st.st_size and old.mtime_ns == st.st_mtime_ns


@dataclass
class _Packed:
    """A file read into packs; its chunks are named as their packs are flushed."""

    path: str
    mode: int
    size: int
    mtime_ns: int
    sha256: str
    chunks: list[Chunk | None]

    def entry(self) -> FileEntry:
        if any(c is None for c in self.chunks):
            raise SnapshotError(f"{self.path}: a chunk was never packed")
        return FileEntry(
            self.path,
            self.mode,
            self.size,
            self.mtime_ns,
            self.sha256,
            tuple(c for c in self.chunks if c is not None),
        )


def _pack_file(
    root: Path,
    seen: _Seen,
    packer: _Packer,
    by_hash: dict[str, FileEntry],
    warnings: list[str],
) -> FileEntry | _Packed | None:
    """Read one file (never through a symlink) into packs: an entry reusing identical content
    already stored, a _Packed to complete once its packs are flushed, or None if unreadable.
    A file up to a pack's size is read whole; a larger one is streamed pack by pack."""
    try:
        fd = os.open(root / seen.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        warnings.append(f"{seen.path}: unreadable ({exc.strerror}), skipped")
        return None
    mode = seen.st.st_mode & 0o777
    try:
        if seen.st.st_size <= PACK_BYTES:
            data = os.read(fd, seen.st.st_size + 1)
            while len(data) <= PACK_BYTES and (more := os.read(fd, _READ_CHUNK)):
                data += more  # it grew while we read
            sha = hashlib.sha256(data).hexdigest()
            same = by_hash.get(sha)
            if same is not None and same.size == len(data):
                return FileEntry(seen.path, mode, len(data), seen.st.st_mtime_ns, sha, same.chunks)
            packed = _Packed(seen.path, mode, len(data), seen.st.st_mtime_ns, sha, [])
            view = memoryview(data)
            position = 0
            while position < len(data):
                piece = view[position : position + packer.room]
                packer.add(packed, piece)
                position += len(piece)
            return packed
        # Streamed: the chunks are named from a placeholder hash, fixed once the file is read.
        digest = hashlib.sha256()
        packed = _Packed(seen.path, mode, 0, seen.st.st_mtime_ns, f"stream:{seen.path}", [])
        while block := os.read(fd, packer.room):
            digest.update(block)
            packer.add(packed, block)
            packed.size += len(block)
        packed.sha256 = digest.hexdigest()
        return packed
    finally:
        os.close(fd)


# ---- restoring ----------------------------------------------------------------------------------


class SafeTree:
    """Creates directories and files under `root` without ever following a symlink: every
    directory on a path is created here or verified with lstat (nothing else runs meanwhile: the
    agent has not started), files are opened with O_NOFOLLOW."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.verified: set[str] = {""}

    def directory(self, rel: str, mode: int = 0o755) -> Path:
        if rel in self.verified:
            return self.root / rel if rel else self.root
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        self.directory(parent)
        path = self.root / rel
        try:
            os.mkdir(path, mode | 0o700)
        except FileExistsError:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise SnapshotError(f"{rel} is in the way (not a directory)") from None
        self.verified.add(rel)
        return path

    def open_file(self, rel: str, mode: int) -> int:
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        directory = self.directory(parent)
        name = rel.rsplit("/", 1)[-1]
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(directory / name, flags, mode)
        except OSError as exc:
            raise SnapshotError(f"{rel}: cannot be written ({exc.strerror})") from exc


def _write_whole(path: Path, data: memoryview, entry: FileEntry) -> int:
    """Create `path` (never through a symlink) with `data`, the entry's mode and mtime."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, entry.mode)
    except OSError as exc:
        raise SnapshotError(f"{entry.path}: cannot be written ({exc.strerror})") from exc
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fchmod(fd, entry.mode)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        return StatCache.of(os.fstat(fd))
    finally:
        os.close(fd)


def restore_snapshot(
    root: Path,
    backend: Backend,
    manifest_key: str,
    *,
    subpath: str | None = None,
    cache_file: Path | None = None,
) -> RestoreResult:
    """Write the snapshot `manifest_key` (or its directory `subpath`) into `root`. Paths are
    validated before anything is written; each file's sha256 is verified."""
    started = time.monotonic()
    manifest = load_manifest(backend, manifest_key)
    pack_area = area(manifest.session) + "packs/" if manifest.session else None
    if pack_area is None:
        raise SnapshotError(f"the manifest {manifest_key} names no session")
    prefix = ""
    if subpath:
        prefix = str(check_relative(subpath.strip("/"))) + "/"

    def select(path: str) -> str | None:
        check_relative(path)
        if not prefix:
            return path
        return path[len(prefix) :] if path.startswith(prefix) else None

    files = {rel: f for p, f in manifest.files.items() if (rel := select(p))}
    links = {rel: t for p, t in manifest.links.items() if (rel := select(p))}
    dirs = {rel: m for p, m in manifest.dirs.items() if (rel := select(p))}
    warnings: list[str] = []
    tree = SafeTree(root)
    root.mkdir(parents=True, exist_ok=True)
    for rel in sorted(dirs):
        tree.directory(rel, dirs[rel])
    # Every file's directory is made (and verified) here; the files are written by the download
    # workers as their packs arrive, each opened with O_NOFOLLOW.
    by_pack: dict[str, list[tuple[str, FileEntry, int, Chunk]]] = {}
    split: list[tuple[str, FileEntry]] = []
    stats: dict[str, int] = {}
    for rel, entry in sorted(files.items()):
        tree.directory(rel.rsplit("/", 1)[0] if "/" in rel else "")
        if len(entry.chunks) != 1:
            fd = tree.open_file(rel, entry.mode)  # empty, or written in pieces below
            os.close(fd)
            split.append((rel, entry))
        position = 0
        for chunk in entry.chunks:
            by_pack.setdefault(chunk.pack, []).append((rel, entry, position, chunk))
            position += chunk.length
    downloaded = 0
    lock = threading.Lock()

    def fetch(pack: str) -> None:
        nonlocal downloaded
        stored = backend.read(pack_area + pack)
        if stored is None:
            raise SnapshotError(f"pack {pack} of the snapshot is missing from the store")
        data = memoryview(stored.data)
        with lock:
            downloaded += len(data)
        for rel, entry, position, chunk in by_pack[pack]:
            piece = data[chunk.offset : chunk.offset + chunk.length]
            if len(piece) != chunk.length:
                raise SnapshotError(f"pack {pack} is shorter than the manifest says")
            if len(entry.chunks) == 1:
                if hashlib.sha256(piece).hexdigest() != entry.sha256:
                    raise SnapshotError(f"{rel}: content does not match the snapshot's sha256")
                stats[rel] = _write_whole(root / rel, piece, entry)
                continue
            fd = os.open(root / rel, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.pwrite(fd, piece, position)
            finally:
                os.close(fd)

    with ThreadPoolExecutor(DOWNLOAD_WORKERS, thread_name_prefix="snapshot-download") as pool:
        for future in [pool.submit(fetch, pack) for pack in by_pack]:
            future.result()
    for rel, entry in split:
        path = root / rel
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as handle:
            while block := handle.read(_READ_CHUNK):
                digest.update(block)
        if digest.hexdigest() != entry.sha256:
            raise SnapshotError(f"{rel}: content does not match the snapshot's sha256")
        os.chmod(path, entry.mode, follow_symlinks=False)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
        stats[rel] = StatCache.of(os.lstat(path))
    for rel, target in sorted(links.items()):
        if not link_stays_inside(rel, target):
            warnings.append(f"{rel}: symlink to {target!r} leaves the workspace, skipped")
            continue
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        try:
            os.symlink(target, tree.directory(parent) / rel.rsplit("/", 1)[-1])
        except FileExistsError:
            warnings.append(f"{rel}: already exists, the snapshot's symlink skipped")
    if cache_file is not None and not subpath:
        StatCache(manifest_key, manifest.session, stats, manifest.depth).save(cache_file)
    return RestoreResult(
        restored=True,
        files=len(files),
        bytes=sum(f.size for f in files.values()),
        downloaded_bytes=downloaded,
        manifest_key=manifest_key,
        warnings=warnings[:WARNINGS_MAX],
        seconds=time.monotonic() - started,
    )


def restore_latest(
    root: Path,
    backend: Backend,
    session_ids: Sequence[str | None],
    *,
    cache_file: Path | None = None,
) -> RestoreResult | None:
    """Restore the newest snapshot of the first of `session_ids` that has one (a session's own,
    then the one it resumes); None if none has."""
    for session_id in session_ids:
        if session_id:
            key = latest_manifest_key(backend, session_id)
            if key is not None:
                return restore_snapshot(root, backend, key, cache_file=cache_file)
    return None


def summary_message(warnings: Sequence[str], limit: int = 1024) -> str | None:
    """Warnings joined for a status message, within `limit` characters."""
    if not warnings:
        return None
    text = "; ".join(warnings)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def iter_paths(manifest: Manifest) -> Iterator[str]:
    """Every path a manifest holds (files, links, directories)."""
    yield from manifest.files
    yield from manifest.links
    yield from manifest.dirs


def read_all(backend: Backend, key: str) -> bytes:
    """An object's bytes, or StoreError if it is missing."""
    stored = backend.read(key)
    if stored is None:
        raise StoreError(f"{key} is missing")
    return stored.data
