"""Finds the transcript files the CLI writes locally and makes the store hold every line of them.

The run loop calls `TranscriptTap.capture()` as messages arrive and `reconcile()` once the query has
finished. The SDK mirrors lines to the store in batches and drops a batch after three failed
appends; the local JSONL files are the ground truth, so the runner uploads whatever is missing.

On a resume the SDK runs the CLI with a temporary config dir that it deletes when `query()` ends;
the tap hard-links each transcript file as soon as it appears, so later appends (same inode) stay
readable after that cleanup.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from claude_agent_sdk._internal.session_store import file_path_to_session_key
from claude_agent_sdk.types import SessionKey, SessionStoreEntry

LOCAL_ONLY_ENTRY_TYPES = frozenset({"api-request", "api-request-shape", "api-request-blob"})
"""Request-debugging records the CLI keeps on local disk and never mirrors (checked with CLI
2.1.327): they are not needed to resume and weigh ~150 KB per request, so they are not uploaded."""


class ReconcilableStore(Protocol):
    async def write(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Store the lines now; raises StoreError if that fails."""
        ...

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None: ...
    def known(self, key: SessionKey) -> StoredEntries:
        """Entries this process has seen the store hold (written or loaded); may be fewer than
        the store holds, never more."""
        ...

    async def wait_mirrored(self) -> None:
        """Wait until the lines appended so far are written or given up on."""
        ...


class TranscriptTap:
    """Keeps a hard link to every `*.jsonl` transcript under the CLI's `projects/` directories."""

    def __init__(self, config_dir: Path, sdk_temp_dir: Path, tap_dir: Path) -> None:
        self._config_dir = config_dir
        self._sdk_temp_dir = sdk_temp_dir
        self.tap_dir = tap_dir
        tap_dir.mkdir(parents=True, exist_ok=True)

    def _projects_dirs(self) -> Iterator[Path]:
        yield self._config_dir / "projects"
        # The SDK materializes resumed sessions into claude-resume-* under the temp dir.
        if self._sdk_temp_dir.is_dir():
            for child in self._sdk_temp_dir.glob("claude-resume-*"):
                yield child / "projects"

    def capture(self) -> None:
        """Link transcript files not linked yet (or replaced by a new inode since)."""
        for projects in self._projects_dirs():
            if not projects.is_dir():
                continue
            for source in projects.rglob("*.jsonl"):
                target = self.tap_dir / source.relative_to(projects)
                try:
                    source_stat = source.stat()
                    if target.exists() and target.stat().st_ino == source_stat.st_ino:
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(target.name + ".linking")
                    tmp.unlink(missing_ok=True)
                    try:
                        os.link(source, tmp)
                    except OSError:  # another filesystem: a copy is the best we can do
                        shutil.copy2(source, tmp)
                    tmp.replace(target)
                except FileNotFoundError:
                    continue  # the SDK removed it between listing and linking

    def transcripts(self) -> Iterator[tuple[SessionKey, Path]]:
        """Every tapped transcript with the SessionKey the SDK mirror would use for it."""
        for path in sorted(self.tap_dir.rglob("*.jsonl")):
            key = file_path_to_session_key(str(path), str(self.tap_dir))
            if key is not None:
                yield key, path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse a JSONL file, skipping a torn last line (the CLI may have died mid-write)."""
    entries: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return entries


def fingerprint(entry: Mapping[str, Any]) -> str:
    """Identity of an entry without a `uuid`: its content."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


@dataclass
class StoredEntries:
    """Entries of one transcript known to be in the store: their uuids, and the content of
    entries without one (counted: the same line may legitimately be stored twice)."""

    uuids: set[str] = field(default_factory=set)
    plain: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, entries: Iterable[Mapping[str, Any]]) -> StoredEntries:
        stored = cls()
        stored.add(entries)
        return stored

    def add(self, entries: Iterable[Mapping[str, Any]]) -> None:
        for entry in entries:
            uuid = entry.get("uuid")
            if isinstance(uuid, str):
                self.uuids.add(uuid)
            else:
                self.plain[fingerprint(entry)] += 1


def missing_entries(local: list[dict[str, Any]], stored: StoredEntries) -> list[dict[str, Any]]:
    """Local entries the store lacks, in local order (uuid identity; content for uuid-less)."""
    unmatched_plain = Counter(stored.plain)
    missing: list[dict[str, Any]] = []
    for entry in local:
        if entry.get("type") in LOCAL_ONLY_ENTRY_TYPES:
            continue
        uuid = entry.get("uuid")
        if isinstance(uuid, str):
            if uuid not in stored.uuids:
                missing.append(entry)
            continue
        entry_fingerprint = fingerprint(entry)
        if unmatched_plain[entry_fingerprint] > 0:
            unmatched_plain[entry_fingerprint] -= 1
        else:
            missing.append(entry)
    return missing


async def reconcile(
    store: ReconcilableStore, tap: TranscriptTap, skip_sessions: Collection[str] = ()
) -> dict[str, int]:
    """Upload every tapped line the store is missing; returns lines uploaded per session key.

    A transcript whose lines this process has all seen the store hold (the mirror's writes that
    succeeded, the loads of a resume) needs no round trip; any other is compared with a load.
    Transcripts of `skip_sessions` (a fork's source, which the attempt only reads) are left out.
    """
    await store.wait_mirrored()
    uploaded: dict[str, int] = {}
    for key, path in tap.transcripts():
        if key["session_id"] in skip_sessions:
            continue
        local = read_jsonl(path)
        missing = missing_entries(local, store.known(key))
        if missing:
            stored = await store.load(key) or []
            missing = missing_entries(local, StoredEntries.of(stored))
        if missing:
            await store.write(key, missing)  # type: ignore[arg-type]
        label = key["session_id"] + ("/" + key["subpath"] if "subpath" in key else "")
        uploaded[label] = len(missing)
    return uploaded
