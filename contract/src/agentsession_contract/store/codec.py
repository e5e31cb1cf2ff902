"""Byte formats of transcript objects, compacted objects and sidecars; pure, used by the store.

A compacted object keeps the parts it replaces as separate segments: its first line is a header
listing `[part name, line count]` pairs, then the parts' lines follow in that order. Keeping the
segments (instead of one flat list) lets a load take the union of compacted objects and leftover
parts by part name, so two compactions that cover the same parts, or a part whose delete failed,
never duplicate entries that have no `uuid`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

COMPACTED_FORMAT = "agentsession.compacted/v1"

Segment = tuple[str, list[bytes]]
"""(part name, the part's JSONL lines without newlines)."""


def encode_entries(entries: Iterable[Mapping[str, Any]]) -> bytes:
    # ensure_ascii keeps lone surrogates (legal in JSON text, not in UTF-8) encodable.
    return b"".join(json.dumps(entry, separators=(",", ":")).encode() + b"\n" for entry in entries)


def split_lines(body: bytes) -> list[bytes]:
    # JSON text never contains a raw newline, so b"\n" is the only separator we need.
    return [line for line in body.split(b"\n") if line]


def encode_compacted(segments: Sequence[Segment]) -> bytes:
    header = {"format": COMPACTED_FORMAT, "parts": [[name, len(lines)] for name, lines in segments]}
    chunks = [json.dumps(header, separators=(",", ":")).encode()]
    for _, lines in segments:
        chunks.extend(lines)
    chunks.append(b"")
    return b"\n".join(chunks)


def decode_compacted(body: bytes) -> list[Segment]:
    """Split a compacted object back into its segments; ValueError if it is malformed."""
    lines = split_lines(body)
    if not lines:
        raise ValueError("empty compacted object")
    header = json.loads(lines[0])
    if not isinstance(header, dict) or header.get("format") != COMPACTED_FORMAT:
        raise ValueError("compacted object has no recognised header")
    segments: list[Segment] = []
    offset = 1
    for item in header.get("parts", []):
        if not isinstance(item, list) or len(item) != 2:
            raise ValueError("compacted object header has a malformed part")
        name, count = item
        if not isinstance(name, str) or not isinstance(count, int) or count < 0:
            raise ValueError("compacted object header has a malformed part")
        segments.append((name, lines[offset : offset + count]))
        offset += count
    if offset != len(lines):
        raise ValueError("compacted object header does not match its line count")
    return segments


def decode_entries(lines: Sequence[bytes]) -> list[Any]:
    """Parse JSONL lines, keeping only the first entry for each `uuid`; ValueError if malformed.

    Duplicates arise when the SDK retries a batch whose first attempt landed after all; entries
    without a string `uuid` (titles, tags, mode markers) are kept every time.
    """
    return _first_per_uuid(_parse_lines(lines))


def _parse_lines(lines: Sequence[bytes]) -> list[Any]:
    # One json.loads over the lines joined as an array: for ~20k short lines the per-call cost of
    # json.loads is a third of the parse time. Each line we write is exactly one JSON value, so
    # the array has one element per line; if it does not parse or has another length, a line is
    # not a single value and the line-by-line parse raises on it.
    if not lines:
        return []
    try:
        parsed = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        parsed = None
    if isinstance(parsed, list) and len(parsed) == len(lines):
        return parsed
    return [json.loads(line) for line in lines]


def _first_per_uuid(parsed: list[Any]) -> list[Any]:
    entries: list[Any] = []
    seen: set[str] = set()
    for entry in parsed:
        uuid = entry.get("uuid") if isinstance(entry, dict) else None
        if isinstance(uuid, str):
            if uuid in seen:
                continue
            seen.add(uuid)
        entries.append(entry)
    return entries


def encode_sidecar(session_id: str, data: Mapping[str, Any]) -> bytes:
    # mtime is not stored: it is the sidecar object's storage time, read back from the backend.
    return json.dumps({"session_id": session_id, "data": data}, separators=(",", ":")).encode()


def decode_sidecar(body: bytes) -> dict[str, Any]:
    """The opaque `data` of a summary sidecar; ValueError if the body is not one."""
    doc = json.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise ValueError("summary sidecar has no data object")
    data: dict[str, Any] = doc["data"]
    return data
