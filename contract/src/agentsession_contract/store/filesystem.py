"""Filesystem backend of the transcript store; `open_store` builds it for file:///abs/dir URLs.

Objects are files written to a temporary name, fsynced and renamed into place, so a reader sees
a whole object or none. Compare-and-swap holds an exclusive `flock` on the object's directory
while it compares and renames; this needs a local filesystem (flock on a directory is not
reliable over NFS).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from agentsession_contract.store.backend import ObjectVersion, PreconditionFailed, StoredObject
from agentsession_contract.store.errors import StoreError
from agentsession_contract.store.keys import check_relative_key

_TEMP_PREFIX = "."  # listings skip dot-files, so half-written temporaries are never seen
_WRITE_ATTEMPTS = 3


def _etag(data: bytes) -> str:
    # A content hash as version token: two writers folding to identical bytes may both "win",
    # which is harmless because the results are the same.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _mtime_ms(stat: os.stat_result) -> int:
    return stat.st_mtime_ns // 1_000_000


class FilesystemBackend:
    """Backend storing every key as a file under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def uri(self, key: str) -> str:
        uri = self._path(key).as_uri()
        return uri + "/" if key == "" or key.endswith("/") else uri

    def _path(self, key: str) -> Path:
        body = check_relative_key(key).removesuffix("/")
        return self.root.joinpath(*body.split("/")) if body else self.root

    @contextmanager
    def _errors(self, operation: str, key: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise StoreError(f"filesystem {operation} of {self.uri(key)} failed: {reason}") from exc

    def list_children(self, prefix: str) -> list[StoredObject]:
        objects: list[StoredObject] = []
        with self._errors("list", prefix):
            try:
                entries = list(os.scandir(self._path(prefix)))
            except FileNotFoundError:
                return []
            for entry in entries:
                if entry.name.startswith(_TEMP_PREFIX) or not entry.is_file(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError):  # deleted since the scan
                    objects.append(
                        StoredObject(
                            prefix + entry.name, _mtime_ms(entry.stat(follow_symlinks=False))
                        )
                    )
        return objects

    def list_tree(self, prefix: str) -> list[StoredObject]:
        objects: list[StoredObject] = []
        pending = [prefix]
        with self._errors("list", prefix):
            while pending:
                directory = pending.pop()
                try:
                    entries = list(os.scandir(self._path(directory)))
                except FileNotFoundError:
                    continue
                for entry in entries:
                    if entry.name.startswith(_TEMP_PREFIX):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(f"{directory}{entry.name}/")
                    elif entry.is_file(follow_symlinks=False):
                        with contextlib.suppress(FileNotFoundError):
                            stat = entry.stat(follow_symlinks=False)
                            objects.append(StoredObject(directory + entry.name, _mtime_ms(stat)))
        return objects

    def read(self, key: str) -> ObjectVersion | None:
        with self._errors("read", key):
            try:
                with open(self._path(key), "rb") as file:
                    data = file.read()
                    stat = os.fstat(file.fileno())
            except FileNotFoundError:
                return None
        return ObjectVersion(data=data, etag=_etag(data), mtime_ms=_mtime_ms(stat))

    def _replace(self, path: Path, data: bytes) -> None:
        temp = path.with_name(f"{_TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            with open(temp, "xb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._errors("write", key):
            for attempt in range(_WRITE_ATTEMPTS):
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self._replace(path, data)
                    return
                except FileNotFoundError:
                    # A concurrent delete pruned the (then empty) directory; recreate it.
                    if attempt == _WRITE_ATTEMPTS - 1:
                        raise

    def write_if(self, key: str, data: bytes, expected_etag: str | None) -> str:
        path = self._path(key)
        with self._errors("conditional write", key):
            path.parent.mkdir(parents=True, exist_ok=True)
            directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(directory, fcntl.LOCK_EX)  # released by close()
                try:
                    current: str | None = _etag(path.read_bytes())
                except FileNotFoundError:
                    current = None
                if current != expected_etag:
                    raise PreconditionFailed(key)
                self._replace(path, data)
            finally:
                os.close(directory)
        return _etag(data)

    def delete(self, keys: Sequence[str]) -> None:
        directories: set[Path] = set()
        for key in keys:
            path = self._path(key)
            with self._errors("delete", key), contextlib.suppress(FileNotFoundError):
                path.unlink()
            directories.add(path.parent)
        # Prune directories left empty, deepest first, so deleted sessions leave no trace; stop
        # at the first one still in use.
        for directory in sorted(directories, key=lambda d: len(d.parts), reverse=True):
            while directory != self.root and self.root in directory.parents:
                try:
                    directory.rmdir()
                except OSError:
                    break
                directory = directory.parent

    def check(self) -> None:
        with self._errors("check", ""):
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionError(13, "not writable")

    def close(self) -> None:
        pass
