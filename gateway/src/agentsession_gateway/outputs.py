"""spec.outputs in the gateway: the artifacts it stored (recorded as it saw their bytes) and the
git pushes it makes for the agent, with the source's credentials the agent never holds.

Mounted by `agentsession_gateway.main`: `StoreService` calls `Outputs.accepts_artifact` and
`record_artifact` for writes under a session's `artifacts/`; `WorkspaceService` serves
`/v1/workspace/base` and `/v1/workspace/push` to the runner (the pod's token).

A push never runs git on the agent's repository. The runner sends the tree of the source's
working directory and a pack of the objects the base lacks; the gateway indexes the pack into
the bare repository the init step fetched the base into (a volume the agent does not mount),
checks that the tree is complete, writes the commit itself (parent: the base, or the branch's
tip if this session pushed it; author and message from the spec) and pushes it with the
credentials from its environment (a token, or an ssh key: `git_auth`). The result goes to its
report (status.outputs.git).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web

from agentsession_contract.gateway import (
    TOKEN_HEADER,
    WORKSPACE_PATH,
    ArtifactRecord,
    OutputsReport,
    PushRecord,
)
from agentsession_contract.redaction import redact
from agentsession_contract.run import GitPushConfig, OutputsConfig, RunConfig
from agentsession_contract.workspace.artifacts import artifact_spec
from agentsession_contract.workspace.init import GIT_STATE_DIR, GIT_STATE_DIR_ENV, pristine_repo

from . import git_auth

log = logging.getLogger(__name__)

ARTIFACT_FILES_MAX = 1000
PUSHES_PER_SOURCE = 3
"""Pushes one attempt may ask for per source (the runner asks once; the agent has the token)."""
GIT_TIMEOUT_SECONDS = 600
BASE_REF = "refs/heads/agentsession-base"
_OID_RE = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")


class Outputs:
    """What this attempt stored and pushed; thread-safe (the store service writes from threads)."""

    def __init__(self, config: OutputsConfig | None, previous: OutputsReport | None = None) -> None:
        self.config = config or OutputsConfig()
        self._specs = {a.name: artifact_spec(a.path) for a in self.config.artifacts}
        self._lock = threading.Lock()
        self._artifacts: dict[str, ArtifactRecord] = {
            r.key: r for r in (previous.artifacts if previous else [])
        }
        self._pushes: dict[str, PushRecord] = {
            r.source: r for r in (previous.git if previous else [])
        }
        self._push_counts: dict[str, int] = {}

    def accepts_artifact(self, name: str, path: str) -> str | None:
        """None if a file at `path` belongs to artifact `name`, else why not."""
        spec = self._specs.get(name)
        if spec is None:
            return f"{name!r} is not an artifact of spec.outputs"
        if not path or path.startswith("/") or ".." in path.split("/"):
            return f"artifact path {path!r} is not inside the workspace"
        if not spec.match_file(path):
            return f"{path!r} does not match artifact {name!r}"
        with self._lock:
            if len(self._artifacts) >= ARTIFACT_FILES_MAX:
                return f"more than {ARTIFACT_FILES_MAX} artifact files"
        return None

    def record_artifact(self, name: str, path: str, key: str, data: bytes) -> None:
        record = ArtifactRecord(
            name=name, path=path, key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest()
        )
        with self._lock:
            self._artifacts[key] = record

    def record_push(self, record: PushRecord) -> None:
        with self._lock:
            self._pushes[record.source] = record

    def take_push_slot(self, source: str) -> bool:
        with self._lock:
            used = self._push_counts.get(source, 0)
            if used >= PUSHES_PER_SOURCE:
                return False
            self._push_counts[source] = used + 1
            return True

    def report(self) -> OutputsReport | None:
        with self._lock:
            if not self._artifacts and not self._pushes:
                return None
            return OutputsReport(
                artifacts=sorted(self._artifacts.values(), key=lambda r: (r.name, r.path)),
                git=sorted(self._pushes.values(), key=lambda r: r.source),
            )


class GitError(Exception):
    """A git command failed; the message is safe to report (redacted)."""


class Pusher:
    """git in the pristine repositories, with the sources' credentials from the environment."""

    def __init__(self, config: RunConfig, environ: Mapping[str, str]) -> None:
        self.config = config
        self.environ = environ
        self.state_dir = environ.get(GIT_STATE_DIR_ENV, GIT_STATE_DIR)
        self.sources = {s.name: s for s in config.sources if s.git is not None}

    def repo(self, source: str) -> Path:
        return Path(pristine_repo(source, self.state_dir))

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # Pushes go to the sources' http(s) or ssh remotes only.
        return {**git_auth.base_env(self.environ, self.state_dir, "http:https"), **(extra or {})}

    def git(
        self,
        source: str,
        args: list[str],
        *,
        data: bytes | None = None,
        remote: bool = False,
        extra: Mapping[str, str] | None = None,
    ) -> str:
        """git `args` in the source's pristine repository; `remote`: a command that talks to
        the source's remote, with its credentials."""
        spec = self.sources[source].git if remote and source in self.sources else None
        if spec is None:
            return self._run(source, args, data, self.env(extra))
        try:
            with git_auth.remote_env(
                self.env(extra),
                url=spec.url,
                source=source,
                credentials=spec.credentials,
                secret=spec.credentials_secret,
                environ=self.environ,
                private_root=Path(self.state_dir),
            ) as env:
                return self._run(source, args, data, env)
        except git_auth.CredentialsError as exc:
            raise GitError(str(exc)) from exc

    def _run(self, source: str, args: list[str], data: bytes | None, env: dict[str, str]) -> str:
        result = subprocess.run(
            ["git", *args],
            cwd=self.repo(source),
            env=env,
            input=data,
            capture_output=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).decode(errors="replace").strip()
            raise GitError(f"git {args[0]}: {redact(detail)[-600:]}")
        return result.stdout.decode(errors="replace").strip()

    def base(self, source: str) -> str:
        return self.git(source, ["rev-parse", f"{BASE_REF}^{{commit}}"])

    def push(self, output: GitPushConfig, tree: str, pack: bytes) -> PushRecord:
        source = output.source
        branch = output.branch
        record = PushRecord(source=source, branch=branch, pushed=False)
        if not self.repo(source).is_dir():
            return record.model_copy(update={"message": "the init step left no base to push on"})
        try:
            base = self.base(source)
            if pack:
                self.git(source, ["index-pack", "--stdin", "--strict", "--fix-thin"], data=pack)
            if self.git(source, ["cat-file", "-t", tree]) != "tree":
                raise GitError(f"{tree} is not a tree")
            # Every object of the tree must be here: a pushed commit is never incomplete.
            self.git(source, ["rev-list", "--objects", "--quiet", tree])
            if tree == self.git(source, ["rev-parse", f"{base}^{{tree}}"]):
                return record.model_copy(update={"message": "no changes to push"})
            trailer = f"AgentSession-Id: {self.config.namespace}/{self.config.session_id}"
            parent = base
            remote_tip = self._remote_tip(source, branch)
            if remote_tip is not None:
                self.git(
                    source,
                    [
                        "fetch",
                        "-q",
                        "--no-tags",
                        "--depth=1",
                        "origin",
                        f"+refs/heads/{branch}:refs/agentsession/remote",
                    ],
                    remote=True,
                )
                tip_message = self.git(source, ["log", "-1", "--format=%B", remote_tip])
                if trailer not in tip_message:
                    return record.model_copy(
                        update={
                            "message": (
                                f"branch {branch} exists and was not pushed by this session: "
                                "not overwritten"
                            )
                        }
                    )
                if tree == self.git(source, ["rev-parse", f"{remote_tip}^{{tree}}"]):
                    return record.model_copy(
                        update={"commit": remote_tip, "pushed": True, "message": "already pushed"}
                    )
                parent = remote_tip
            who = {
                "GIT_AUTHOR_NAME": output.author_name,
                "GIT_AUTHOR_EMAIL": output.author_email,
                "GIT_COMMITTER_NAME": output.author_name,
                "GIT_COMMITTER_EMAIL": output.author_email,
            }
            message = f"{output.message.rstrip()}\n\n{trailer}\n"
            commit = self.git(
                source,
                ["commit-tree", tree, "-p", parent, "-F", "-"],
                data=message.encode(),
                extra=who,
            )
            record = record.model_copy(update={"commit": commit})
            self.git(
                source,
                ["push", "-q", "origin", f"{commit}:refs/heads/{branch}"],
                remote=True,
            )
        except (GitError, subprocess.TimeoutExpired) as exc:
            return record.model_copy(update={"message": str(exc)[:1024]})
        return record.model_copy(update={"pushed": True})

    def _remote_tip(self, source: str, branch: str) -> str | None:
        listed = self.git(source, ["ls-remote", "origin", f"refs/heads/{branch}"], remote=True)
        for line in listed.splitlines():
            oid, _, ref = line.partition("\t")
            if ref == f"refs/heads/{branch}" and _OID_RE.fullmatch(oid):
                return oid
        return None


class WorkspaceService:
    """`/v1/workspace/base` and `/v1/workspace/push`, for the runner (the pod's token)."""

    def __init__(
        self, config: RunConfig, outputs: Outputs, token: str, environ: Mapping[str, str]
    ) -> None:
        self.outputs = outputs
        self.pusher = Pusher(config, environ)
        self._pushes = {p.source: p for p in outputs.config.git}
        self._token = token.encode()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(WORKSPACE_PATH + "base", self.base),
            web.post(WORKSPACE_PATH + "push", self.push),
        ]

    def _authorized(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.headers.get(TOKEN_HEADER, "").encode(), self._token)

    def _output(self, request: web.Request) -> GitPushConfig | web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "missing or wrong gateway token"}, status=401)
        source = request.query.get("source", "")
        output = self._pushes.get(source)
        if output is None:
            return web.json_response(
                {"error": f"{source!r} is not a git source of spec.outputs.git"}, status=404
            )
        return output

    async def base(self, request: web.Request) -> web.Response:
        output = self._output(request)
        if isinstance(output, web.Response):
            return output
        try:
            commit = await asyncio.to_thread(self.pusher.base, output.source)
        except GitError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response({"commit": commit})

    async def push(self, request: web.Request) -> web.Response:
        output = self._output(request)
        if isinstance(output, web.Response):
            return output
        tree = request.query.get("tree", "")
        if not _OID_RE.fullmatch(tree):
            return web.json_response({"error": "tree must be an object id"}, status=400)
        if not self.outputs.take_push_slot(output.source):
            return web.json_response(
                {"error": f"at most {PUSHES_PER_SOURCE} pushes of a source per attempt"},
                status=429,
            )
        pack = await request.read()
        record = await asyncio.to_thread(self.pusher.push, output, tree, pack)
        self.outputs.record_push(record)
        log.info("Git push", extra={"push": record.to_wire()})
        return web.json_response(record.to_wire())
