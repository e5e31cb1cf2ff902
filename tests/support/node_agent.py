"""Test/demo node agent: plays scheduler and kubelet for one Node, running pods as local processes.

Used in-process by the tests/cluster fixtures (`NodeAgent`) and as a background process by
`make cluster-up` (`python -m tests.support.node_agent --kubeconfig ... --node-name ...`).
This is test tooling, never shipped.

What it does, kubelet-style: registers a Ready Node (and renews its Lease), binds unscheduled pods
(`schedulerName: default-scheduler`, empty `spec.nodeName`) to it through the pods/binding
subresource, and runs the single container of every pod bound to it as a local process:
`command` + `args` with `$(VAR)` expansion, env from literals, `secretKeyRef`, `configMapKeyRef`,
`fieldRef` and `envFrom`, `workingDir`, `runAsUser`/`runAsGroup`/`fsGroup` (via `setpriv`). Each
pod runs in a private mount namespace (`unshare --mount`) in which its emptyDir, downwardAPI,
configMap, secret and projected (service-account token) volumes and its termination-message file
are bind-mounted from per-pod directories at their real paths, so concurrent pods never share a
directory and nothing is rewritten. Pod status goes Pending -> Running -> Succeeded/Failed with
container states, exit codes, the termination message (4096 bytes at most) and
`activeDeadlineSeconds` (phase Failed, reason DeadlineExceeded). Deleting a pod sends SIGTERM to
the container's main process (as a runtime signals PID 1), waits the pod's grace period (capped)
and SIGKILLs everything the pod started, then finalizes the pod. Restart policies
OnFailure/Always restart the process with a short back-off.

What it does not do: no images are pulled (the command must exist on this machine; the agent puts
the repository's `.venv/bin`, or the directories you pass, first on PATH, so the `agent-runner`
console script resolves), no network isolation (pods share the host network, podIP is 127.0.0.1),
no cgroups (resource requests/limits are not enforced), no probes, no `kubectl logs`/`exec` (read
logs with `NodeAgent.logs()` or from the state directory), one container per pod, no init or
sidecar containers, volume contents are written once at start. Mount points that do not exist yet
are created (empty) on the host file system.

Fault injection: the pod annotation `node-agent.test/oom-after-seconds: "<n>"` or
`NodeAgent.oom_kill()` SIGKILLs the process and reports `OOMKilled` with exit code 137;
`NodeAgent.simulate_node_loss()` stops heartbeats, kills every pod process without reporting,
marks the Node NotReady/unreachable and, playing the node lifecycle controller and pod GC, sets
each of its pods to phase Failed with reason NodeLost and then deletes them (see its docstring).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("node_agent")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PATH_PREPEND = (str(REPO_ROOT / ".venv-runner" / "bin"),)
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_STATE_ROOT = Path("/var/lib/node-agent")
OOM_ANNOTATION = "node-agent.test/oom-after-seconds"
DEFAULT_SCHEDULER = "default-scheduler"
MESSAGE_LIMIT = 4096
FALLBACK_LOG_LIMIT = 2048
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
MOUNT = shutil.which("mount") or "/usr/bin/mount"

Json = dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _is_terminal(pod: Json) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def _pod_key(pod: Json) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


class PodSetupError(Exception):
    """The pod cannot start yet (missing Secret, bad spec); reported as a waiting reason."""

    def __init__(self, reason: str, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.permanent = permanent


@dataclass(frozen=True)
class Mount:
    """One bind mount inside the pod's mount namespace."""

    source: Path
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class Termination:
    """How one run of the container ended, as the kubelet reports it."""

    exit_code: int
    reason: str
    message: str
    started_at: str
    finished_at: str

    def state(self) -> Json:
        state: Json = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }
        if self.message:
            state["message"] = self.message
        return state


def expand_vars(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, `$$` escapes, rest stays."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, value)


def _field_value(pod: Json, field_path: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.hostIP": "127.0.0.1",
        "status.podIP": "127.0.0.1",
    }
    if field_path in simple:
        return str(simple[field_path])
    match = re.fullmatch(r"metadata\.(labels|annotations)(?:\['(.+)'\])?", field_path)
    if match:
        values: dict[str, str] = meta.get(match.group(1)) or {}
        if match.group(2) is not None:
            return values.get(match.group(2), "")
        return "".join(f'{key}="{values[key]}"\n' for key in sorted(values))
    raise PodSetupError("CreateContainerConfigError", f"unsupported fieldPath {field_path!r}")


class PodWorker(threading.Thread):
    """Runs one pod bound to this node, from Pending to a terminal phase, in its own thread."""

    def __init__(self, agent: NodeAgent, pod: Json) -> None:
        super().__init__(name=f"pod-{_pod_key(pod)}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.uid: str = pod["metadata"]["uid"]
        self.namespace: str = pod["metadata"]["namespace"]
        self.name: str = pod["metadata"]["name"]
        self.dir: Path = agent.state_dir / "pods" / self.uid
        self.log_path = agent.state_dir / "logs" / f"{self.namespace}_{self.name}_{self.uid}.log"
        self.finished = threading.Event()
        self.deleted_after_finish = False
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._mount_ns: int | None = None
        """An open fd on the pod's mount namespace: every process in it belongs to the pod."""
        self._stop_reason: str | None = None  # deleted, gone, deadline, node-lost, shutdown
        self._oom_requested = False
        self._deadline_hit = False
        self._last_waiting: tuple[str, str, int] | None = None
        self._previous: Termination | None = None
        self._start_time = pod.get("status", {}).get("startTime") or _now()
        container = pod["spec"]["containers"][0]
        self.container_name: str = container["name"]
        self.restart_count = 0
        for status in pod.get("status", {}).get("containerStatuses") or []:
            if status.get("name") == self.container_name:
                self.restart_count = int(status.get("restartCount", 0))

    # ---- requests from other threads -------------------------------------------------------

    def update(self, pod: Json) -> None:
        """A newer version of the pod arrived on the watch."""
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.request_stop("deleted")

    def request_stop(self, reason: str) -> None:
        """Stop the pod's process (deleted, gone, node-lost, shutdown); first reason wins."""
        with self._lock:
            if self._stop_reason is None or reason in ("gone", "node-lost", "shutdown"):
                self._stop_reason = reason
        self._wake.set()

    def request_oom(self) -> None:
        """Simulate the kernel's OOM killer on the pod's process."""
        self._oom_requested = True
        self._wake.set()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # ---- the pod's life ----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("Pod worker for %s/%s crashed", self.namespace, self.name)
        finally:
            self._kill_group(signal.SIGKILL)
            self._release_mount_namespace()
            self.finished.set()

    def _reporting(self) -> bool:
        return self._stop_reason not in ("gone", "node-lost", "shutdown")

    def _run(self) -> None:
        spec = self.pod["spec"]
        if len(spec["containers"]) != 1 or spec.get("initContainers"):
            self._finish_unsupported(
                "the node agent runs exactly one container and no init containers"
            )
            return
        policy = spec.get("restartPolicy", "Always")
        last = self._lost_container()
        if last is not None:
            if not self._should_restart(policy, last):
                self._finalize(last)
                return
            self.restart_count += 1
        while not self._stop_reason and not self._check_deadline():
            try:
                argv, env, mounts, user = self._prepare()
            except PodSetupError as error:
                if error.permanent:
                    self._finish_unsupported(error.message)
                    return
                self._report_waiting(error.reason, error.message, last)
                self._wait(2.0)
                continue
            self._previous = last
            last = self._run_once(argv, env, mounts, user, last)
            if self._stop_reason or self._deadline_hit or not self._should_restart(policy, last):
                break
            self.restart_count += 1
            self._back_off(last)
        self._finalize(last)

    def _lost_container(self) -> Termination | None:
        """A pod the agent ran before a restart: its process is gone, report it like a kubelet."""
        for status in self.pod.get("status", {}).get("containerStatuses") or []:
            running = (status.get("state") or {}).get("running")
            if status.get("name") == self.container_name and running:
                log.warning("Found pod %s/%s running without a process", self.namespace, self.name)
                return Termination(
                    exit_code=137,
                    reason="ContainerStatusUnknown",
                    message="The container could not be located when the pod was terminated",
                    started_at=running.get("startedAt", self._start_time),
                    finished_at=_now(),
                )
        return None

    @staticmethod
    def _should_restart(policy: str, termination: Termination) -> bool:
        return policy == "Always" or (policy == "OnFailure" and termination.exit_code != 0)

    def _back_off(self, last: Termination) -> None:
        delay = min(self.agent.restart_backoff_cap, 2.0 ** (self.restart_count - 1))
        message = f"back-off {delay:.0f}s restarting failed container"
        self._report_waiting("CrashLoopBackOff", message, last)
        self._wait(delay)

    def _wait(self, seconds: float) -> None:
        deadline = self._deadline_at()
        if deadline is not None:
            seconds = max(0.0, min(seconds, deadline - time.time()))
        self._wake.wait(seconds)
        self._wake.clear()

    def _deadline_at(self) -> float | None:
        seconds = self.pod["spec"].get("activeDeadlineSeconds")
        if seconds is None:
            return None
        return _parse_time(self._start_time) + int(seconds)

    def _check_deadline(self) -> bool:
        """Whether activeDeadlineSeconds has passed; remembers it for the final status."""
        deadline = self._deadline_at()
        if deadline is not None and time.time() >= deadline:
            self._deadline_hit = True
        return self._deadline_hit

    def _security(self) -> tuple[int | None, int | None, list[int], bool]:
        spec = self.pod["spec"]
        pod_sc = spec.get("securityContext") or {}
        container_sc = spec["containers"][0].get("securityContext") or {}

        def pick(key: str) -> Any:
            return container_sc.get(key, pod_sc.get(key))

        user = pick("runAsUser")
        group = pick("runAsGroup")
        groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
        if pod_sc.get("fsGroup") is not None:
            groups.append(int(pod_sc["fsGroup"]))
        if pick("runAsNonRoot"):
            if user is None:
                raise PodSetupError(
                    "CreateContainerConfigError",
                    "container has runAsNonRoot and image will run as root (the node agent has "
                    "no image user: set runAsUser)",
                )
            if int(user) == 0:
                raise PodSetupError(
                    "CreateContainerConfigError",
                    "container's runAsUser breaks non-root policy",
                )
        no_new_privs = container_sc.get("allowPrivilegeEscalation") is False
        return (
            None if user is None else int(user),
            None if group is None else int(group),
            groups,
            no_new_privs,
        )

    def _prepare(self) -> tuple[list[str], dict[str, str], list[Mount], tuple[Any, ...]]:
        container = self.pod["spec"]["containers"][0]
        user, group, groups, no_new_privs = self._security()
        env = self.agent._resolve_env(self.pod, container)
        argv = [expand_vars(a, env) for a in (container.get("command") or [])]
        argv += [expand_vars(a, env) for a in (container.get("args") or [])]
        if not container.get("command"):
            raise PodSetupError(
                "CreateContainerConfigError",
                "the node agent pulls no images: the container needs an explicit command",
                permanent=True,
            )
        mounts = self.agent._prepare_volumes(self, container, user, group, groups)
        return argv, env, mounts, (user, group, groups, no_new_privs)

    def _run_once(
        self,
        argv: list[str],
        env: dict[str, str],
        mounts: list[Mount],
        user: tuple[Any, ...],
        last: Termination | None,
    ) -> Termination:
        container = self.pod["spec"]["containers"][0]
        uid, gid, groups, no_new_privs = user
        message_path = container.get("terminationMessagePath") or "/dev/termination-log"
        message_file = self.dir / "termination-log"
        message_file.write_bytes(b"")
        message_file.chmod(0o666)
        all_mounts = [*mounts, Mount(message_file, message_path)]
        started_at = _now()
        if "/" not in argv[0] and shutil.which(argv[0], path=env.get("PATH")) is None:
            return Termination(
                exit_code=128,
                reason="StartError",
                message=f'exec: "{argv[0]}": executable file not found in $PATH',
                started_at=started_at,
                finished_at=_now(),
            )
        script = _launch_script(
            all_mounts, container.get("workingDir"), uid, gid, groups, no_new_privs
        )
        targets = [m.target for m in all_mounts]
        if container.get("workingDir"):
            targets.append(container["workingDir"])
        claimed = self.agent._claim_mount_points(targets)
        try:
            return self._run_process(argv, env, script, message_file, started_at, last)
        finally:
            self.agent._release_mount_points(claimed)

    def _run_process(
        self,
        argv: list[str],
        env: dict[str, str],
        script: str,
        message_file: Path,
        started_at: str,
        last: Termination | None,
    ) -> Termination:
        container = self.pod["spec"]["containers"][0]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"--- {started_at} started {shlex.join(argv)}\n".encode())
            log_file.flush()
            with self._lock:
                if self._stop_reason:
                    return Termination(137, "Error", "", started_at, _now())
                self._proc = subprocess.Popen(
                    [
                        UNSHARE,
                        "--mount",
                        "--propagation",
                        "private",
                        "/bin/sh",
                        "-c",
                        script,
                        "pod",
                        *argv,
                    ],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd="/",
                    start_new_session=True,
                )
        proc = self._proc
        self._hold_mount_namespace(proc)
        log.info(
            "Started pod %s/%s as pid %d: %s", self.namespace, self.name, proc.pid, shlex.join(argv)
        )
        self.agent._event(self.pod, "Started", f"Started container {self.container_name}")
        waiter = threading.Thread(target=self._wait_process, args=(proc,), daemon=True)
        waiter.start()
        self._report_running(started_at, last)
        oom_at = self._oom_at()
        kill_reason: str | None = None
        terminate_sent_at: float | None = None
        while proc.poll() is None:
            now = time.time()
            if kill_reason is None and (
                self._oom_requested or (oom_at is not None and now >= oom_at)
            ):
                kill_reason = "OOMKilled"
                oom_at = None
                self.agent._event(self.pod, "OOMKilling", "Simulated OOM kill", "Warning")
                self._kill_group(signal.SIGKILL)
            elif self._stop_reason in ("shutdown", "node-lost"):
                self._kill_group(signal.SIGKILL)
            elif self._stop_reason or self._check_deadline():
                if terminate_sent_at is None:
                    if not self._stop_reason:
                        self.agent._event(self.pod, "DeadlineExceeded", DEADLINE_MESSAGE, "Warning")
                    self.agent._event(
                        self.pod, "Killing", f"Stopping container {self.container_name}"
                    )
                    terminate_sent_at = now
                    self._signal_main(signal.SIGTERM)
                elif now - terminate_sent_at >= self._grace_seconds():
                    self._kill_group(signal.SIGKILL)
            timeouts = [1.0]
            if terminate_sent_at is not None:
                timeouts.append(terminate_sent_at + self._grace_seconds() - now)
            if oom_at is not None:
                timeouts.append(oom_at - now)
            deadline = self._deadline_at()
            if deadline is not None and terminate_sent_at is None:
                timeouts.append(deadline - now)
            self._wake.wait(max(0.05, min(timeouts)))
            self._wake.clear()
        self._kill_group(signal.SIGKILL)  # like a container: the rest of its processes die too
        self._release_mount_namespace()
        finished_at = _now()
        code = proc.returncode
        exit_code = 128 - code if code < 0 else code
        if kill_reason == "OOMKilled":
            exit_code = 137
        reason = kill_reason or ("Completed" if exit_code == 0 else "Error")
        message = message_file.read_bytes()[:MESSAGE_LIMIT].decode("utf-8", "replace")
        policy = container.get("terminationMessagePolicy", "File")
        if not message and exit_code != 0 and policy == "FallbackToLogsOnError":
            message = self._log_tail()
        log.info("Pod %s/%s exited with %d (%s)", self.namespace, self.name, exit_code, reason)
        return Termination(exit_code, reason, message, started_at, finished_at)

    def _wait_process(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        self._wake.set()

    def _oom_at(self) -> float | None:
        value = (self.pod["metadata"].get("annotations") or {}).get(OOM_ANNOTATION)
        if value is None:
            return None
        return time.time() + float(value)

    def _grace_seconds(self) -> float:
        meta_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        grace = (
            meta_grace
            if meta_grace is not None
            else self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        )
        return float(min(self.agent.max_grace_seconds, max(0, int(grace))))

    def _signal_main(self, sig: signal.Signals) -> None:
        """Signal the container's main process only, as a container runtime signals PID 1."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, sig)

    def _kill_group(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            self._kill_mount_namespace()

    def _hold_mount_namespace(self, proc: subprocess.Popen[bytes]) -> None:
        """Keep an fd on the pod's private mount namespace once `unshare` has entered it.

        Processes that start their own session (the claude CLI runs its Bash tool so) escape
        the process group; the namespace still names them, like a container's cgroup would.
        Holding the fd keeps the namespace (and its inode number) from being reused by another pod.
        """
        own = os.stat("/proc/self/ns/mnt").st_ino
        deadline = time.monotonic() + 5.0
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                fd = os.open(f"/proc/{proc.pid}/ns/mnt", os.O_RDONLY)
            except OSError:
                return
            if os.fstat(fd).st_ino != own:
                self._mount_ns = fd
                return
            os.close(fd)
            time.sleep(0.005)  # unshare enters the namespace within milliseconds of starting

    def _kill_mount_namespace(self) -> None:
        """SIGKILL every process in the pod's mount namespace (those that left its group too)."""
        fd = self._mount_ns
        if fd is None:
            return
        try:
            target = os.fstat(fd)
        except OSError:
            return
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                ns = os.stat(f"/proc/{entry.name}/ns/mnt")
            except OSError:
                continue
            if (ns.st_ino, ns.st_dev) == (target.st_ino, target.st_dev):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry.name), signal.SIGKILL)

    def _release_mount_namespace(self) -> None:
        fd, self._mount_ns = self._mount_ns, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        lines = data.splitlines()[-80:]
        return b"\n".join(lines)[-FALLBACK_LOG_LIMIT:].decode("utf-8", "replace")

    # ---- status --------------------------------------------------------------------------------

    def _container_status(self, state: Json, *, ready: bool, last: Termination | None) -> Json:
        container = self.pod["spec"]["containers"][0]
        status: Json = {
            "name": self.container_name,
            "image": container.get("image", ""),
            "imageID": "",
            "containerID": f"node-agent://{self.uid}-{self.restart_count}",
            "ready": ready,
            "started": "running" in state,
            "restartCount": self.restart_count,
            "state": {"waiting": None, "running": None, "terminated": None, **state},
        }
        if last is not None:
            status["lastState"] = {"terminated": last.state()}
        return status

    def _conditions(self, *, ready: bool, started: bool, terminal: bool = False) -> list[Json]:
        now = _now()
        reason = "PodCompleted" if terminal else ("" if ready else "ContainersNotReady")

        def condition(kind: str, value: bool, why: str = "") -> Json:
            item: Json = {
                "type": kind,
                "status": "True" if value else "False",
                "lastTransitionTime": now,
            }
            if why and not value:
                item["reason"] = why
            return item

        return [
            condition("PodReadyToStartContainers", started and not terminal),
            condition("Initialized", True),
            condition("ContainersReady", ready, reason),
            condition("Ready", ready, reason),
            condition("PodScheduled", True),
        ]

    def _base_status(self) -> Json:
        return {
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self._start_time,
            "qosClass": self.pod.get("status", {}).get("qosClass") or "BestEffort",
        }

    def _report_waiting(self, reason: str, message: str, last: Termination | None) -> None:
        if not self._reporting() or self._last_waiting == (reason, message, self.restart_count):
            return
        self._last_waiting = (reason, message, self.restart_count)
        status = self._base_status()
        status["phase"] = "Pending"
        status["conditions"] = self._conditions(ready=False, started=True)
        waiting = {"waiting": {"reason": reason, "message": message}}
        status["containerStatuses"] = [self._container_status(waiting, ready=False, last=last)]
        self.agent._patch_status(self.pod, status)

    def _report_running(self, started_at: str, last: Termination | None) -> None:
        if not self._reporting():
            return
        status = self._base_status()
        status["phase"] = "Running"
        status["conditions"] = self._conditions(ready=True, started=True)
        running = {"running": {"startedAt": started_at}}
        status["containerStatuses"] = [self._container_status(running, ready=True, last=last)]
        self.agent._patch_status(self.pod, status)

    def _finalize(self, termination: Termination | None) -> None:
        deadline = self._deadline_hit and self._stop_reason is None
        if self._reporting():
            status = self._base_status()
            status["conditions"] = self._conditions(ready=False, started=False, terminal=True)
            if deadline:
                status["phase"] = "Failed"
                status["reason"] = "DeadlineExceeded"
                status["message"] = DEADLINE_MESSAGE
            elif termination is not None and termination.exit_code == 0:
                status["phase"] = "Succeeded"
            else:
                status["phase"] = "Failed"
            if termination is None:
                termination = Termination(137, "ContainerStatusUnknown", "", _now(), _now())
            state = {"terminated": termination.state()}
            status["containerStatuses"] = [
                self._container_status(state, ready=False, last=self._previous)
            ]
            self.agent._patch_status(self.pod, status)
            log.info("Pod %s/%s is %s", self.namespace, self.name, status["phase"])
        if self._stop_reason == "deleted":
            self.agent._finalize_deleted(self.pod)
            self.deleted_after_finish = True

    def _finish_unsupported(self, message: str) -> None:
        if self._reporting():
            status = self._base_status()
            status.update(phase="Failed", reason="UnsupportedByNodeAgent", message=message)
            status["conditions"] = self._conditions(ready=False, started=False, terminal=True)
            self.agent._patch_status(self.pod, status)
            self.agent._event(self.pod, "Failed", message, "Warning")
        if self._stop_reason == "deleted":
            self.agent._finalize_deleted(self.pod)
            self.deleted_after_finish = True


def _launch_script(
    mounts: Sequence[Mount],
    working_dir: str | None,
    uid: int | None,
    gid: int | None,
    groups: Sequence[int],
    no_new_privs: bool,
) -> str:
    """The shell run inside the private mount namespace: bind the mounts, then exec the command."""
    q = shlex.quote
    lines = ["set -e"]
    for mount in sorted(mounts, key=lambda m: m.target.rstrip("/").count("/")):
        target = q(mount.target)
        if mount.source.is_dir():
            lines.append(f"mkdir -p {target}")
        else:
            lines.append(f"mkdir -p {q(os.path.dirname(mount.target) or '/')}")
            lines.append(f"[ -e {target} ] || : > {target}")
        lines.append(f"{MOUNT} --bind {q(str(mount.source))} {target}")
        if mount.read_only:
            lines.append(f"{MOUNT} -o remount,bind,ro {target}")
    if working_dir:
        lines.append(f"mkdir -p {q(working_dir)} && cd {q(working_dir)}")
    if uid is None and gid is None and not groups and not no_new_privs:
        lines.append('exec "$@"')
        return "\n".join(lines)
    setpriv = [SETPRIV]
    if uid is not None:
        setpriv.append(f"--reuid={uid}")
    if gid is not None or uid is not None:
        setpriv.append(f"--regid={gid if gid is not None else 0}")
    if groups:
        setpriv.append("--groups=" + ",".join(str(g) for g in groups))
    elif uid is not None or gid is not None:
        setpriv.append("--clear-groups")
    if no_new_privs:
        setpriv.append("--no-new-privs")
    lines.append(f'exec {" ".join(setpriv)} -- "$@"')
    return "\n".join(lines)


class NodeAgent:
    """Registers one Node, binds unscheduled pods to it and runs them as local processes."""

    def __init__(
        self,
        kubeconfig: Path,
        node_name: str = "local-node",
        *,
        path_prepend: Sequence[str] = DEFAULT_PATH_PREPEND,
        state_dir: Path | None = None,
        max_grace_seconds: float = 30.0,
        heartbeat_seconds: float = 10.0,
        restart_backoff_cap: float = 30.0,
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.node_name = node_name
        self.path_prepend = list(path_prepend)
        self._own_state_dir = state_dir is None
        if state_dir is None:
            # Outside /tmp on purpose: pods often mount an emptyDir at /tmp, which would hide
            # per-pod directories below it inside their mount namespace.
            DEFAULT_STATE_ROOT.mkdir(parents=True, exist_ok=True)
            DEFAULT_STATE_ROOT.chmod(0o755)
            state_dir = Path(tempfile.mkdtemp(prefix=f"{node_name}-", dir=DEFAULT_STATE_ROOT))
        self.state_dir = state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o755)
        self.max_grace_seconds = max_grace_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.restart_backoff_cap = restart_backoff_cap
        self._api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self._watch_api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core = client.CoreV1Api(self._api)
        self._watch_core = client.CoreV1Api(self._watch_api)
        self.coordination = client.CoordinationV1Api(self._api)
        server = urllib.parse.urlsplit(self._api.configuration.host)
        self._service_env = {
            "KUBERNETES_SERVICE_HOST": server.hostname or "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(server.port or 443),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(server.port or 443),
        }
        self._workers: dict[str, PodWorker] = {}
        self._workers_lock = threading.Lock()
        self._stopping = threading.Event()
        self._node_lost = False
        self._threads: list[threading.Thread] = []
        self._response: Any = None
        self._synced = threading.Event()
        self._mount_points: dict[str, int] = {}
        self._mount_points_lock = threading.Lock()

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Register the Node, start watching pods; returns once the first pod list is handled."""
        self._register_node()
        atexit.register(self._kill_all)
        for target, name in ((self._watch_loop, "watch"), (self._heartbeat_loop, "heartbeat")):
            thread = threading.Thread(target=target, name=f"node-agent-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if not self._synced.wait(timeout):
            raise TimeoutError(f"node agent {self.node_name} did not list pods within {timeout}s")
        log.info("Node agent %s started (state in %s)", self.node_name, self.state_dir)

    def stop(self) -> None:
        """Stop watching and heartbeating and kill every pod process (pods stay in the API)."""
        self._stop_threads()
        for worker in self._workers_snapshot():
            worker.request_stop("shutdown")
        for worker in self._workers_snapshot():
            worker.join(timeout=self.max_grace_seconds + 5)
        atexit.unregister(self._kill_all)
        self._api.close()
        self._watch_api.close()
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        log.info("Node agent %s stopped", self.node_name)

    def __enter__(self) -> NodeAgent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _stop_threads(self) -> None:
        self._stopping.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def _claim_mount_points(self, targets: Sequence[str]) -> list[str]:
        """Note which mount points (and parents) a pod makes on the host, to remove them later."""
        claimed: list[str] = []
        with self._mount_points_lock:
            for target in targets:
                path = Path(os.path.normpath(target))
                while path != path.parent and (
                    str(path) in self._mount_points or not os.path.lexists(path)
                ):
                    self._mount_points[str(path)] = self._mount_points.get(str(path), 0) + 1
                    claimed.append(str(path))
                    path = path.parent
        return claimed

    def _release_mount_points(self, claimed: Sequence[str]) -> None:
        """Remove the empty mount points this agent created once no running pod uses them."""
        with self._mount_points_lock:
            unused = set()
            for path in claimed:
                self._mount_points[path] -= 1
                if self._mount_points[path] == 0:
                    del self._mount_points[path]
                    unused.add(path)
            for path in sorted(unused, key=lambda p: p.count("/"), reverse=True):
                with contextlib.suppress(OSError):
                    if os.path.isdir(path) and not os.path.islink(path):
                        os.rmdir(path)
                    elif os.path.isfile(path) and os.path.getsize(path) == 0:
                        os.unlink(path)

    def _kill_all(self) -> None:
        """Safety net at interpreter exit: SIGKILL every pod process still running."""
        for worker in self._workers_snapshot():
            worker._kill_group(signal.SIGKILL)

    def _workers_snapshot(self) -> list[PodWorker]:
        with self._workers_lock:
            return list(self._workers.values())

    # ---- test hooks ----------------------------------------------------------------------------

    def oom_kill(self, namespace: str, name: str) -> None:
        """Simulate an OOM kill of the pod's process: SIGKILL, reason OOMKilled, exit code 137."""
        for worker in self._workers_snapshot():
            if (
                worker.namespace == namespace
                and worker.name == name
                and not worker.finished.is_set()
            ):
                worker.request_oom()
                return
        raise LookupError(f"no running pod {namespace}/{name} on node {self.node_name}")

    def pid(self, namespace: str, name: str) -> int | None:
        """The local PID of the pod's current process, if it runs."""
        for worker in self._workers_snapshot():
            if (
                worker.namespace == namespace
                and worker.name == name
                and not worker.finished.is_set()
            ):
                return worker.pid
        return None

    def volume_path(self, namespace: str, name: str, volume: str) -> Path:
        """Where the pod's volume lives on this machine (what the pod sees at its mountPath)."""
        for worker in self._workers_snapshot():
            if worker.namespace == namespace and worker.name == name:
                return worker.dir / "volumes" / volume
        raise LookupError(f"no pod {namespace}/{name} on node {self.node_name}")

    def logs(self, namespace: str, name: str) -> str:
        """Everything the pod's process wrote to stdout and stderr (all restarts)."""
        logs_dir = self.state_dir / "logs"
        return "".join(
            path.read_text(errors="replace")
            for path in sorted(logs_dir.glob(f"{namespace}_{name}_*.log"))
        )

    def simulate_node_loss(self, *, delete_pods: bool = True) -> None:
        """Simulate this node dying and the control plane giving up on it.

        The agent stops heartbeating and watching, and SIGKILLs every pod process without
        reporting anything (the node is gone). Then, playing the node lifecycle controller, it sets
        the Node's Ready condition to Unknown and adds the `node.kubernetes.io/unreachable` taints;
        playing taint eviction and pod GC, it sets each non-terminal pod on the node to phase
        Failed with reason NodeLost and a DisruptionTarget condition and, if `delete_pods`, deletes
        it with grace period 0. A real cluster takes minutes for this (the 40 s node monitor grace
        period, then 300 s default toleration); here it happens at once. The agent is dead
        afterwards: call `stop()` to clean up.
        """
        self._node_lost = True
        self._stop_threads()
        for worker in self._workers_snapshot():
            worker.request_stop("node-lost")
        for worker in self._workers_snapshot():
            worker.join(timeout=self.max_grace_seconds + 5)
        now = _now()
        unknown = {
            "type": "Ready",
            "status": "Unknown",
            "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        self.core.patch_node_status(self.node_name, {"status": {"conditions": [unknown]}})
        taints = [
            {"key": "node.kubernetes.io/unreachable", "effect": effect, "timeAdded": now}
            for effect in ("NoSchedule", "NoExecute")
        ]
        self.core.patch_node(self.node_name, {"spec": {"taints": taints}})
        pods = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node_name}"
        )
        for pod in pods.items:
            meta = pod.metadata
            if pod.status.phase not in ("Succeeded", "Failed"):
                message = f"Node {self.node_name} which was running pod {meta.name} is unresponsive"
                status = {
                    "phase": "Failed",
                    "reason": "NodeLost",
                    "message": message,
                    "conditions": [
                        {
                            "type": "DisruptionTarget",
                            "status": "True",
                            "reason": "DeletionByTaintManager",
                            "message": "Taint manager: deleting due to NoExecute taint",
                            "lastTransitionTime": now,
                        },
                        {
                            "type": "Ready",
                            "status": "False",
                            "reason": "NodeLost",
                            "lastTransitionTime": now,
                        },
                    ],
                }
                with contextlib.suppress(ApiException):
                    self.core.patch_namespaced_pod_status(
                        meta.name, meta.namespace, {"status": status}
                    )
            if delete_pods:
                with contextlib.suppress(ApiException):
                    self.core.delete_namespaced_pod(
                        meta.name,
                        meta.namespace,
                        grace_period_seconds=0,
                        body=client.V1DeleteOptions(
                            grace_period_seconds=0,
                            preconditions=client.V1Preconditions(uid=meta.uid),
                        ),
                    )
        log.info("Simulated loss of node %s (%d pods)", self.node_name, len(pods.items))

    def recover(self, timeout: float = 30.0) -> None:
        """Bring the node back after `simulate_node_loss()`, like a replaced kubelet.

        Forgets the lost pods' workers, re-registers the Node (Ready, taints removed) and watches
        and runs pods again, so one agent can serve a whole test session across a node loss.
        """
        if not self._node_lost:
            raise RuntimeError(f"node {self.node_name} was not lost")
        with self._workers_lock:
            lost = list(self._workers.values())
            self._workers.clear()
        for worker in lost:
            shutil.rmtree(worker.dir, ignore_errors=True)
        self._node_lost = False
        self._stopping.clear()
        self._synced.clear()
        self.start(timeout)

    # ---- node registration and heartbeat ----------------------------------------------------

    def _node_labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node-agent.test/agent": "true",
        }

    def _node_status(self) -> Json:
        now = _now()
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        resources = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{memory // 1024}Ki",
            "pods": "110",
        }

        def condition(kind: str, status: str, reason: str, message: str) -> Json:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no pressure"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "no pressure"),
                condition("Ready", "True", "KubeletReady", "node agent is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, socket.gethostname()).hex,
                "systemUUID": uuid.uuid5(uuid.NAMESPACE_DNS, self.node_name).hex,
                "bootID": uuid.uuid4().hex,
                "kernelVersion": os.uname().release,
                "osImage": "node-agent (local processes)",
                "containerRuntimeVersion": "node-agent://0.1",
                "kubeletVersion": "v0.0.0-node-agent",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": self._node_labels()},
            "spec": {},
        }
        try:
            self.core.create_node(body)
        except ApiException as error:
            if error.status != 409:
                raise
            self.core.patch_node(
                self.node_name,
                {"metadata": {"labels": self._node_labels()}, "spec": {"taints": None}},
            )
        self.core.patch_node_status(self.node_name, {"status": self._node_status()})
        self._renew_lease()

    def _renew_lease(self) -> None:
        node = self.core.read_node(self.node_name)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.node_name,
                "namespace": "kube-node-lease",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": self.node_name,
                        "uid": node.metadata.uid,
                    }
                ],
            },
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": 40,
                "renewTime": now,
            },
        }
        try:
            self.coordination.patch_namespaced_lease(
                self.node_name, "kube-node-lease", {"spec": lease["spec"]}
            )
        except ApiException as error:
            if error.status != 404:
                raise
            self.coordination.create_namespaced_lease("kube-node-lease", lease)

    def _heartbeat_loop(self) -> None:
        beats = 0
        while not self._stopping.wait(self.heartbeat_seconds):
            try:
                self._renew_lease()
                beats += 1
                if beats % 6 == 0:
                    self.core.patch_node_status(self.node_name, {"status": self._node_status()})
            except Exception:
                log.exception("Heartbeat of node %s failed", self.node_name)

    # ---- watch and scheduling -------------------------------------------------------------------

    def _watch_loop(self) -> None:
        resource_version: str | None = None
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list_and_sync()
                resource_version = self._watch(resource_version)
            except ApiException as error:
                if error.status == 410:
                    resource_version = None
                    continue
                if not self._stopping.is_set():
                    log.warning("Pod watch failed (%s), retrying", error.status)
                    self._stopping.wait(1)
            except Exception as error:
                if not self._stopping.is_set():
                    log.warning("Pod watch failed (%s), retrying", error)
                    self._stopping.wait(1)

    def _list_and_sync(self) -> str:
        response = self._watch_core.list_pod_for_all_namespaces(_preload_content=False)
        data = json.loads(response.data)
        for pod in data["items"]:
            self._handle("ADDED", pod)
        self._synced.set()
        return str(data["metadata"]["resourceVersion"])

    def _watch(self, resource_version: str) -> str | None:
        response = self._watch_core.list_pod_for_all_namespaces(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=300,
            _preload_content=False,
        )
        self._response = response
        try:
            if self._stopping.is_set():
                return resource_version
            for line in _lines(response):
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                resource_version = obj["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    self._handle(event["type"], obj)
        finally:
            self._response = None
            with contextlib.suppress(Exception):
                response.release_conn()
        return resource_version

    def _handle(self, kind: str, pod: Json) -> None:
        spec = pod["spec"]
        uid = pod["metadata"]["uid"]
        node = spec.get("nodeName")
        if not node:
            if kind != "DELETED":
                self._maybe_bind(pod)
            return
        if node != self.node_name:
            return
        with self._workers_lock:
            worker = self._workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                worker.request_stop("gone")
                self._forget(worker)
            return
        deleting = bool(pod["metadata"].get("deletionTimestamp"))
        if worker is not None:
            if worker.finished.is_set():
                if deleting and not worker.deleted_after_finish:
                    worker.deleted_after_finish = True
                    self._finalize_deleted(pod)
            else:
                worker.update(pod)
            return
        if _is_terminal(pod) or self._node_lost:
            if deleting:
                self._finalize_deleted(pod)
            return
        worker = PodWorker(self, pod)
        if deleting:
            worker.request_stop("deleted")
        with self._workers_lock:
            self._workers[uid] = worker
        worker.start()

    def _forget(self, worker: PodWorker) -> None:
        def cleanup() -> None:
            worker.join()
            with self._workers_lock:
                self._workers.pop(worker.uid, None)
            shutil.rmtree(worker.dir, ignore_errors=True)

        threading.Thread(target=cleanup, daemon=True).start()

    def _maybe_bind(self, pod: Json) -> None:
        spec = pod["spec"]
        meta = pod["metadata"]
        if self._node_lost or meta.get("deletionTimestamp") or _is_terminal(pod):
            return
        if spec.get("schedulerName", DEFAULT_SCHEDULER) != DEFAULT_SCHEDULER or spec.get(
            "schedulingGates"
        ):
            return
        labels = self._node_labels()
        selector = spec.get("nodeSelector") or {}
        if any(labels.get(key) != value for key, value in selector.items()):
            return  # meant for another node (agent); affinity and taints are not evaluated
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            # _preload_content=False: the generated client cannot deserialize the Status reply.
            self.core.create_namespaced_pod_binding(
                meta["name"], meta["namespace"], body, _preload_content=False
            )
        except ApiException as error:
            if error.status not in (404, 409):
                log.warning("Binding pod %s failed: %s", _pod_key(pod), error.reason)
            return
        self._event(
            pod,
            "Scheduled",
            f"Successfully assigned {_pod_key(pod)} to {self.node_name}",
            source="default-scheduler",
        )

    # ---- API helpers used by workers ------------------------------------------------------------

    def _patch_status(self, pod: Json, status: Json) -> None:
        meta = pod["metadata"]
        try:
            self.core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": status}
            )
        except ApiException as error:
            if error.status != 404:
                log.warning(
                    "Updating status of pod %s failed: %s %s",
                    _pod_key(pod),
                    error.status,
                    error.body,
                )

    def _finalize_deleted(self, pod: Json) -> None:
        meta = pod["metadata"]
        options = client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"])
        )
        try:
            self.core.delete_namespaced_pod(
                meta["name"], meta["namespace"], body=options, grace_period_seconds=0
            )
        except ApiException as error:
            if error.status not in (404, 409):
                log.warning("Deleting pod %s failed: %s", _pod_key(pod), error.reason)

    def _event(
        self, pod: Json, reason: str, message: str, kind: str = "Normal", source: str = "kubelet"
    ) -> None:
        meta = pod["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": source, "host": self.node_name},
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "count": 1,
            "reportingComponent": source,
            "reportingInstance": self.node_name,
        }
        with contextlib.suppress(ApiException):
            self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False)

    def _resolve_env(self, pod: Json, container: Json) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        user = (container.get("securityContext") or {}).get(
            "runAsUser", (pod["spec"].get("securityContext") or {}).get("runAsUser")
        )
        env: dict[str, str] = {
            "PATH": ":".join([*self.path_prepend, STANDARD_PATH]),
            "HOSTNAME": pod["metadata"]["name"],
            "HOME": "/root" if user in (None, 0) else "/",
            **self._service_env,
        }
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                ref = source["secretRef"]
                data = self._read_data("Secret", namespace, ref["name"], bool(ref.get("optional")))
            elif "configMapRef" in source:
                ref = source["configMapRef"]
                data = self._read_data(
                    "ConfigMap", namespace, ref["name"], bool(ref.get("optional"))
                )
            else:
                raise PodSetupError(
                    "CreateContainerConfigError", f"unsupported envFrom {source}", permanent=True
                )
            env.update({prefix + key: value for key, value in data.items()})
        for item in container.get("env") or []:
            name = item["name"]
            if "value" in item or "valueFrom" not in item:
                env[name] = expand_vars(item.get("value", ""), env)
                continue
            value_from = item["valueFrom"]
            if "fieldRef" in value_from:
                env[name] = _field_value(pod, value_from["fieldRef"]["fieldPath"])
                continue
            if "secretKeyRef" in value_from:
                ref, kind = value_from["secretKeyRef"], "Secret"
            elif "configMapKeyRef" in value_from:
                ref, kind = value_from["configMapKeyRef"], "ConfigMap"
            else:
                raise PodSetupError(
                    "CreateContainerConfigError",
                    f"unsupported valueFrom in env {name}",
                    permanent=True,
                )
            optional = bool(ref.get("optional"))
            data = self._read_data(kind, namespace, ref["name"], optional)
            if ref["key"] in data:
                env[name] = data[ref["key"]]
            elif not optional:
                raise PodSetupError(
                    "CreateContainerConfigError",
                    f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}",
                )
        return env

    def _read_data(self, kind: str, namespace: str, name: str, optional: bool) -> dict[str, str]:
        try:
            if kind == "Secret":
                secret = self.core.read_namespaced_secret(name, namespace)
                return {
                    k: base64.b64decode(v).decode("utf-8", "replace")
                    for k, v in (secret.data or {}).items()
                }
            config_map = self.core.read_namespaced_config_map(name, namespace)
            return dict(config_map.data or {})
        except ApiException as error:
            if error.status == 404:
                if optional:
                    return {}
                raise PodSetupError(
                    "CreateContainerConfigError", f'{kind.lower()} "{name}" not found'
                ) from error
            raise

    # ---- volumes -------------------------------------------------------------------------------

    def _prepare_volumes(
        self,
        worker: PodWorker,
        container: Json,
        uid: int | None,
        gid: int | None,
        groups: list[int],
    ) -> list[Mount]:
        pod = worker.pod
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes") or []}
        volumes_dir = worker.dir / "volumes"
        volumes_dir.mkdir(parents=True, exist_ok=True)
        worker.dir.chmod(0o755)
        volumes_dir.chmod(0o755)
        fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        mounts: list[Mount] = []
        prepared: set[str] = set()
        for volume_mount in container.get("volumeMounts") or []:
            name = volume_mount["name"]
            target = volume_mount["mountPath"]
            if not target.startswith("/"):
                raise PodSetupError(
                    "CreateContainerConfigError",
                    f"mountPath {target} is not absolute",
                    permanent=True,
                )
            state = str(self.state_dir)
            if state == target.rstrip("/") or state.startswith(target.rstrip("/") + "/"):
                raise PodSetupError(
                    "CreateContainerConfigError",
                    f"mountPath {target} would hide the node agent's state directory {state}",
                    permanent=True,
                )
            if name not in volumes:
                raise PodSetupError(
                    "CreateContainerConfigError", f"volume {name} not found", permanent=True
                )
            source = volumes_dir / name
            if name not in prepared:
                self._fill_volume(pod, volumes[name], source, fs_group)
                prepared.add(name)
            if volume_mount.get("subPath"):
                source = source / volume_mount["subPath"]
                if not source.exists():
                    source.mkdir(parents=True, mode=0o777)
                    source.chmod(0o777)
            read_only = bool(volume_mount.get("readOnly")) or "emptyDir" not in volumes[name]
            mounts.append(Mount(source, target, read_only))
        return mounts

    def _fill_volume(self, pod: Json, volume: Json, path: Path, fs_group: int | None) -> None:
        if path.exists():
            if "emptyDir" in volume:
                return  # an emptyDir survives container restarts, like in a kubelet
            shutil.rmtree(path)
        path.mkdir(parents=True)
        namespace = pod["metadata"]["namespace"]
        files: dict[str, tuple[bytes, int]] = {}
        if "emptyDir" in volume:
            path.chmod(0o777)
            if fs_group is not None:
                os.chown(path, -1, int(fs_group))
                path.chmod(0o2777)
            return
        if "downwardAPI" in volume:
            files = self._downward_files(pod, volume["downwardAPI"])
        elif "configMap" in volume:
            files = self._key_files("ConfigMap", namespace, volume["configMap"])
        elif "secret" in volume:
            source = dict(volume["secret"])
            source["name"] = source.get("secretName", "")
            files = self._key_files("Secret", namespace, source)
        elif "projected" in volume:
            default_mode = volume["projected"].get("defaultMode", 0o644)
            for item in volume["projected"].get("sources") or []:
                if "serviceAccountToken" in item:
                    token = self._service_account_token(pod, item["serviceAccountToken"])
                    files[item["serviceAccountToken"]["path"]] = (token.encode(), default_mode)
                elif "configMap" in item:
                    files.update(
                        self._key_files(
                            "ConfigMap",
                            namespace,
                            {"defaultMode": default_mode, **item["configMap"]},
                        )
                    )
                elif "secret" in item:
                    files.update(
                        self._key_files(
                            "Secret", namespace, {"defaultMode": default_mode, **item["secret"]}
                        )
                    )
                elif "downwardAPI" in item:
                    files.update(
                        self._downward_files(
                            pod, {"defaultMode": default_mode, **item["downwardAPI"]}
                        )
                    )
                else:
                    raise PodSetupError(
                        "CreateContainerConfigError",
                        f"unsupported projected source {item}",
                        permanent=True,
                    )
        else:
            kinds = sorted(set(volume) - {"name"})
            shutil.rmtree(path, ignore_errors=True)
            raise PodSetupError(
                "CreateContainerConfigError", f"unsupported volume type {kinds}", permanent=True
            )
        path.chmod(0o755)
        for relative, (data, mode) in files.items():
            target = path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(mode)
            if fs_group is not None:
                os.chown(target, -1, int(fs_group))

    def _downward_files(self, pod: Json, source: Json) -> dict[str, tuple[bytes, int]]:
        default_mode = source.get("defaultMode", 0o644)
        files: dict[str, tuple[bytes, int]] = {}
        for item in source.get("items") or []:
            if "fieldRef" not in item:
                raise PodSetupError(
                    "CreateContainerConfigError",
                    "downwardAPI supports fieldRef only",
                    permanent=True,
                )
            value = _field_value(pod, item["fieldRef"]["fieldPath"])
            files[item["path"]] = (value.encode(), item.get("mode", default_mode))
        return files

    def _key_files(self, kind: str, namespace: str, source: Json) -> dict[str, tuple[bytes, int]]:
        default_mode = source.get("defaultMode", 0o644)
        data = self._read_data(
            kind, namespace, source.get("name", ""), bool(source.get("optional"))
        )
        items = source.get("items")
        if not items:
            return {key: (value.encode(), default_mode) for key, value in data.items()}
        files: dict[str, tuple[bytes, int]] = {}
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise PodSetupError(
                    "CreateContainerConfigError",
                    f"key {item['key']} not found in {kind} {source.get('name')}",
                )
            files[item["path"]] = (data[item["key"]].encode(), item.get("mode", default_mode))
        return files

    def _service_account_token(self, pod: Json, source: Json) -> str:
        meta = pod["metadata"]
        spec: Json = {
            "expirationSeconds": int(source.get("expirationSeconds", 3607)),
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        }
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        account = pod["spec"].get("serviceAccountName") or "default"
        response = self.core.create_namespaced_service_account_token(
            account, meta["namespace"], {"spec": spec}
        )
        return str(response.status.token)


def _lines(response: Any) -> Iterator[str]:
    for line in iter_resp_lines(response):
        if line:
            yield line if isinstance(line, str) else line.decode()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the node agent in the foreground until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", type=Path, required=True, help="admin kubeconfig")
    parser.add_argument("--node-name", default="local-node")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="per-pod directories and logs (default: a new dir under /var/lib/node-agent)",
    )
    parser.add_argument(
        "--path-prepend",
        action="append",
        help=f"directory first on every pod's PATH (repeatable; default {DEFAULT_PATH_PREPEND[0]})",
    )
    parser.add_argument("--max-grace-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    agent = NodeAgent(
        args.kubeconfig,
        args.node_name,
        path_prepend=args.path_prepend or DEFAULT_PATH_PREPEND,
        state_dir=args.state_dir,
        max_grace_seconds=args.max_grace_seconds,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    agent.start()
    done.wait()
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
