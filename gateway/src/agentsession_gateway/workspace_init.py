"""`agentsession-workspace`: the runner pod's trusted init step, which prepares `/workspace`.

Runs as an init container after the gateway sidecar has started and before the agent's
container exists, so nothing of the agent runs beside it. It is the only container besides the
gateway with the git credentials (in its environment, from the session's Secret) and the only
one with the configMap and secret sources mounted. In order:

1. the session's own last snapshot, if it has one (a retry): restored, and the sources are not
   fetched again (their files are in it); pushed git sources get their pristine base again;
2. otherwise the resume source's last snapshot (a follow-up session's first attempt), then every
   source of spec.workspace.sources in order: git (init, fetch the ref at the depth asked,
   check out; a token only through a credential helper in the environment, never in a file
   or a URL; an ssh key in a private file of the git-state volume for one command: `git_auth`),
   configMap/secret (the mounted volume's files copied), inline (written from the run config),
   fromSession (another session's last snapshot, through the gateway's grant).

Every path is made under directories verified not to be symlinks (a restored snapshot or a
fetched repository may plant one), so nothing is written outside the workspace. A git source to
push is also fetched into a bare repository in a volume only this step and the gateway mount
(the gateway commits and pushes from it: never from the agent's `.git`).

It leaves an `InitReport` in its termination message (status.workspace.sources) and exits 0,
3 (a failure no retry fixes: bad credentials, a missing ref or snapshot) or 4 (retryable:
network, 5xx, the store unreachable).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agentsession_contract import logs as json_logs
from agentsession_contract.gateway import (
    CONFIG_DIR,
    CONFIG_FILE,
    SHARED_DIR,
)
from agentsession_contract.process import exit_now
from agentsession_contract.redaction import redact
from agentsession_contract.run import ExitCode, RunConfig, SourceConfig, decode_run_config
from agentsession_contract.store.backend import Backend
from agentsession_contract.store.errors import StoreError
from agentsession_contract.store.gateway_client import GatewayBackend, wait_for_endpoint
from agentsession_contract.workspace import snapshot as ws
from agentsession_contract.workspace.init import (
    GIT_STATE_DIR,
    GIT_STATE_DIR_ENV,
    InitReport,
    SourceReport,
    SourceResult,
    pristine_repo,
)

from . import git_auth

log = logging.getLogger("agentsession_gateway.workspace_init")

GATEWAY_WAIT_SECONDS = 120.0
GIT_TIMEOUT_SECONDS = 1800
CACHE_FILE = "workspace-cache.json"
_SHA_RE = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
# What git prints for failures a retry cannot fix (checked first), and for those it may.
_PERMANENT = (
    "authentication failed",
    "could not read username",
    "could not read password",
    "returned error: 401",
    "returned error: 403",
    "returned error: 404",
    "repository not found",
    "couldn't find remote ref",
    "not our ref",
    "unadvertised object",
    "invalid refspec",
    "no such remote ref",
    # ssh: a refused key, an unknown or changed host key, an unusable key, no such repository
    "permission denied (publickey",
    "host key verification failed",
    "remote host identification has changed",
    "load key",
    "does not appear to be a git repository",
)
_RETRYABLE = (
    "returned error: 5",
    "could not resolve host",
    "connection refused",
    "timed out",
    "rpc failed",
    "early eof",
    "remote end hung up",
    "connection reset",
    "failed to connect",
    "unable to access",
    "no route to host",
    "network is unreachable",
    "connection closed by",
    "kex_exchange_identification",
)


class SourceError(Exception):
    """A source could not be fetched; `retryable` says whether a new attempt may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def classify_git_error(stderr: str) -> bool:
    """Whether git's error output means a retry may help (network, 5xx) rather than not (bad
    credentials, a missing ref or repository). Unknown errors are not retried."""
    text = stderr.lower()
    if any(marker in text for marker in _PERMANENT):
        return False
    return any(marker in text for marker in _RETRYABLE)


@dataclass(frozen=True)
class Git:
    """git with no configuration but ours: no system or global config, no prompts, only the
    http(s) transports (and ssh for a source whose URL is ssh), and a source's credentials
    (when it has them) only for the commands that talk to its remote (`git_auth`)."""

    home: Path
    environ: Mapping[str, str]
    private_root: Path
    """Where an ssh key is written for one command (the git-state volume: never the agent's)."""

    def env(self) -> dict[str, str]:
        # The sources' URLs are http(s) or ssh (admission); file is the local copy to the
        # pristine repository. Never ext or anything else that runs a command.
        return git_auth.base_env(self.environ, str(self.home), "http:https:file")

    def run(
        self, args: list[str], *, cwd: Path | None = None, remote: SourceConfig | None = None
    ) -> str:
        """git `args`; with `remote`, a command that talks to that source's remote, with its
        credentials."""
        if remote is None or remote.git is None:
            return self._run(args, cwd, self.env())
        spec = remote.git
        try:
            with git_auth.remote_env(
                self.env(),
                url=spec.url,
                source=remote.name,
                credentials=spec.credentials,
                secret=spec.credentials_secret,
                environ=self.environ,
                private_root=self.private_root,
            ) as env:
                return self._run(args, cwd, env)
        except git_auth.CredentialsError as exc:
            raise SourceError(str(exc), retryable=False) from exc

    def _run(self, args: list[str], cwd: Path | None, env: dict[str, str]) -> str:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
        if result.returncode != 0:
            detail = redact(result.stderr.strip() or result.stdout.strip())[-800:]
            raise SourceError(
                f"git {args[0]} failed: {detail}", retryable=classify_git_error(result.stderr)
            )
        return result.stdout


def is_commit(ref: str | None) -> bool:
    return ref is not None and _SHA_RE.fullmatch(ref) is not None


def fetch_git(git: Git, source: SourceConfig, dest: Path) -> str:
    """Fetch a git source into `dest` (absent or empty) and check it out; its commit."""
    assert source.git is not None
    spec = source.git
    if dest.exists() and any(dest.iterdir()):
        raise SourceError(f"{source.path} exists and is not empty", retryable=False)
    git.run(["init", "-q", str(dest)])
    git.run(["remote", "add", "origin", spec.url], cwd=dest)
    target = spec.commit or spec.ref or "HEAD"
    depth = [f"--depth={spec.depth}"] if spec.depth > 0 else []
    git.run(["fetch", "-q", "--no-tags", *depth, "origin", target], cwd=dest, remote=source)
    commit = git.run(["rev-parse", "FETCH_HEAD^{commit}"], cwd=dest).strip()
    branch = spec.ref if spec.ref and not is_commit(spec.ref) else None
    if branch is None and spec.ref is None:
        symref = git.run(["ls-remote", "--symref", "origin", "HEAD"], cwd=dest, remote=source)
        match = re.search(r"^ref: refs/heads/(\S+)\s+HEAD", symref, re.MULTILINE)
        branch = match.group(1) if match else None
    if branch is not None:
        git.run(["checkout", "-q", "-B", branch, commit], cwd=dest)
        git.run(["update-ref", f"refs/remotes/origin/{branch}", commit], cwd=dest)
    else:
        git.run(["checkout", "-q", "--detach", commit], cwd=dest)
    return commit


def keep_pristine(
    git: Git, source: SourceConfig, commit: str, fetched_from: str, state_dir: str
) -> None:
    """A bare repository holding `commit`, in the volume only this step and the gateway mount:
    the base the gateway commits the agent's work on. Group-writable: the gateway runs as
    another UID in the pod's fsGroup."""
    assert source.git is not None
    repo = Path(pristine_repo(source.name, state_dir))
    if repo.exists():
        shutil.rmtree(repo)
    git.run(["init", "-q", "--bare", "--shared=group", str(repo)])
    git.run(["config", "remote.origin.url", source.git.url], cwd=repo)
    depth = [f"--depth={source.git.depth}"] if source.git.depth > 0 else []
    remote = source.git.url if fetched_from == "remote" else fetched_from
    git.run(
        ["fetch", "-q", "--no-tags", *depth, remote, f"{commit}:refs/heads/agentsession-base"],
        cwd=repo,
        remote=source if fetched_from == "remote" else None,
    )


def copy_mounted(source: SourceConfig, dest: Path) -> None:
    """A configMap or secret volume's files (the kubelet's `..data` indirection followed, its
    own dot entries left out), copied so the agent can edit them."""
    assert source.files_dir is not None
    mounted = Path(source.files_dir)
    if dest.exists() and any(dest.iterdir()):
        raise SourceError(f"{source.path} exists and is not empty", retryable=False)
    dest.mkdir(exist_ok=True)
    for entry in sorted(mounted.iterdir()):
        if entry.name.startswith(".."):
            continue
        target = dest / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, symlinks=False)
        else:
            shutil.copyfile(entry, target)
            target.chmod(0o644)


def write_inline(source: SourceConfig, dest: Path) -> None:
    tree = ws.SafeTree(dest)
    dest.mkdir(exist_ok=True)
    for item in source.inline or []:
        rel = str(ws.check_relative(item.path))
        fd = tree.open_file(rel, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(item.content.encode())


class Preparer:
    """One run of the init step."""

    def __init__(
        self,
        config: RunConfig,
        backend: Backend,
        root: Path,
        environ: Mapping[str, str],
        state_dir: Path,
    ) -> None:
        self.config = config
        self.backend = backend
        self.root = root
        self.state_dir = state_dir
        self.tree = ws.SafeTree(root)
        self.git_state = environ.get(GIT_STATE_DIR_ENV, GIT_STATE_DIR)
        self.git = Git(
            home=Path(environ.get("HOME", self.git_state)),
            environ=environ,
            private_root=Path(self.git_state),
        )
        self.report = InitReport()
        self.pushed = {output.source for output in (config.outputs.git if config.outputs else [])}

    def run(self) -> ExitCode:
        try:
            self._prepare()
        except SourceError as exc:
            self.report = self.report.model_copy(update={"retryable": exc.retryable})
            log.error("Workspace source failed", extra={"error": str(exc)})
            return ExitCode.RETRYABLE if exc.retryable else ExitCode.INVALID_CONFIG
        return ExitCode.OK

    def _prepare(self) -> None:
        config = self.config
        self.root.mkdir(parents=True, exist_ok=True)
        own = self._latest(config.session_id)
        if own is not None:
            self._restore(own, str(config.session_id))
            for source in config.sources:
                commit = source.git.commit if source.git else None
                if source.name in self.pushed and source.git is not None:
                    commit = self._pristine_again(source)
                self._record(source, "Restored", commit=commit)
            return
        base = self._latest(config.resume_session_id)
        if base is not None:
            self._restore(base, str(config.resume_session_id))
        for source in config.sources:
            self._fetch(source)

    def _latest(self, session_id: str | None) -> str | None:
        if not session_id or self.config.snapshot is None:
            return None
        try:
            return ws.latest_manifest_key(self.backend, session_id)
        except StoreError as exc:
            raise SourceError(f"the store: {exc}", retryable=True) from exc

    def _restore(self, key: str, session_id: str) -> None:
        started = time.monotonic()
        try:
            result = ws.restore_snapshot(
                self.root, self.backend, key, cache_file=self.state_dir / CACHE_FILE
            )
        except StoreError as exc:
            raise SourceError(f"restoring the workspace: {exc}", retryable=True) from exc
        except ws.SnapshotError as exc:
            raise SourceError(f"restoring the workspace: {exc}", retryable=False) from exc
        self.report = self.report.model_copy(update={"restored_from": session_id})
        log.info(
            "Restored the workspace",
            extra={
                "files": result.files,
                "bytes": result.bytes,
                "ms": round((time.monotonic() - started) * 1000),
                "warnings": result.warnings or None,
            },
        )

    def _record(
        self,
        source: SourceConfig,
        result: SourceResult,
        commit: str | None = None,
        message: str = "",
    ) -> None:
        entry = SourceReport(
            name=source.name,
            path=source.path,
            result=result,
            commit=commit,
            message=message[:1024] or None,
        )
        self.report = self.report.model_copy(update={"sources": [*self.report.sources, entry]})

    def _destination(self, source: SourceConfig) -> Path:
        """The source's directory: its parents verified (or made) not to be symlinks, itself
        absent, or an empty directory that is not a symlink."""
        rel = "" if source.path in (".", "./") else str(ws.check_relative(source.path.strip("/")))
        try:
            if rel:
                parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
                self.tree.directory(parent)
                dest = self.root / rel
                if dest.is_symlink():
                    raise ws.SnapshotError(f"{rel} is a symlink")
                return dest
            return self.root
        except (ws.SnapshotError, OSError) as exc:
            raise SourceError(f"{source.name}: {exc}", retryable=False) from exc

    def _fetch(self, source: SourceConfig) -> None:
        started = time.monotonic()
        commit: str | None = None
        try:
            dest = self._destination(source)
            if source.kind == "git":
                commit = fetch_git(self.git, source, dest)
                if source.name in self.pushed:
                    keep_pristine(self.git, source, commit, str(dest), self.git_state)
            elif source.kind in ("configMap", "secret"):
                copy_mounted(source, dest)
            elif source.kind == "inline":
                write_inline(source, dest)
            else:
                self._from_session(source, dest)
        except SourceError as exc:
            message = f"{source.name}: {exc}"
            self._record(source, "Failed", message=message)
            raise SourceError(message, retryable=exc.retryable) from exc
        except (OSError, ws.SnapshotError) as exc:
            message = f"{source.name}: {exc}"
            self._record(source, "Failed", message=message)
            raise SourceError(message, retryable=False) from exc
        self._record(source, "Fetched", commit=commit)
        log.info(
            "Fetched a workspace source",
            extra={
                "source": source.name,
                "kind": source.kind,
                "commit": commit,
                "ms": round((time.monotonic() - started) * 1000),
            },
        )

    def _from_session(self, source: SourceConfig, dest: Path) -> None:
        other = source.from_session_id
        key = self._latest(other) if other else None
        if key is None:
            raise SourceError(
                f"session {other} has no workspace snapshot in the store", retryable=False
            )
        try:
            ws.restore_snapshot(dest, self.backend, key, subpath=source.from_path)
        except StoreError as exc:
            raise SourceError(str(exc), retryable=True) from exc

    def _pristine_again(self, source: SourceConfig) -> str | None:
        """A retry: the push base, fetched again from the remote at the commit the first
        attempt resolved (the run config carries it), else at the ref."""
        assert source.git is not None
        target = source.git.commit or source.git.ref or "HEAD"
        scratch = Path(pristine_repo(source.name, self.git_state) + ".fetch")
        if scratch.exists():
            shutil.rmtree(scratch)
        self.git.run(["init", "-q", "--bare", str(scratch)])
        depth = [f"--depth={source.git.depth}"] if source.git.depth > 0 else []
        self.git.run(
            ["fetch", "-q", "--no-tags", *depth, source.git.url, target],
            cwd=scratch,
            remote=source,
        )
        commit = self.git.run(["rev-parse", "FETCH_HEAD^{commit}"], cwd=scratch).strip()
        keep_pristine(self.git, source, commit, str(scratch), self.git_state)
        shutil.rmtree(scratch)
        return commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentsession-workspace", description=__doc__)
    parser.add_argument("--config", help=f"run config file (default {CONFIG_DIR}/{CONFIG_FILE})")
    parser.add_argument("--report-file", default="/dev/termination-log")
    args = parser.parse_args(argv)
    json_logs.configure()
    environ = dict(os.environ)
    report_file = Path(args.report_file)
    try:
        config_file = Path(args.config or Path(CONFIG_DIR) / CONFIG_FILE)
        config = RunConfig.model_validate(decode_run_config(config_file.read_text()))
    except (OSError, ValueError) as exc:
        log.error("Workspace init cannot start", extra={"error": str(exc)})
        return int(ExitCode.INVALID_CONFIG)
    state_dir = Path(environ.get("AGENTSESSION_STATE_DIR", "/tmp/agent-runner"))  # noqa: S108
    try:
        endpoint = wait_for_endpoint(
            Path(environ.get("AGENTSESSION_GATEWAY_DIR", SHARED_DIR)), GATEWAY_WAIT_SECONDS
        )
    except StoreError as exc:
        log.error("Workspace init found no gateway", extra={"error": str(exc)})
        report_file.write_text(InitReport(retryable=True).to_termination_message())
        return int(ExitCode.RETRYABLE)
    backend = GatewayBackend(endpoint)
    try:
        preparer = Preparer(config, backend, Path(config.workspace), environ, state_dir)
        code = preparer.run()
    finally:
        backend.close()
    try:
        report_file.write_text(preparer.report.to_termination_message())
    except OSError as exc:
        log.warning("Workspace init report not written", extra={"error": str(exc)})
    return int(code)


def entry() -> None:
    """The `agentsession-workspace` console script."""
    exit_now(main())


if __name__ == "__main__":
    entry()
