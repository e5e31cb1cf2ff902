"""Host hygiene of the local node: a clean stop restores the host, and a node whose harness was
killed with SIGKILL half-way (containers still running, sysctls changed) is cleaned up by the
next start instead of breaking it.

Stops the session's node for its duration and starts it again. Run by `make test` (marker
`cluster`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client

from tests.support.cluster import (
    REPO_ROOT,
    LocalCluster,
    pod_phase_in,
    restricted_pod,
    wait_for,
    wait_for_pod,
)
from tests.support.node import (
    CGROUP_ROOT,
    CONTAINERD_SOCKET,
    LIB_DIR,
    RUN_DIR,
    STATE_FILE,
    LocalNode,
    NodeState,
)

pytestmark = pytest.mark.cluster


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def node_processes(*tokens: bytes) -> list[int]:
    """Live processes whose command line holds one of `tokens` (default: anything of a local
    node: containerd and its shims by the socket, the kubelet by its config)."""
    tokens = tokens or (str(CONTAINERD_SOCKET).encode(), b"agentsession-node/")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(token in cmdline for token in tokens) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def sysctls(names: list[str]) -> dict[str, str]:
    return {name: Path(f"/proc/sys/{name}").read_text().strip() for name in names}


def assert_host_clean(original_sysctls: dict[str, str], created: list[str]) -> None:
    assert sysctls(list(original_sysctls)) == original_sysctls
    assert node_processes() == []
    assert not STATE_FILE.exists()
    assert not RUN_DIR.exists()
    assert not LIB_DIR.exists()
    leftovers = [p for p in created if Path(p).exists()]
    assert leftovers == [], "paths the node created outlived it"
    cgroups = [p for p in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_ROOT}")]
    assert cgroups == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(LIB_DIR) not in mounts
    assert str(RUN_DIR) not in mounts


def test_killed_harness_is_cleaned_up_by_the_next_start(
    local_cluster: LocalCluster,
    node: LocalNode,
    core: client.CoreV1Api,
    runner_image: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    assert node.state is not None
    originals = dict(node.state.sysctls)
    created = list(node.state.created_paths)
    assert sysctls(list(originals))["vm/overcommit_memory"] == "1", "the kubelet sets it"
    node.stop()
    try:
        assert_host_clean(originals, created)

        # A node in another process: the harness that gets killed.
        ready_file = tmp_path / "harness.out"
        with ready_file.open("w") as out:
            harness = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.node",
                    "run",
                    f"--kubeconfig={local_cluster.kubeconfig}",
                    f"--bin-dir={local_cluster.bin_dir}",
                    f"--client-ca={local_cluster.kubelet_client_ca}",
                    f"--logs-dir={tmp_path / 'logs'}",
                ],
                cwd=REPO_ROOT,
                stdout=out,
            )
        try:
            wait_for(
                lambda: harness.poll() is None and "ready" in ready_file.read_text(),
                timeout=240,
                what="the harness's node to be ready",
            )
            assert json.loads(ready_file.read_text())["ready"] == node.name
            core.create_namespaced_pod(
                namespace, restricted_pod("survivor", ["sleep", "600"], image=runner_image)
            )
            wait_for_pod(core, namespace, "survivor", pod_phase_in("Running"), what="to run")
            container = wait_for(
                lambda: node.container_pid(namespace, "survivor"),
                timeout=30,
                what="the container's PID",
            )
        finally:
            os.kill(harness.pid, signal.SIGKILL)
            harness.wait(timeout=30)
        # What a crash leaves: the daemons died with the harness, the container runs on (its
        # shim is nobody's child), the kubelet's sysctls and the state file stay.
        wait_for(
            lambda: not node_processes(b"kubelet-config.yaml", b"containerd.toml"),
            timeout=30,
            what="containerd and the kubelet to die with their harness",
        )
        assert node_processes(b"containerd-shim"), "the container's shim should outlive them"
        assert alive(container)
        assert STATE_FILE.exists()
        assert sysctls(["vm/overcommit_memory"]) == {"vm/overcommit_memory": "1"}
        left = NodeState.load()
        assert left is not None
        assert left.sysctls == originals
    finally:
        node.start()  # cleans up after the dead harness, then the session's node runs again
    assert not alive(container), "the next start did not stop the crashed run's container"
    assert node.state is not None
    assert node.state.sysctls == originals, "the crashed run's values were taken as originals"
    # The API still has the pod on this node; the new kubelet finds no container for it.
    lost = wait_for_pod(core, namespace, "survivor", pod_phase_in("Failed"), timeout=120)
    assert lost.status.container_statuses[0].state.terminated is not None
    core.create_namespaced_pod(
        namespace, restricted_pod("after", ["sh", "-c", "exit 0"], image=runner_image)
    )
    done = wait_for_pod(core, namespace, "after", pod_phase_in("Succeeded", "Failed"))
    assert done.status.phase == "Succeeded"
