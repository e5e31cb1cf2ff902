"""The transcript store: object layout, codec and TranscriptStore, shared by the runner and the
gateway (and read by the operator's tests and tools).

`TranscriptStore` implements the SDK's SessionStore over any `Backend`: the filesystem one here
(local runs), the gateway's HTTP one (agentsession_contract.store.gateway_client, what runner
pods use) and the S3 one (agentsession_gateway.s3, behind the gateway, which alone holds
credentials).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentsession_contract.store.errors import InvalidKeyError, StoreError
from agentsession_contract.store.keys import (
    FileLocation,
    S3Location,
    parse_store_url,
    store_scope,
)

if TYPE_CHECKING:
    from agentsession_contract.store.transcript import MAX_CONCURRENCY, TranscriptStore

__all__ = ["MAX_CONCURRENCY", "InvalidKeyError", "StoreError", "TranscriptStore", "open_store"]

_LAZY = frozenset({"MAX_CONCURRENCY", "TranscriptStore"})


def __getattr__(name: str) -> Any:
    """TranscriptStore on first use: it imports the SDK (~0.6 s, tens of MB), which the gateway
    (it imports this package for `backend` and `keys` only) must not pay for at start."""
    if name in _LAZY:
        from agentsession_contract.store import transcript

        return getattr(transcript, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(url: str, namespace: str, namespace_uid: str | None = None) -> TranscriptStore:
    """Open the file store at `url` (`file:///abs/dir`) for `namespace` (under
    `<dir>/<namespace>/<namespace_uid>`, see `keys.store_scope`).

    s3:// stores are reached through the gateway (it holds the credentials): in a runner pod the
    runner talks to it over HTTP, elsewhere use `agentsession_gateway.s3.open_store`. No I/O
    happens here; raises InvalidKeyError (a ValueError) for a malformed URL or namespace.
    """
    scope = store_scope(namespace, namespace_uid)
    location = parse_store_url(url)
    if isinstance(location, S3Location):
        raise InvalidKeyError(
            f"{url} is an S3 store: the runner reaches it through the session gateway, which "
            "holds its credentials"
        )
    assert isinstance(location, FileLocation)
    from agentsession_contract.store.filesystem import FilesystemBackend
    from agentsession_contract.store.transcript import TranscriptStore

    return TranscriptStore(FilesystemBackend(Path(location.path) / scope))
