"""The transcript store as an HTTP service of the gateway: the storage Backend, key by key, with a
grant that confines the agent to its own session.

Mounted by `agentsession_gateway.main` under `STORE_PATH`;
`agentsession_contract.store.gateway_client.GatewayBackend` is its client (the runner's, the
workspace init step's). The protocol is the Backend protocol of
`agentsession_contract.store.backend` (list, read, write, conditional write, delete, check), so
all store semantics (ordering, compaction, summaries, snapshots) stay in the client and the
gateway only authorizes and moves bytes: a transcript load after compaction is one listing and
one GET, proxied.

The grant: reads and listings only under the project's directories of the session and its resume
source, writes and deletes only under the session's own, never under a session's `gateway/`
directory (where the gateway keeps the attempt reports the operator reads). Everything is under
the namespace's root; keys are validated segment by segment before any I/O.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from agentsession_contract.gateway import ARTIFACT_PATH_HEADER, REPORT_DIR, STORE_PATH, TOKEN_HEADER
from agentsession_contract.store.backend import Backend, PreconditionFailed, StoredObject
from agentsession_contract.store.errors import InvalidKeyError, StoreError
from agentsession_contract.store.keys import check_relative_key
from agentsession_contract.workspace.artifacts import ARTIFACTS_DIR
from agentsession_gateway.outputs import Outputs

log = logging.getLogger(__name__)

WORKSPACE_DIR = "workspace"
"""`sessions/<session id>/workspace/`: a session's snapshots (agentsession_contract.workspace)."""

ETAG_HEADER = "ETag"
MTIME_HEADER = "X-Object-Mtime-Ms"
IF_MATCH_HEADER = "If-Match"
IF_NONE_MATCH_HEADER = "If-None-Match"
MAX_WORKERS = 16

T = TypeVar("T")


class AccessDenied(Exception):
    """The grant does not cover the key; the message says why (logged, sent as 403)."""


@dataclass(frozen=True)
class StoreGrant:
    """What one attempt may touch, by project key and session id (inside its namespace)."""

    projects: frozenset[str]
    read_sessions: frozenset[str]
    write_sessions: frozenset[str]
    read_workspaces: frozenset[str] = frozenset()
    """Sessions whose `workspace/` snapshots (only) may be read: spec.workspace.sources'
    fromSession sources."""

    @classmethod
    def for_session(
        cls,
        project: str,
        session_id: str,
        resume_source: str | None = None,
        workspace_sources: frozenset[str] = frozenset(),
    ) -> StoreGrant:
        """The production grant: write the session, read it and the session it resumes, and
        the workspace snapshots of the sessions it takes files from."""
        reads = {session_id} | ({resume_source} if resume_source else set())
        return cls(
            frozenset({project}),
            frozenset(reads),
            frozenset({session_id}),
            frozenset(workspace_sources),
        )

    def _workspace_only(self, segments: list[str], *, write: bool) -> bool:
        """A read of a fromSession source's snapshot area (nothing else of that session)."""
        return (
            not write
            and len(segments) >= 3
            and segments[1] in self.read_workspaces
            and segments[2] == WORKSPACE_DIR
        )

    def _segments(self, key: str) -> list[str]:
        try:
            check_relative_key(key)
        except InvalidKeyError as exc:
            raise AccessDenied(str(exc)) from exc
        return [s for s in key.split("/") if s]

    def check_object(self, key: str, *, write: bool) -> None:
        segments = self._segments(key)
        if len(segments) < 3 or key.endswith("/"):
            raise AccessDenied(f"{key!r} is not an object inside a session")
        project, session = segments[0], segments[1]
        if project not in self.projects:
            raise AccessDenied(f"project {project!r} is not granted")
        allowed = self.write_sessions if write else self.read_sessions
        if session not in allowed and not self._workspace_only(segments, write=write):
            raise AccessDenied(
                f"session {session!r} is not granted for {'writing' if write else 'reading'}"
            )
        if write and segments[2] == REPORT_DIR:
            raise AccessDenied(f"{key!r} is kept by the gateway")

    def check_listing(self, prefix: str) -> None:
        segments = self._segments(prefix)
        if not prefix.endswith("/") or not segments:
            raise AccessDenied(f"{prefix!r} is not a directory inside a project")
        if segments[0] not in self.projects:
            raise AccessDenied(f"project {segments[0]!r} is not granted")
        if (
            len(segments) >= 2
            and segments[1] not in self.read_sessions
            and not self._workspace_only(segments, write=False)
        ):
            raise AccessDenied(f"session {segments[1]!r} is not granted for reading")

    def filter_listing(self, prefix: str, objects: Iterable[StoredObject]) -> list[StoredObject]:
        """A project-wide listing shows only granted sessions (list_sessions and summaries)."""
        if len([s for s in prefix.split("/") if s]) >= 2:
            return list(objects)
        return [obj for obj in objects if obj.key.split("/")[1] in self.read_sessions]


class StoreService:
    """aiohttp handlers exposing a Backend (S3, in the gateway) under a StoreGrant."""

    def __init__(
        self, backend: Backend, grant: StoreGrant, token: str, outputs: Outputs | None = None
    ) -> None:
        self.backend = backend
        self.grant = grant
        self.outputs = outputs
        """spec.outputs: writes under a session's `artifacts/` are checked and recorded."""
        self._token = token.encode()
        self._executor = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="store-service")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(STORE_PATH + "list", self.list),
            web.get(STORE_PATH + "object", self.read),
            web.put(STORE_PATH + "object", self.write),
            web.post(STORE_PATH + "delete", self.delete),
            web.get(STORE_PATH + "check", self.check),
        ]

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def _io(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    def _authorized(self, request: web.Request) -> bool:
        offered = request.headers.get(TOKEN_HEADER, "").encode()
        return hmac.compare_digest(offered, self._token)

    async def _guard(self, request: web.Request, check: Callable[[], None]) -> web.Response | None:
        """None if the request may proceed; else the 401/403 to send (denials are logged)."""
        if not self._authorized(request):
            return _error(401, "missing or wrong gateway token")
        try:
            check()
        except AccessDenied as exc:
            log.warning(
                "Refused store access",
                extra={"method": request.method, "path": request.path_qs, "reason": str(exc)},
            )
            return _error(403, str(exc))
        return None

    async def list(self, request: web.Request) -> web.StreamResponse:
        prefix = request.query.get("prefix", "")
        recursive = request.query.get("recursive") == "1"
        if (
            refused := await self._guard(request, lambda: self.grant.check_listing(prefix))
        ) is not None:
            return refused
        lister = self.backend.list_tree if recursive else self.backend.list_children
        try:
            objects = await self._io(lister, prefix)
        except StoreError as exc:
            return _error(502, str(exc))
        visible = self.grant.filter_listing(prefix, objects)
        return web.json_response([[obj.key, obj.mtime_ms] for obj in visible])

    async def read(self, request: web.Request) -> web.StreamResponse:
        key = request.query.get("key", "")
        check = lambda: self.grant.check_object(key, write=False)  # noqa: E731
        if (refused := await self._guard(request, check)) is not None:
            return refused
        try:
            stored = await self._io(self.backend.read, key)
        except StoreError as exc:
            return _error(502, str(exc))
        if stored is None:
            return _error(404, "no such object")
        return web.Response(
            body=stored.data,
            content_type="application/octet-stream",
            headers={ETAG_HEADER: stored.etag, MTIME_HEADER: str(stored.mtime_ms)},
        )

    async def write(self, request: web.Request) -> web.StreamResponse:
        key = request.query.get("key", "")
        artifact_path = request.headers.get(ARTIFACT_PATH_HEADER, "")

        def check() -> None:
            self.grant.check_object(key, write=True)
            self._check_artifact(key, artifact_path)

        if (refused := await self._guard(request, check)) is not None:
            return refused
        data = await request.read()
        artifact = self._artifact_name(key)
        if artifact is not None and self.outputs is not None:
            try:
                await self._io(self.backend.write, key, data)
            except StoreError as exc:
                return _error(502, str(exc))
            self.outputs.record_artifact(artifact, artifact_path, key, data)
            return web.Response(status=204)
        if_match = request.headers.get(IF_MATCH_HEADER)
        if_none_match = request.headers.get(IF_NONE_MATCH_HEADER) == "*"
        try:
            if if_match is None and not if_none_match:
                await self._io(self.backend.write, key, data)
                return web.Response(status=204)
            etag = await self._io(self.backend.write_if, key, data, if_match)
        except PreconditionFailed:
            return _error(412, "the object changed since it was read")
        except StoreError as exc:
            return _error(502, str(exc))
        return web.Response(status=200, headers={ETAG_HEADER: etag})

    @staticmethod
    def _artifact_name(key: str) -> str | None:
        segments = key.split("/")
        return segments[3] if len(segments) >= 5 and segments[2] == ARTIFACTS_DIR else None

    def _check_artifact(self, key: str, path: str) -> None:
        """Artifacts are written once each, only for spec.outputs' names and paths."""
        name = self._artifact_name(key)
        if name is None:
            if key.split("/")[2:3] == [ARTIFACTS_DIR]:
                raise AccessDenied(f"{key!r} is not an artifact file")
            return
        problem = (
            "the session has no spec.outputs"
            if self.outputs is None
            else self.outputs.accepts_artifact(name, path)
        )
        if problem is not None:
            raise AccessDenied(problem)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        try:
            keys = [str(k) for k in (await request.json())["keys"]]
        except (ValueError, KeyError, TypeError):
            return _error(400, 'body must be {"keys": [...]}')

        def check() -> None:
            for key in keys:
                self.grant.check_object(key, write=True)

        if (refused := await self._guard(request, check)) is not None:
            return refused
        try:
            await self._io(self.backend.delete, keys)
        except StoreError as exc:
            return _error(502, str(exc))
        return web.Response(status=204)

    async def check(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return _error(401, "missing or wrong gateway token")
        try:
            await self._io(self.backend.check)
        except StoreError as exc:
            return _error(502, str(exc))
        return web.Response(status=204)


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": message}),
        content_type="application/json",
    )
