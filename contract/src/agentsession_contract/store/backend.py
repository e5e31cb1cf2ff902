"""Backend protocol: the storage primitives TranscriptStore calls; implemented by s3 and filesystem.

Keys are relative to the store root `<url prefix>/<namespace>/` and '/'-separated; prefixes end
in '/'. Backends are synchronous and must be safe to call from several threads at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One listed object: its root-relative key and storage modification time (epoch ms)."""

    key: str
    mtime_ms: int


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    """An object's bytes with the version token compare-and-swap writes are conditioned on."""

    data: bytes
    etag: str
    mtime_ms: int


class PreconditionFailed(Exception):
    """A conditional write lost: the object changed (or appeared, or vanished) since it was read."""


class Backend(Protocol):
    def uri(self, key: str) -> str:
        """A URI naming `key` (or prefix), without credentials."""
        ...

    def list_children(self, prefix: str) -> list[StoredObject]:
        """Objects directly under `prefix` (not in deeper 'subdirectories')."""
        ...

    def list_tree(self, prefix: str) -> list[StoredObject]:
        """Every object under `prefix`, at any depth."""
        ...

    def read(self, key: str) -> ObjectVersion | None:
        """The object, or None if it does not exist."""
        ...

    def write(self, key: str, data: bytes) -> None:
        """Create or replace the object atomically (readers see the old or the new bytes)."""
        ...

    def write_if(self, key: str, data: bytes, expected_etag: str | None) -> str:
        """Write only if the object's etag is `expected_etag` (None: only if it does not exist).

        Returns the new etag; raises PreconditionFailed when the condition does not hold.
        """
        ...

    def delete(self, keys: Sequence[str]) -> None:
        """Delete the objects; keys that no longer exist are ignored."""
        ...

    def check(self) -> None:
        """Raise StoreError if the store root cannot be used."""
        ...

    def close(self) -> None: ...
