"""A real node for the local control plane: containerd and a kubelet, running our real images.

Used by the test fixtures (tests/support/cluster_fixtures.py), `make cluster-up`/`cluster-down`
(tests/support/cluster.py) and `make demo`. Test tooling, never shipped. Needs root (the kubelet
and containerd manage cgroups, mounts and namespaces).

One node per machine at a time, at fixed places (docs/local-cluster.md lists them):
- containerd with its own config, state and socket under /run/agentsession-node, images in the
  project cache (kept across runs, so a warm start imports nothing), the CRI plugin with runc and
  a loopback-only CNI config. No pod network exists here: every pod runs with hostNetwork, and
  the loopback config only lets the runtime report its network ready so the node becomes Ready.
- the kubelet (built by hack/build-control-plane.sh) with its root, pod logs and cgroup root of
  its own, serving on 127.0.0.1 with x509 + webhook authentication (the API server presents a
  client certificate; `kubectl logs` and `exec` work through it).
- The pause image is built from Kubernetes' pause.c and both project images are imported into
  containerd (hack/images.py) before anything runs.

Host hygiene: before the kubelet starts, the sysctls it changes are recorded in a state file;
`stop()` stops every container, then every process by PID, unmounts and removes the fixed paths
and cgroups, and restores the sysctls. A run that died half-way (kill -9) leaves the state file
behind, and the next `start()` cleans up after it first.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_SCRIPT = REPO_ROOT / "hack" / "images.py"
PACKAGES_SCRIPT = REPO_ROOT / "hack" / "ensure-packages.sh"
NODE_PACKAGES = ("containerd", "runc", "containernetworking-plugins")
CNI_BIN_DIR = Path("/usr/lib/cni")

RUN_DIR = Path("/run/agentsession-node")
LIB_DIR = Path("/var/lib/agentsession-node")
STATE_FILE = RUN_DIR / "state.json"
CONTAINERD_SOCKET = RUN_DIR / "containerd.sock"
CGROUP_ROOT = "agentsession-node"
CGROUP_MOUNTS = Path("/sys/fs/cgroup")
CRI_NAMESPACE = "k8s.io"
NODE_NAME = "localhost"
"""Resolves to 127.0.0.1: the API server reaches the kubelet by this name (never the interface)."""

OUT_OF_SERVICE_TAINT = {
    "key": "node.kubernetes.io/out-of-service",
    "value": "nodeshutdown",
    "effect": "NoExecute",
}
# What the kubelet sets on start (pkg/kubelet/cm: setupKernelTunables); restored on stop.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Paths the kubelet and containerd write whatever their configured roots (removed on stop when
# they did not exist before the first start).
FIXED_HOST_PATHS = (
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
    Path("/run/containerd"),
)


class NodeError(RuntimeError):
    """The local node failed to set up, start or answer; the message says which part."""


def _ensure_packages() -> None:
    result = subprocess.run([str(PACKAGES_SCRIPT), *NODE_PACKAGES], check=False)
    if result.returncode != 0:
        raise NodeError(f"the local node needs the Debian packages {', '.join(NODE_PACKAGES)}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if _alive(pid)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def _kill(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _processes_matching(token: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if token in _cmdline(int(entry.name)) and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _mounts_under(roots: list[Path]) -> list[Path]:
    """Mount points at or below any of `roots`, deepest first."""
    points: list[Path] = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            point = Path(line.split()[4].encode().decode("unicode_escape"))
            if any(point == root or root in point.parents for root in roots):
                points.append(point)
    return sorted(set(points), key=lambda p: len(p.parts), reverse=True)


def _unmount_all(roots: list[Path]) -> None:
    for _ in range(3):  # stacked mounts: a second pass catches what the first uncovered
        points = _mounts_under(roots)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)


def _cgroup_dirs() -> list[Path]:
    """Our cgroup root in every mounted hierarchy (v1 controllers and the unified one)."""
    dirs = []
    if CGROUP_MOUNTS.is_dir():
        for hierarchy in sorted(CGROUP_MOUNTS.iterdir()):
            if hierarchy.is_dir() and not hierarchy.is_symlink():
                dirs.append(hierarchy / CGROUP_ROOT)
    return dirs


def _remove_cgroups() -> None:
    """Kill whatever still runs in our cgroups, then remove them bottom-up."""
    for root in _cgroup_dirs():
        if not root.is_dir():
            continue
        tree = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts))
        for cgroup in [root, *tree]:
            with contextlib.suppress(OSError):
                pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
                _kill(pids, signal.SIGKILL)
        for cgroup in [*reversed(tree), root]:
            deadline = time.monotonic() + 5
            while cgroup.exists():
                try:
                    cgroup.rmdir()
                except OSError:
                    if time.monotonic() >= deadline:
                        raise NodeError(
                            f"cannot remove cgroup {cgroup} (processes left?)"
                        ) from None
                    time.sleep(0.05)


def _create_cgroup_root() -> None:
    for root in _cgroup_dirs():
        root.mkdir(exist_ok=True)
        # A v1 cpuset child starts with no CPUs and no memory nodes: inherit the parent's.
        for name in ("cpuset.cpus", "cpuset.mems"):
            parent = root.parent / name
            if parent.exists() and not (root / name).read_text().strip():
                (root / name).write_text(parent.read_text())


def _read_sysctls() -> dict[str, str]:
    return {name: Path(f"/proc/sys/{name}").read_text().strip() for name in KUBELET_SYSCTLS}


def _restore_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/{name}").write_text(value)


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


@dataclass
class NodeState:
    """What a running node changed on the host: enough for any later process to undo it."""

    sysctls: dict[str, str]
    created_paths: list[str]
    pids: dict[str, int] = field(default_factory=dict)
    started_at: str = ""

    def save(self) -> None:
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        STATE_FILE.write_text(json.dumps(self.__dict__, indent=2) + "\n")

    @classmethod
    def load(cls) -> NodeState | None:
        try:
            return cls(**json.loads(STATE_FILE.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def running_node_pids() -> dict[str, int]:
    """containerd/kubelet processes of a node started earlier that still run (by the state file)."""
    state = NodeState.load()
    if state is None:
        return {}
    return {
        name: pid
        for name, pid in state.pids.items()
        if _alive(pid) and name.encode() in _cmdline(pid)
    }


def clean_host(*, quiet: bool = False) -> bool:
    """Undo everything a node (running or dead) did to this machine; True if there was a node.

    Safe to call at any time: with no state file and nothing left behind it changes nothing.
    """
    state = NodeState.load()
    leftovers = _processes_matching(str(CONTAINERD_SOCKET).encode())
    if state is None and not leftovers and not RUN_DIR.exists():
        return False
    if not quiet:
        print("Cleaning up the local node's processes, mounts and cgroups", file=sys.stderr)
    # The kubelet first (it would restart containers), then containerd, then its shims and
    # whatever they still run (a crashed run leaves shims and containers behind).
    for name in ("kubelet", "containerd"):
        pid = (state.pids if state else {}).get(name)
        if pid and _alive(pid) and name.encode() in _cmdline(pid):
            _kill([pid], signal.SIGTERM)
            if _wait_gone([pid], 10):
                _kill([pid], signal.SIGKILL)
                _wait_gone([pid], 5)
    _kill(_processes_matching(b"agentsession-node/kubelet-config.yaml"), signal.SIGKILL)
    shims = _processes_matching(str(CONTAINERD_SOCKET).encode())
    _kill(shims, signal.SIGKILL)
    _wait_gone(shims, 5)
    _remove_cgroups()
    _unmount_all([LIB_DIR, RUN_DIR, Path("/run/containerd")])
    shutil.rmtree(LIB_DIR, ignore_errors=True)
    for link in Path("/var/log/containers").glob("*.log"):
        with contextlib.suppress(OSError):
            if str(LIB_DIR) in os.readlink(link):
                link.unlink()
    _remove_stale_shim_sockets()
    if state is not None:
        _restore_sysctls(state.sysctls)
        for path in map(Path, state.created_paths):
            # A containerd of the host's own may have started using /run/containerd meanwhile.
            in_use = path == Path("/run/containerd") and any(Path("/run/containerd/s").glob("*"))
            if path.is_dir() and not in_use:
                shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    return True


def _remove_stale_shim_sockets() -> None:
    """containerd 1.6 puts shim sockets in /run/containerd/s whatever its state dir: remove the
    ones nothing listens on any more (a host containerd's live sockets are left alone)."""
    sockets_dir = Path("/run/containerd/s")
    if not sockets_dir.is_dir():
        return
    for path in sockets_dir.iterdir():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink(missing_ok=True)


class LocalNode:
    """containerd + kubelet registered as Node `localhost` with the given control plane.

    `start()` cleans up after any earlier node, starts containerd, imports the images, starts the
    kubelet and waits until the Node is Ready. `stop()` undoes everything (see the module doc).
    With `detach=True` (make cluster-up) the processes outlive this object; `clean_host()` stops
    them later.
    """

    def __init__(
        self,
        kubeconfig: Path,
        *,
        bin_dir: Path,
        client_ca_file: Path,
        logs_dir: Path,
        detach: bool = False,
        cache_dir: Path | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.bin_dir = bin_dir
        self.client_ca_file = client_ca_file
        self.logs_dir = logs_dir
        self.detach = detach
        self.cache_dir = cache_dir or Path(
            os.environ.get("AGENTSESSION_CACHE", Path.home() / ".cache" / "agentsession-operator")
        )
        self.name = NODE_NAME
        self.containerd_root = self.cache_dir / "containerd"
        self.kubelet_root = LIB_DIR / "kubelet"
        self.pod_logs_dir = LIB_DIR / "pod-logs"
        self.kubelet_port = 0
        self.healthz_port = 0
        self.images: dict[str, str] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.state: NodeState | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> LocalNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 300.0) -> None:
        if os.geteuid() != 0:
            raise NodeError(
                "the local node (containerd, kubelet) needs root; use `make kind-e2e` with Docker "
                "otherwise"
            )
        running = running_node_pids()
        if running and not self.processes:
            raise NodeError(
                f"a local node already runs on this machine ({running}); stop it first "
                "(`make cluster-down` or `make demo-down`)"
            )
        _ensure_packages()
        clean_host()
        deadline = time.monotonic() + timeout
        created = [str(p) for p in FIXED_HOST_PATHS if not p.exists()]
        self.state = NodeState(
            sysctls=_read_sysctls(),
            created_paths=created,
            started_at=dt.datetime.now(dt.UTC).isoformat(),
        )
        self.state.save()
        try:
            for path in (RUN_DIR, LIB_DIR, self.kubelet_root, self.pod_logs_dir, self.logs_dir):
                path.mkdir(parents=True, exist_ok=True)
            self._write_cni_config()
            self.start_containerd(deadline)
            self._import_images()
            _create_cgroup_root()
            self.start_kubelet()
            self.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every container and process of this node and undo its host changes."""
        kubelet = self.processes.pop("kubelet", None)
        if kubelet is not None:
            self._stop_process(kubelet)
        if "containerd" in self.processes:
            with contextlib.suppress(NodeError, subprocess.SubprocessError):
                self._remove_all_containers()
            self._stop_process(self.processes.pop("containerd"))
        self.processes.clear()
        clean_host(quiet=True)
        self.state = None

    def _stop_process(self, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs_dir / f"{name}.log", "ab")  # noqa: SIM115 (the child owns it)
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.detach,
                preexec_fn=None if self.detach else _die_with_parent,
            )
        finally:
            log.close()
        self.processes[name] = process
        assert self.state is not None
        self.state.pids[name] = process.pid
        self.state.save()
        return process

    def _check_alive(self, name: str) -> None:
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            code = None if process is None else process.returncode
            raise NodeError(f"{name} exited (code {code}); log:\n{self.log_tail(name)}")

    # ---- containerd ----------------------------------------------------------------------------

    def _write_cni_config(self) -> None:
        conf_dir = RUN_DIR / "cni"
        conf_dir.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "agentsession-loopback",
            "plugins": [{"type": "loopback"}],
        }
        (conf_dir / "10-loopback.conflist").write_text(json.dumps(conflist, indent=2))

    def containerd_config(self) -> str:
        sandbox = self.images.get("pause", "localhost/agentsession-pause:3.10.1")
        return f"""# Written by tests/support/node.py: the local node's own containerd.
version = 2
root = "{self.containerd_root}"
state = "{RUN_DIR / "containerd"}"
disabled_plugins = [
  "io.containerd.internal.v1.tracing",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[ttrpc]
  address = "{CONTAINERD_SOCKET}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{RUN_DIR / "opt"}"

# containerd 1.6's task service needs the v1 runtime loaded, unused as it is.
[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "{RUN_DIR / "runc-v1"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{RUN_DIR / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{RUN_DIR / "cni"}"
"""

    def start_containerd(self, deadline: float) -> None:
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        config = RUN_DIR / "containerd.toml"
        config.write_text(self.containerd_config())
        self._spawn("containerd", ["containerd", "--config", str(config)])
        self._wait(
            lambda: self._check_alive("containerd") or self._ctr_ok(),
            deadline,
            "containerd to answer on its socket",
        )

    def _ctr_ok(self) -> bool:
        result = subprocess.run(
            ["ctr", "--address", str(CONTAINERD_SOCKET), "version"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0

    def ctr(self, *args: str, timeout: float = 60.0) -> str:
        """Run `ctr` against this node's containerd (namespace k8s.io); returns stdout."""
        result = subprocess.run(
            ["ctr", "--address", str(CONTAINERD_SOCKET), "--namespace", CRI_NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def _remove_all_containers(self) -> None:
        """Kill and delete every container (sandboxes too) so containerd's metadata is empty."""
        for line in self.ctr("tasks", "list").splitlines()[1:]:
            task = line.split()[0]
            with contextlib.suppress(NodeError):
                self.ctr("tasks", "kill", "--signal", "SIGKILL", task)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tasks = [line.split() for line in self.ctr("tasks", "list").splitlines()[1:]]
            for fields in tasks:
                if len(fields) >= 3 and fields[2] == "STOPPED":
                    with contextlib.suppress(NodeError):
                        self.ctr("tasks", "delete", fields[0])
            if not tasks:
                break
            time.sleep(0.1)
        for container in self.ctr("containers", "list", "--quiet").split():
            with contextlib.suppress(NodeError):
                self.ctr("containers", "delete", container)

    def tag_image(self, source: str, target: str) -> None:
        """Give an image containerd has another name (as if pulled from elsewhere)."""
        with contextlib.suppress(NodeError):
            self.ctr("images", "remove", target)
        self.ctr("images", "tag", source, target)

    def _images_command(self, *args: str) -> dict[str, str]:
        result = subprocess.run(
            [sys.executable, str(IMAGES_SCRIPT), *args, "--address", str(CONTAINERD_SOCKET)],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise NodeError(f"hack/images.py {args[0]} failed (exit {result.returncode})")
        loaded: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
        return loaded

    def _import_images(self) -> None:
        """The pause image (from the pause binary) and both project images, into containerd."""
        version = (self.bin_dir / "pause.version").read_text().strip()
        pause = self._images_command(
            "pause", "--binary", str(self.bin_dir / "pause"), "--version", version
        )
        built = self._images_command("import")
        self.images = {
            "pause": str(pause["pause"]),
            "runner": str(built["agentsession-runner"]),
            "operator": str(built["agentsession-operator"]),
        }
        # containerd read sandbox_image at start: it must name the image just imported.
        if self.images["pause"] not in (RUN_DIR / "containerd.toml").read_text():
            raise NodeError(f"containerd was configured with another pause image than {pause}")

    # ---- kubelet -------------------------------------------------------------------------------

    def kubelet_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.client_ca_file)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",
            # This machine mounts cgroup v1 controllers (hybrid layout) and has no swap setup.
            "failCgroupV1": False,
            "failSwapOn": False,
            "makeIPTablesUtilChains": False,
            "podLogsDir": str(self.pod_logs_dir),
            "resolvConf": "/etc/resolv.conf",
            # Short heartbeats so node loss shows within seconds (the controller manager's
            # node-monitor grace period matches).
            "nodeStatusUpdateFrequency": "2s",
            "nodeStatusReportFrequency": "10s",
            "nodeLeaseDurationSeconds": 8,
            "syncFrequency": "10s",
            "maxPods": 500,
            "podPidsLimit": -1,
            "serializeImagePulls": False,
            "kubeAPIQPS": 100,
            "kubeAPIBurst": 200,
            # A test machine's disk fills up for other reasons: never evict or delete images.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "shutdownGracePeriod": "0s",
        }

    def start_kubelet(self) -> None:
        """Start (or restart) the kubelet; the Node keeps its name, so pods stay bound to it."""
        if not self.kubelet_port:
            self.kubelet_port, self.healthz_port = _free_port(), _free_port()
        config = RUN_DIR / "kubelet-config.yaml"
        config.write_text(yaml.safe_dump(self.kubelet_config(), sort_keys=False))
        self._spawn(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.kubelet_root / 'pki'}",
                f"--hostname-override={self.name}",
                # cAdvisor's container stats read containerd at its default socket otherwise.
                f"--containerd={CONTAINERD_SOCKET}",
                "--v=1",
            ],
        )

    def kill_kubelet(self) -> None:
        """SIGKILL the kubelet (node loss: the node stops reporting; its containers run on)."""
        process = self.processes.pop("kubelet")
        process.kill()
        process.wait(timeout=10)

    def restart_kubelet(self, timeout: float = 60.0) -> None:
        """Start the kubelet again after `kill_kubelet()` and wait for the Node to be Ready."""
        self.start_kubelet()
        self.wait_ready(timeout=timeout)

    def set_out_of_service(self, out: bool) -> None:
        """Add or remove the `node.kubernetes.io/out-of-service` taint, as an administrator does
        for a node that is down for good (non-graceful node shutdown): the taint-eviction
        controller then evicts its pods and the pod GC force-deletes them. A one-node cluster
        needs it: with every node NotReady the node-lifecycle controller stops evicting (it
        assumes the control plane is cut off)."""
        from kubernetes import client, config

        api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        core = client.CoreV1Api(api_client)
        try:
            taints = [
                t.to_dict()
                for t in core.read_node(self.name).spec.taints or []
                if t.key != OUT_OF_SERVICE_TAINT["key"]
            ]
            if out:
                taints.append(OUT_OF_SERVICE_TAINT)
            core.patch_node(self.name, {"spec": {"taints": taints}})
        finally:
            api_client.close()

    def wait_ready(self, timeout: float = 120.0) -> None:
        from kubernetes import client, config

        api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        core = client.CoreV1Api(api_client)

        def ready() -> bool:
            self._check_alive("kubelet")
            node = core.read_node(self.name)
            return any(
                c.type == "Ready" and c.status == "True" for c in node.status.conditions or []
            )

        try:
            self._wait(ready, time.monotonic() + timeout, f"Node {self.name} to be Ready")
        finally:
            api_client.close()

    # ---- what tests look at --------------------------------------------------------------------

    def _pod(self, namespace: str, name: str) -> Any:
        from kubernetes import client, config

        api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        try:
            return client.CoreV1Api(api_client).read_namespaced_pod(name, namespace)
        finally:
            api_client.close()

    def volume_path(self, namespace: str, pod: str, volume: str) -> Path:
        """An emptyDir volume of a pod on this node, as the host sees it (root may write it)."""
        uid = self._pod(namespace, pod).metadata.uid
        return self.kubelet_root / "pods" / uid / "volumes" / "kubernetes.io~empty-dir" / volume

    def container_pid(self, namespace: str, pod: str, container: str | None = None) -> int | None:
        """The host PID of a running container's main process (the pod's first container by
        default; a native sidecar such as `gateway` by name); None unless it runs right now."""
        found = self._pod(namespace, pod).status
        statuses = [*(found.container_statuses or []), *(found.init_container_statuses or [])]
        status = next((s for s in statuses if container in (None, s.name)), None)
        if status is None or not status.container_id or status.state.running is None:
            return None
        container_id = status.container_id.removeprefix("containerd://")
        for line in self.ctr("tasks", "list").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == container_id and fields[2] == "RUNNING":
                return int(fields[1])
        return None

    def logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        """What a pod's container wrote, from the kubelet's CRI log files (every restart, in
        order; kept while the pod exists)."""
        found = self._pod(namespace, pod)
        name = container or found.spec.containers[0].name
        directory = self.pod_logs_dir / f"{namespace}_{pod}_{found.metadata.uid}" / name
        files = sorted(
            directory.glob("*.log"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0
        )
        lines: list[str] = []
        partial = ""
        for path in files:
            for raw in path.read_text(errors="replace").splitlines():
                parts = raw.split(" ", 3)  # <time> <stream> <P|F> <text>
                if len(parts) < 4:
                    continue
                partial += parts[3]
                if parts[2] == "F":
                    lines.append(partial)
                    partial = ""
        return "\n".join(lines + ([partial] if partial else []))

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait(self, condition: Callable[[], object], deadline: float, what: str) -> None:
        last: Exception | None = None
        while True:
            try:
                if condition():
                    return
                last = None
            except NodeError:
                raise
            except Exception as error:
                last = error
            if time.monotonic() >= deadline:
                raise NodeError(f"timed out waiting for {what}" + (f" ({last!r})" if last else ""))
            time.sleep(0.2)


def main() -> int:
    """`python -m tests.support.node run|clean`: a node in the foreground for a running control
    plane (until SIGTERM or SIGINT), or the clean-up after a node that died."""
    import argparse

    parser = argparse.ArgumentParser(description="The local node (containerd + kubelet).")
    parser.add_argument("command", choices=["run", "clean"])
    parser.add_argument("--kubeconfig", type=Path)
    parser.add_argument("--bin-dir", type=Path)
    parser.add_argument("--client-ca", type=Path, help="CA of the API server's client cert")
    parser.add_argument("--logs-dir", type=Path)
    args = parser.parse_args()
    if args.command == "clean":
        clean_host()
        return 0
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    with LocalNode(
        args.kubeconfig,
        bin_dir=args.bin_dir,
        client_ca_file=args.client_ca,
        logs_dir=args.logs_dir,
    ) as node:
        print(json.dumps({"ready": node.name, "images": node.images}), flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    return 0


if __name__ == "__main__":
    sys.exit(main())
