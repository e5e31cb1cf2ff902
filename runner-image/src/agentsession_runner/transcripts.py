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
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from claude_agent_sdk._internal.session_store import file_path_to_session_key
from claude_agent_sdk.types import SessionKey, SessionStoreEntry

LOCAL_ONLY_ENTRY_TYPES = frozenset({"api-request", "api-request-shape", "api-request-blob"})
"""Request-debugging records the CLI keeps on local disk and never mirrors (checked with CLI
2.1.327): they are not needed to resume and weigh ~150 KB per request, so they are not uploaded."""


class AppendLoadStore(Protocol):
    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None: ...
    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None: ...


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


def _fingerprint(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def missing_entries(
    local: list[dict[str, Any]], stored: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Local entries the store lacks, in local order (uuid identity; content for uuid-less)."""
    stored_uuids = {e["uuid"] for e in stored if isinstance(e.get("uuid"), str)}
    unmatched_plain = Counter(_fingerprint(e) for e in stored if not isinstance(e.get("uuid"), str))
    missing: list[dict[str, Any]] = []
    for entry in local:
        if entry.get("type") in LOCAL_ONLY_ENTRY_TYPES:
            continue
        uuid = entry.get("uuid")
        if isinstance(uuid, str):
            if uuid not in stored_uuids:
                missing.append(entry)
            continue
        fingerprint = _fingerprint(entry)
        if unmatched_plain[fingerprint] > 0:
            unmatched_plain[fingerprint] -= 1
        else:
            missing.append(entry)
    return missing


async def reconcile(store: AppendLoadStore, tap: TranscriptTap) -> dict[str, int]:
    """Upload every tapped line the store is missing; returns lines uploaded per session key."""
    uploaded: dict[str, int] = {}
    for key, path in tap.transcripts():
        local = read_jsonl(path)
        stored = await store.load(key) or []
        missing = missing_entries(local, [dict(e) for e in stored])
        if missing:
            await store.append(key, missing)  # type: ignore[arg-type]
        label = key["session_id"] + ("/" + key["subpath"] if "subpath" in key else "")
        uploaded[label] = len(missing)
    return uploaded
