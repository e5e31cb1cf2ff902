"""Transcript store package: `open_store(url, namespace)` gives the runner its SessionStore."""

from __future__ import annotations

from pathlib import Path

from agentsession_runner.store.errors import InvalidKeyError, StoreError
from agentsession_runner.store.keys import (
    FileLocation,
    S3Location,
    check_namespace,
    parse_store_url,
)
from agentsession_runner.store.transcript import MAX_CONCURRENCY, TranscriptStore

__all__ = ["InvalidKeyError", "StoreError", "TranscriptStore", "open_store"]


def open_store(url: str, namespace: str) -> TranscriptStore:
    """Open the store at `url` (`s3://bucket/prefix` or `file:///abs/dir`) for `namespace`.

    Everything the returned store reads or writes lives under `<url>/<namespace>/`. No I/O
    happens here; call `await store.check()` to fail fast on an unreachable store. Raises
    InvalidKeyError (a ValueError) for a malformed URL or namespace.
    """
    namespace = check_namespace(namespace)
    location = parse_store_url(url)
    if isinstance(location, S3Location):
        # Imported here so file:// users (local runs, tests) never load boto3.
        from agentsession_runner.store.s3 import S3Backend, make_s3_client

        client = make_s3_client(max_pool_connections=MAX_CONCURRENCY)
        backend = S3Backend(location.bucket, f"{location.prefix}{namespace}/", client)
        return TranscriptStore(backend)
    assert isinstance(location, FileLocation)
    from agentsession_runner.store.filesystem import FilesystemBackend

    return TranscriptStore(FilesystemBackend(Path(location.path) / namespace))
