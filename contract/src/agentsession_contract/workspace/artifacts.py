"""spec.outputs.artifacts on both sides of the store service: which workspace files an artifact
takes (its path or glob, anchored at the workspace, .gitignore-style), and the store key a file
goes to (`sessions/<session id>/artifacts/<name>/<path>`). The runner uploads, the gateway
checks each write against the same patterns and records what it stored."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from agentsession_contract.store.keys import LOGICAL_PROJECT

if TYPE_CHECKING:
    import pathspec

ARTIFACTS_DIR = "artifacts"
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,200}")
_MAX_SEGMENTS = 16


def artifact_spec(pattern: str) -> pathspec.GitIgnoreSpec:
    """An artifact's path or glob, anchored at the workspace root (a directory: all below it)."""
    import pathspec  # imported when used: the runner's start does not pay for it

    return pathspec.GitIgnoreSpec.from_lines(["/" + pattern.strip("/")])


def matching_files(root: Path, pattern: str) -> Iterator[str]:
    """Regular files under `root` (relative paths, sorted) that `pattern` takes; symlinks are
    never followed nor taken."""
    spec = artifact_spec(pattern)
    for directory, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        rel_dir = os.path.relpath(directory, root)
        for name in sorted(files):
            path = Path(directory) / name
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not path.is_symlink() and path.is_file() and spec.match_file(rel):
                yield rel


def artifact_key(session_id: str, name: str, path: str) -> str:
    """The store key of one artifact file: its path when every segment is store-safe, else a
    digest of the path and its sanitised name."""
    segments = path.split("/")
    if len(segments) <= _MAX_SEGMENTS and all(
        _SAFE_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments
    ):
        rel = path
    else:
        digest = hashlib.sha256(path.encode()).hexdigest()[:16]
        base = re.sub(r"[^A-Za-z0-9._-]", "_", segments[-1])[:100].strip(".") or "file"
        rel = f"{digest}-{base}"
    return f"{LOGICAL_PROJECT}/{session_id}/{ARTIFACTS_DIR}/{name}/{rel}"
