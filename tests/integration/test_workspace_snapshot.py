"""Workspace snapshots (agentsession_contract.workspace.snapshot) on real stores: the filesystem
backend, and the runner's view in a pod (the gateway's store service over HTTP, its grant, S3 on
moto behind it).

Round trips keep contents, modes, mtimes, empty directories and in-workspace symlinks; symlinks
out of the workspace and special files are skipped with a warning; snapshots are incremental
(only changed files are uploaded) and bounded (maxBytes, exclusions); a hostile manifest (paths
with `..`, a symlink planted on the way) writes nothing outside the workspace.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentsession_contract.gateway import GatewayEndpoint
from agentsession_contract.store.backend import Backend
from agentsession_contract.store.errors import StoreError
from agentsession_contract.store.filesystem import FilesystemBackend
from agentsession_contract.store.gateway_client import GatewayBackend
from agentsession_contract.workspace import snapshot as ws
from agentsession_gateway.s3 import S3Backend, make_s3_client
from agentsession_gateway.store_service import StoreGrant, StoreService
from tests.support.s3server import S3Bucket
from tests.support.store_service import ServedStore

SESSION = str(uuid.uuid4())
MAX = 1 << 40


def tree_of(root: Path) -> dict[str, tuple[str, object]]:
    """Everything under `root`, never following links: kind and content/target/mode."""
    found: dict[str, tuple[str, object]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            found[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            found[rel] = ("dir", st.st_mode & 0o777)
        elif not stat.S_ISREG(st.st_mode):
            found[rel] = ("special", None)
        else:
            found[rel] = ("file", (path.read_bytes(), st.st_mode & 0o777, st.st_mtime_ns))
    return found


def make_workspace(root: Path) -> None:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "a.py").write_text("print('a')\n")
    (root / "src" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "src" / "run.sh").chmod(0o755)
    (root / "empty.txt").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "copy.bin").write_bytes((root / "big.bin").read_bytes())
    (root / "empty-dir").mkdir()
    (root / "link-inside").symlink_to("src/pkg/a.py")
    (root / "src" / "up").symlink_to("../empty.txt")
    (root / "secret-link").symlink_to("/etc/passwd")
    (root / "climb").symlink_to("../../outside")
    os.mkfifo(root / "fifo")
    (root / "node_modules" / "x").mkdir(parents=True)
    (root / "node_modules" / "x" / "index.js").write_text("x")
    (root / "debug.log").write_text("noise")


@pytest.fixture
def fs_backend(tmp_path: Path) -> Backend:
    return FilesystemBackend(tmp_path / "store" / "team-a")


@pytest.fixture
def gateway_backend(s3_bucket: S3Bucket) -> Iterator[Backend]:
    """The runner's backend in a pod: the gateway's store service with the session's grant."""
    s3 = S3Backend(s3_bucket.name, "agents/team-a/", make_s3_client(max_pool_connections=16))
    served = ServedStore(StoreService(s3, StoreGrant.for_session("sessions", SESSION), "t" * 32))
    endpoint = GatewayEndpoint(port=served.port, token="t" * 32, store_uri=s3.uri(""))
    client = GatewayBackend(endpoint)
    yield client
    client.close()
    served.stop()


def round_trip(backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "work"
    make_workspace(source)
    result = ws.take_snapshot(
        source, backend, SESSION, max_bytes=MAX, exclude=["node_modules/", "*.log"]
    )
    assert result.taken
    assert any("secret-link" in w and "leaves the workspace" in w for w in result.warnings)
    assert any("climb" in w for w in result.warnings)
    assert any("fifo" in w and "skipped" in w for w in result.warnings)
    assert result.files == 5
    key = ws.latest_manifest_key(backend, SESSION)
    assert key == result.manifest_key

    target = tmp_path / "restored"
    restored = ws.restore_snapshot(target, backend, key)
    assert restored.files == 5
    expected = {
        rel: entry
        for rel, entry in tree_of(source).items()
        if rel not in {"secret-link", "climb", "fifo", "debug.log"}
        and not rel.startswith("node_modules")
    }
    got = tree_of(target)
    # Directory modes of the restored tree follow the manifest; compare files and links exactly.
    assert {k: v for k, v in got.items() if v[0] != "dir"} == {
        k: v for k, v in expected.items() if v[0] != "dir"
    }
    assert {k for k, v in got.items() if v[0] == "dir"} == {
        k for k, v in expected.items() if v[0] == "dir"
    }


def test_round_trip_on_the_filesystem_store(fs_backend: Backend, tmp_path: Path) -> None:
    round_trip(fs_backend, tmp_path)


@pytest.mark.s3
def test_round_trip_through_the_gateway_on_s3(gateway_backend: Backend, tmp_path: Path) -> None:
    round_trip(gateway_backend, tmp_path)


@pytest.mark.s3
def test_the_grant_keeps_a_session_to_its_own_snapshots(
    gateway_backend: Backend, tmp_path: Path
) -> None:
    other = str(uuid.uuid4())
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "f").write_text("x")
    with pytest.raises(StoreError, match="not granted"):
        ws.take_snapshot(tmp_path / "w", gateway_backend, other, max_bytes=MAX)


def test_only_changed_files_are_uploaded(fs_backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "work"
    cache = tmp_path / "state" / "cache.json"
    source.mkdir()
    for i in range(200):
        (source / f"f{i:03}.txt").write_bytes(os.urandom(10_000))
    first = ws.take_snapshot(source, fs_backend, SESSION, max_bytes=MAX, cache_file=cache)
    assert first.uploaded_bytes > 2_000_000
    (source / "f007.txt").write_bytes(b"changed")
    (source / "new.txt").write_bytes(b"new file")
    (source / "f100.txt").unlink()
    second = ws.take_snapshot(source, fs_backend, SESSION, max_bytes=MAX, cache_file=cache)
    assert second.packs_uploaded == 1
    assert second.uploaded_bytes < first.uploaded_bytes / 20
    target = tmp_path / "restored"
    ws.restore_snapshot(target, fs_backend, str(second.manifest_key))
    assert (target / "f007.txt").read_bytes() == b"changed"
    assert (target / "new.txt").read_bytes() == b"new file"
    assert not (target / "f100.txt").exists()
    assert (target / "f008.txt").read_bytes() == (source / "f008.txt").read_bytes()


def test_a_restore_then_a_snapshot_uploads_only_what_changed(
    fs_backend: Backend, tmp_path: Path
) -> None:
    # The next attempt restores, then snapshots: its stat cache comes from the restore.
    source = tmp_path / "attempt-1"
    source.mkdir()
    for i in range(50):
        (source / f"f{i}.txt").write_bytes(os.urandom(20_000))
    ws.take_snapshot(source, fs_backend, SESSION, max_bytes=MAX)
    second_pod = tmp_path / "attempt-2"
    cache = tmp_path / "attempt-2-state" / "cache.json"
    key = ws.latest_manifest_key(fs_backend, SESSION)
    assert key is not None
    ws.restore_snapshot(second_pod, fs_backend, key, cache_file=cache)
    (second_pod / "f3.txt").write_text("edited in attempt 2")
    result = ws.take_snapshot(second_pod, fs_backend, SESSION, max_bytes=MAX, cache_file=cache)
    assert result.packs_uploaded == 1
    assert result.uploaded_bytes < 20_000


def test_a_workspace_over_max_bytes_is_not_snapshotted(fs_backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "work"
    source.mkdir()
    (source / "a").write_bytes(b"x" * 100)
    first = ws.take_snapshot(source, fs_backend, SESSION, max_bytes=1000)
    (source / "b").write_bytes(b"x" * 5000)
    second = ws.take_snapshot(source, fs_backend, SESSION, max_bytes=1000)
    assert not second.taken
    assert "over snapshot.maxBytes 1000" in second.warnings[0]
    assert ws.latest_manifest_key(fs_backend, SESSION) == first.manifest_key


def test_old_snapshots_and_their_packs_are_collected(fs_backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "work"
    source.mkdir()
    for round_ in range(4):
        (source / "f").write_bytes(os.urandom(1000) + bytes([round_]))
        ws.take_snapshot(source, fs_backend, SESSION, max_bytes=MAX)
    manifests = fs_backend.list_children(ws.area(SESSION) + "manifests/")
    packs = fs_backend.list_children(ws.area(SESSION) + "packs/")
    assert len(manifests) == ws.MANIFESTS_KEPT
    assert len(packs) == ws.MANIFESTS_KEPT


def test_a_subdirectory_restores_into_another_path(fs_backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "work"
    make_workspace(source)
    result = ws.take_snapshot(source, fs_backend, SESSION, max_bytes=MAX, exclude=["fifo"])
    target = tmp_path / "other" / "prior"
    restored = ws.restore_snapshot(target, fs_backend, str(result.manifest_key), subpath="src")
    assert (target / "pkg" / "a.py").read_text() == "print('a')\n"
    assert not (target / "big.bin").exists()
    # `src/up -> ../empty.txt` stays inside the workspace, not inside the restored directory.
    assert not (target / "up").is_symlink()
    assert any(w.startswith("up: symlink") for w in restored.warnings)


def hostile_manifest(backend: Backend, session: str, files: list[list[object]]) -> str:
    key = f"{ws.area(session)}manifests/{'9' * 20}.json.gz"
    body = {"version": 1, "session": session, "files": files, "links": [], "dirs": []}
    backend.write(key, gzip.compress(json.dumps(body).encode()))
    return key


@pytest.mark.parametrize("path", ["../escape", "a/../../escape", "/etc/cron.d/x", "a//b", "."])
def test_a_manifest_with_an_unsafe_path_writes_nothing(
    fs_backend: Backend, tmp_path: Path, path: str
) -> None:
    key = hostile_manifest(fs_backend, SESSION, [[path, 0o644, 1, 0, "0" * 64, []]])
    target = tmp_path / "a" / "workspace"
    with pytest.raises(ws.SnapshotError, match="unsafe path"):
        ws.restore_snapshot(target, fs_backend, key)
    assert not (tmp_path / "a" / "escape").exists()
    assert not target.exists() or list(target.iterdir()) == []


def test_a_restore_never_writes_through_a_planted_symlink(
    fs_backend: Backend, tmp_path: Path
) -> None:
    # A repository fetched earlier may carry `prior -> /somewhere`; a restore into `prior/...`
    # must not follow it.
    source = tmp_path / "work"
    (source / "dir").mkdir(parents=True)
    (source / "dir" / "f").write_text("payload")
    result = ws.take_snapshot(source, fs_backend, SESSION, max_bytes=MAX)
    outside = tmp_path / "outside"
    outside.mkdir()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "dir").symlink_to(outside)
    with pytest.raises(ws.SnapshotError, match="in the way"):
        ws.restore_snapshot(workspace, fs_backend, str(result.manifest_key))
    assert list(outside.iterdir()) == []


def test_a_file_whose_content_was_tampered_with_is_refused(
    fs_backend: Backend, tmp_path: Path
) -> None:
    source = tmp_path / "work"
    source.mkdir()
    (source / "f").write_text("original")
    result = ws.take_snapshot(source, fs_backend, SESSION, max_bytes=MAX)
    (pack,) = fs_backend.list_children(ws.area(SESSION) + "packs/")
    fs_backend.write(pack.key, b"tampered")
    with pytest.raises(ws.SnapshotError, match="sha256"):
        ws.restore_snapshot(tmp_path / "restored", fs_backend, str(result.manifest_key))


def test_deltas_chain_then_a_full_snapshot_collects(fs_backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "work"
    cache = tmp_path / "state" / "cache.json"
    source.mkdir()
    for i in range(20):
        (source / f"f{i}").write_bytes(os.urandom(5000))
    first = ws.take_snapshot(source, fs_backend, SESSION, max_bytes=MAX, cache_file=cache)
    keys = [first.manifest_key]
    for round_ in range(ws.MAX_DEPTH + 1):
        (source / f"f{round_}").write_bytes(f"round {round_}".encode())
        (source / f"f{19 - round_}").unlink(missing_ok=True)
        keys.append(
            ws.take_snapshot(
                source, fs_backend, SESSION, max_bytes=MAX, cache_file=cache
            ).manifest_key
        )
        # Every snapshot, delta or full, restores to exactly the tree.
        target = tmp_path / f"restored-{round_}"
        ws.restore_snapshot(target, fs_backend, str(keys[-1]))
        assert {p.name: p.read_bytes() for p in target.iterdir()} == {
            p.name: p.read_bytes() for p in source.iterdir()
        }
    deltas = [ws.load_manifest(fs_backend, str(k)).depth for k in keys[1:-1]]
    assert deltas == list(range(1, ws.MAX_DEPTH + 1))
    assert ws.load_manifest(fs_backend, str(keys[-1])).depth == 0
    # The full one kept itself and the previous snapshot's chain, and their packs only.
    manifests = fs_backend.list_children(ws.area(SESSION) + "manifests/")
    assert len(manifests) == ws.MAX_DEPTH + 2
