"""Key validation and object layout of the transcript store; pure, checked before any I/O.

The store root of a namespace is `<url prefix>/<namespace>/<namespace uid>/` (`store_scope`): the
namespace's UID keeps a namespace deleted and created again under the same name away from the old
one's transcripts. (`<url prefix>/<namespace>/` without a UID is the layout of sessions started
before the UID was part of it.) Layout, relative to the store root:

    <project_key>/<session_id>/summary.json                  summary sidecar (main transcript only)
    <project_key>/<session_id>/result.json                   the runner's result document
    <project_key>/<session_id>/main/<part or compacted>      main transcript
    <project_key>/<session_id>/sub/<subpath>/<part or ...>   subagent transcript `subpath`

Transcript objects of a stream are the direct children of its directory, so a subpath nested in
another (`a` and `a/b`) never mixes with it: `sub/a/b/...` is a subdirectory of `sub/a/`, not a
child object of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from agentsession_contract.store.errors import InvalidKeyError

# An allowlist rather than a denylist: it covers what the SDK emits (project keys are the cwd with
# every non-alphanumeric replaced by '-', session ids are UUIDs, subpaths look like
# 'subagents/agent-<hex>') and leaves nothing that S3, a POSIX filesystem or a URI would treat
# specially ('/', '\\', '%', control characters, whitespace).
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
MAX_SEGMENT_LENGTH = 255  # NAME_MAX on common filesystems
MAX_SUBPATH_SEGMENTS = 16
_DNS_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_UID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

LOGICAL_PROJECT = "sessions"
"""The project every runner transcript is stored under (inside the namespace's scope), whatever
the SDK derived from the working directory (see agentsession_runner.pinned_store)."""
SUMMARY_NAME = "summary.json"
RESULT_NAME = "result.json"
MAIN_DIR = "main"
SUB_DIR = "sub"

_SEQ_DIGITS = 20
_WRITER_RE = re.compile(r"[0-9a-f]{16}")
_PART_RE = re.compile(rf"(\d{{{_SEQ_DIGITS}}})-([0-9a-f]{{16}})\.jsonl")
_COMPACTED_RE = re.compile(rf"compacted-(\d{{{_SEQ_DIGITS}}})-([0-9a-f]{{16}})\.jsonl")


def check_segment(value: object, what: str) -> str:
    """Return `value` if it is one safe path segment, else raise InvalidKeyError."""
    if not isinstance(value, str):
        raise InvalidKeyError(f"{what} must be a string, got {type(value).__name__}")
    if value in ("", ".", ".."):
        raise InvalidKeyError(f"{what} must not be {value!r}")
    if len(value) > MAX_SEGMENT_LENGTH:
        raise InvalidKeyError(f"{what} is longer than {MAX_SEGMENT_LENGTH} characters")
    if not _SEGMENT_RE.fullmatch(value):
        raise InvalidKeyError(f"{what} {value!r} may contain only A-Z a-z 0-9 '.' '_' '-'")
    return value


def check_subpath(value: object) -> str:
    """Return `value` if it is '/'-separated safe segments (no empty, '.' or '..' segment)."""
    if not isinstance(value, str):
        raise InvalidKeyError(f"subpath must be a string, got {type(value).__name__}")
    segments = value.split("/")
    if len(segments) > MAX_SUBPATH_SEGMENTS:
        raise InvalidKeyError(f"subpath has more than {MAX_SUBPATH_SEGMENTS} segments")
    for segment in segments:
        check_segment(segment, f"subpath segment of {value!r}")
    return value


def check_namespace(value: object) -> str:
    """Return `value` if it is a DNS label (a Kubernetes namespace name), else raise."""
    if not isinstance(value, str) or not _DNS_LABEL_RE.fullmatch(value):
        raise InvalidKeyError(f"namespace {value!r} is not a DNS label")
    return value


def check_namespace_uid(value: object) -> str:
    """Return `value` if it is a Kubernetes UID (a lower-case UUID), else raise."""
    if not isinstance(value, str) or not _UID_RE.fullmatch(value):
        raise InvalidKeyError(f"namespace uid {value!r} is not a lower-case UUID")
    return value


def store_scope(namespace: str, namespace_uid: str | None) -> str:
    """`<namespace>/<namespace uid>/`, the part of every key between the store URL's prefix and
    the layout below (`<namespace>/` for sessions started before the UID was part of it)."""
    namespace = check_namespace(namespace)
    if namespace_uid is None:
        return f"{namespace}/"
    return f"{namespace}/{check_namespace_uid(namespace_uid)}/"


@dataclass(frozen=True, slots=True)
class StreamKey:
    """A validated SessionKey: one transcript stream (the main one, or a subagent's)."""

    project_key: str
    session_id: str
    subpath: str | None = None

    @property
    def session_dir(self) -> str:
        return session_dir(self.project_key, self.session_id)

    @property
    def stream_dir(self) -> str:
        if self.subpath is None:
            return f"{self.session_dir}{MAIN_DIR}/"
        return f"{self.session_dir}{SUB_DIR}/{self.subpath}/"


def parse_key(key: Mapping[str, object]) -> StreamKey:
    """Validate an SDK SessionKey (project_key, session_id, optional subpath)."""
    if not isinstance(key, Mapping):
        raise InvalidKeyError(f"session key must be a mapping, got {type(key).__name__}")
    subpath = key.get("subpath")
    return StreamKey(
        project_key=check_segment(key.get("project_key"), "project_key"),
        session_id=check_segment(key.get("session_id"), "session_id"),
        subpath=None if subpath is None else check_subpath(subpath),
    )


def project_dir(project_key: str) -> str:
    return f"{project_key}/"


def session_dir(project_key: str, session_id: str) -> str:
    return f"{project_key}/{session_id}/"


def summary_path(project_key: str, session_id: str) -> str:
    return f"{session_dir(project_key, session_id)}{SUMMARY_NAME}"


def result_path(project_key: str, session_id: str) -> str:
    return f"{session_dir(project_key, session_id)}{RESULT_NAME}"


def check_relative_key(key: str) -> str:
    """Defence in depth for backends: a root-relative key or prefix made of safe segments only."""
    body = key.removesuffix("/")
    if body:
        for segment in body.split("/"):
            check_segment(segment, f"segment of object key {key!r}")
    return key


# --- Transcript object names --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class StreamObjectName:
    """A parsed transcript object name; `seq` orders objects, `name` is the file name itself."""

    seq: int
    writer: str
    kind: Literal["part", "compacted"]
    name: str


def is_writer_id(value: str) -> bool:
    return _WRITER_RE.fullmatch(value) is not None


def part_name(seq: int, writer: str) -> str:
    """Name of an append's part object; lexical order of names is (seq, writer) order."""
    return f"{seq:0{_SEQ_DIGITS}d}-{writer}.jsonl"


def compacted_name(seq: int, writer: str) -> str:
    return f"compacted-{seq:0{_SEQ_DIGITS}d}-{writer}.jsonl"


def parse_object_name(name: str) -> StreamObjectName | None:
    """Parse a transcript object's file name; None for anything else (temp files, sidecars)."""
    if match := _PART_RE.fullmatch(name):
        return StreamObjectName(int(match[1]), match[2], "part", name)
    if match := _COMPACTED_RE.fullmatch(name):
        return StreamObjectName(int(match[1]), match[2], "compacted", name)
    return None


def main_session_of(key_in_project: str) -> str | None:
    """Session id if `key_in_project` ('<sid>/main/<name>') is a main transcript object."""
    parts = key_in_project.split("/")
    if len(parts) == 3 and parts[1] == MAIN_DIR and parse_object_name(parts[2]):
        return parts[0]
    return None


def summary_session_of(key_in_project: str) -> str | None:
    """Session id if `key_in_project` is '<sid>/summary.json'."""
    parts = key_in_project.split("/")
    if len(parts) == 2 and parts[1] == SUMMARY_NAME:
        return parts[0]
    return None


def subpath_of(key_in_sub_dir: str) -> str | None:
    """Subpath if `key_in_sub_dir` ('<subpath>/<name>') is a subagent transcript object."""
    subpath, _, name = key_in_sub_dir.rpartition("/")
    if not subpath or parse_object_name(name) is None:
        return None
    try:
        return check_subpath(subpath)
    except InvalidKeyError:
        return None  # written by something else; not ours to report


# --- Store URLs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str
    """'' or safe segments ending in '/'."""


@dataclass(frozen=True, slots=True)
class FileLocation:
    path: str
    """An absolute directory path without a trailing '/' (except for '/' itself)."""


def parse_store_url(url: str) -> S3Location | FileLocation:
    """Parse `s3://bucket/optional/prefix` or `file:///abs/dir`; raise InvalidKeyError otherwise."""
    if not isinstance(url, str):
        raise InvalidKeyError("store URL must be a string")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise InvalidKeyError("store URL must not have a query or fragment")
    if parts.scheme == "s3":
        if "@" in parts.netloc or ":" in parts.netloc:
            # Credentials or an endpoint in the URL would leak into every URI we report.
            raise InvalidKeyError(
                "s3:// URL must name only a bucket; configure the endpoint "
                "and credentials the standard AWS way"
            )
        if not _BUCKET_RE.fullmatch(parts.netloc):
            raise InvalidKeyError(f"{parts.netloc!r} is not a valid S3 bucket name")
        prefix = parts.path.strip("/")
        if prefix:
            for segment in prefix.split("/"):
                check_segment(segment, "segment of the S3 prefix")
            prefix += "/"
        return S3Location(bucket=parts.netloc, prefix=prefix)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidKeyError("file:// URL must be local (file:///abs/dir)")
        path = unquote(parts.path)
        if not path.startswith("/") or "\x00" in path:
            raise InvalidKeyError("file:// URL must name an absolute directory")
        segments = [s for s in path.split("/") if s]
        if any(s in (".", "..") for s in segments):
            raise InvalidKeyError("file:// URL must not contain '.' or '..' segments")
        return FileLocation(path="/" + "/".join(segments))
    raise InvalidKeyError(f"unsupported store URL scheme {parts.scheme!r} (use s3:// or file://)")
