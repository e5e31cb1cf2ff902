"""The operator as a real process on the local control plane, for e2e tests and benchmarks.

`OperatorProcess` runs the `agentsession-operator` console script with a given environment
(`KUBECONFIG` and `AGENTSESSION_*`), waits for its health endpoint, and stops or kills it (crash
tests restart it). `operator_kubeconfig()` gives it exactly the ClusterRole in
config/rbac/operator.yaml through a ServiceAccount token, so missing RBAC shows up as failures.
Test tooling, never shipped.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.cluster import LocalCluster, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "config" / "rbac" / "operator.yaml"
OPERATOR_NAMESPACE = "agentsession-system"
OPERATOR_SERVICE_ACCOUNT = "agentsession-operator"
OPERATOR_BIN = str(Path(sys.executable).parent / "agentsession-operator")
LOOPBACK_EGRESS = [{"to": [{"ipBlock": {"cidr": "127.0.0.0/8"}}]}]
"""Runner egress on the local node: the scripted API and the S3 server listen on loopback. (Its
runner pods use the host network, which no NetworkPolicy governs: the policy is only stored.)"""
NETWORK_POLICY_ENV = {
    "AGENTSESSION_RUNNER_NETWORK_POLICY": "create",
    "AGENTSESSION_RUNNER_NETWORK_POLICY_EGRESS": json.dumps(LOOPBACK_EGRESS),
}
"""The operator settings that make it create the runner NetworkPolicy, as the chart does."""


def operator_kubeconfig(cluster: LocalCluster, path: Path) -> Path:
    """Apply the operator's RBAC; write a kubeconfig with its ServiceAccount's token to `path`."""
    result = cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    if result.returncode != 0 and "AlreadyExists" not in result.stderr:
        raise RuntimeError(f"creating namespace {OPERATOR_NAMESPACE}: {result.stderr}")
    applied = cluster.kubectl("apply", "-f", str(RBAC))
    if applied.returncode != 0:
        raise RuntimeError(f"applying {RBAC}: {applied.stderr}")
    return cluster.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, path)


def kill_when_parent_dies() -> None:
    """In the child before exec: ask the kernel for SIGKILL when the parent dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


@dataclass
class OperatorProcess:
    """The operator under test: a real process; restartable for crash tests."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    metrics_port: int
    health_port: int
    process: subprocess.Popen[bytes] | None = None
    die_with_parent: bool = False
    """SIGKILL the operator if the process that started it dies (benchmarks: no strays)."""

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=kill_when_parent_dies if self.die_with_parent else None,
        )
        log.close()
        wait_for(self._healthy, timeout=60, what="the operator's health endpoint")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"operator exited {self.process.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2):
                return True
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` (SIGKILL, SIGSTOP, SIGCONT, ...) to the running operator."""
        assert self.process is not None
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        """The operator's exit code once it has exited by itself (TimeoutExpired otherwise)."""
        assert self.process is not None
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """GET /readyz: the status code and the JSON body (role, ready, holder)."""
        url = f"http://127.0.0.1:{self.health_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), json.loads(error.read())

    def leader_gauge(self) -> float:
        """agentsession_leader from /metrics: 1 on the leader, 0 on a standby."""
        for line in self.metrics().splitlines():
            if line.startswith("agentsession_leader "):
                return float(line.split()[1])
        raise AssertionError("agentsession_leader is missing from /metrics")

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
        return body.decode()

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def control_plane_operator(
    kubeconfig: Path,
    work_dir: Path,
    name: str,
    *,
    leader_election: bool = True,
    env: dict[str, str] | None = None,
) -> OperatorProcess:
    """An operator (not started) for tests and benchmarks on the control plane alone: no node,
    so its runner pods stay Pending, but every pod create and status write is real. With
    `leader_election` it is one candidate for the Lease in OPERATOR_NAMESPACE; `name` is its
    POD_NAME, so its holderIdentity and User-Agent start with it."""
    work_dir.mkdir(parents=True, exist_ok=True)
    merged = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work_dir),
        "KUBECONFIG": str(kubeconfig),
        "POD_NAME": name,
        "AGENTSESSION_STORE_URL": "s3://agentsessions/control-plane",
        "AGENTSESSION_RUNNER_IMAGE": "registry.example/never-pulled:0",
        "AGENTSESSION_BACKOFF_BASE_SECONDS": "1",
        "AGENTSESSION_BACKOFF_MAX_SECONDS": "2",
        "AGENTSESSION_METRICS_PORT": str(free_port()),
        "AGENTSESSION_HEALTH_PORT": str(free_port()),
        **NETWORK_POLICY_ENV,
        **(
            {
                "AGENTSESSION_LEADER_ELECTION": "true",
                "AGENTSESSION_LEADER_ELECTION_NAMESPACE": OPERATOR_NAMESPACE,
            }
            if leader_election
            else {}
        ),
        **(env or {}),
    }
    return OperatorProcess(
        argv=[OPERATOR_BIN],
        env=merged,
        log_path=work_dir / f"operator-{name}.log",
        metrics_port=int(merged["AGENTSESSION_METRICS_PORT"]),
        health_port=int(merged["AGENTSESSION_HEALTH_PORT"]),
        die_with_parent=True,
    )
