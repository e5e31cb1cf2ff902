"""spec.outputs from the runner's side, once the agent has finished: artifact files uploaded
through the gateway's store service (which checks and records each one), and each pushed git
source's working tree sent to the gateway as a tree id and a pack of the objects its base lacks.

Called by `agentsession_runner.run` after the final snapshot. The runner holds no credential:
the gateway writes the commit and pushes it (agentsession_gateway.outputs). git runs here on the
agent's own repository (this is the agent's container: nothing here is trusted, and nothing here
needs to be), with a temporary index so the agent's staging area is left alone.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from agentsession_contract.gateway import ARTIFACT_PATH_HEADER, WORKSPACE_PATH
from agentsession_contract.run import OutputsConfig, RunConfig
from agentsession_contract.store.backend import Backend
from agentsession_contract.store.errors import StoreError
from agentsession_contract.store.gateway_client import GatewayBackend
from agentsession_contract.workspace.artifacts import artifact_key, matching_files

ARTIFACT_FILES_MAX = 1000
GIT_TIMEOUT_SECONDS = 600


@dataclass
class OutputsResult:
    """What the runner did (logged; the status comes from the gateway's report)."""

    artifacts: int = 0
    pushes: list[dict[str, object]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def upload_artifacts(
    root: Path, backend: Backend, session_id: str, outputs: OutputsConfig, result: OutputsResult
) -> None:
    for artifact in outputs.artifacts:
        found = 0
        for rel in matching_files(root, artifact.path):
            if result.artifacts >= ARTIFACT_FILES_MAX:
                result.warnings.append(f"more than {ARTIFACT_FILES_MAX} artifact files: stopped")
                return
            data = (root / rel).read_bytes()
            key = artifact_key(session_id, artifact.name, rel)
            if isinstance(backend, GatewayBackend):
                backend.write(key, data, headers={ARTIFACT_PATH_HEADER: rel})
            else:
                backend.write(key, data)
            found += 1
            result.artifacts += 1
        if found == 0:
            result.warnings.append(f"artifact {artifact.name} ({artifact.path}) matched no file")


def _git(args: list[str], *, cwd: Path, env: dict[str, str], data: bytes | None = None) -> bytes:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=env,
        input=data,
        capture_output=True,
        timeout=GIT_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {args[0]}: {done.stderr.decode(errors='replace')[-400:]}")
    return done.stdout


def tree_and_pack(work_tree: Path, base: str, scratch: Path) -> tuple[str, bytes]:
    """The tree of `work_tree` as it is (.gitignore honoured) and a pack of its objects that
    `base` lacks: from the agent's repository when it still has the base, else from a scratch
    repository (then the pack holds every object of the tree)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(scratch),
        "GIT_INDEX_FILE": str(scratch / "index"),
        "GIT_WORK_TREE": str(work_tree),
    }
    own = work_tree / ".git"
    git_dir = own
    has_base = False
    if own.is_dir():
        try:
            _git(
                ["cat-file", "-e", f"{base}^{{commit}}"],
                cwd=work_tree,
                env={**env, "GIT_DIR": str(own)},
            )
            has_base = True
        except RuntimeError:
            has_base = False
    if not has_base:
        git_dir = scratch / "repo.git"
        _git(["init", "-q", "--bare", str(git_dir)], cwd=scratch, env=env)
    env["GIT_DIR"] = str(git_dir)
    _git(["add", "-A", "."], cwd=work_tree, env=env)
    tree = _git(["write-tree"], cwd=work_tree, env=env).decode().strip()
    listing = ["rev-list", "--objects", tree] + (["--not", base] if has_base else [])
    objects = _git(listing, cwd=work_tree, env=env)
    ids = b"".join(line.split(b" ", 1)[0] + b"\n" for line in objects.splitlines() if line)
    pack = (
        _git(["pack-objects", "--stdout", "-q"], cwd=work_tree, env=env, data=ids) if ids else b""
    )
    return tree, pack


def push_sources(
    root: Path, config: RunConfig, backend: GatewayBackend, state_dir: Path, result: OutputsResult
) -> None:
    assert config.outputs is not None
    paths = {s.name: s.path for s in config.sources}
    for output in config.outputs.git:
        work_tree = root / paths.get(output.source, output.source)
        try:
            status, answer = backend.get_json(WORKSPACE_PATH + "base", {"source": output.source})
            if status != 200:
                raise RuntimeError(f"no base to push on: {answer.get('error')}")
            base = str(answer["commit"])
            state_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=state_dir, prefix="push-") as scratch:
                tree, pack = tree_and_pack(work_tree, base, Path(scratch))
            status, answer = backend.post_json(
                WORKSPACE_PATH + "push", {"source": output.source, "tree": tree}, pack
            )
            result.pushes.append({"source": output.source, "status": status, **answer})
        except (RuntimeError, OSError, StoreError, subprocess.TimeoutExpired, KeyError) as exc:
            result.warnings.append(f"git push of {output.source}: {exc}")
