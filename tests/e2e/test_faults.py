"""End to end: pods, nodes, the operator and the store fail under a running session; it recovers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from kubernetes import client

from tests.e2e.conftest import (
    OperatorFactory,
    Sessions,
    TranscriptLoader,
    gate_command,
    marker,
    open_gate,
    stopped,
    tally,
)
from tests.support import scripted_api as sa
from tests.support.cluster import LocalCluster, pod_gone, wait_for
from tests.support.fault_ledger import FaultLedger
from tests.support.node import LocalNode
from tests.support.operator_process import OPERATOR_NAMESPACE, OperatorProcess
from tests.support.runner_harness import LOCAL_ONLY_TYPES
from tests.support.s3server import TenantStore
from tests.support.tcp_proxy import ToggleProxy

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]

GATE = "release"
LEASE = "agentsession-operator"
# Transcript lines a kill may take with it: those the CLI wrote after the runner's last mirror
# (it mirrors eagerly, one append per line or batch): the assistant's tool call and its result.
MAX_LINES_IN_FLIGHT = 2


def live_processes() -> Iterator[tuple[int, int, bytes]]:
    """(pid, process group, command line) of every process that is not a zombie."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            yield int(entry.name), int(fields[2]), cmdline


def processes_with(token: str) -> list[int]:
    """PIDs of live processes whose command line contains `token`."""
    return [pid for pid, _, cmdline in live_processes() if token.encode() in cmdline]


def alive(pid: int) -> bool:
    return any(found == pid for found, _, _ in live_processes())


def start_blocked(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, name: str, answer: str, **spec: object
) -> tuple[str, str]:
    """A session whose first turn runs a Bash tool that blocks until its gate opens; the second
    reply (to whichever attempt asks next) is `answer`. Returns (tag, first pod) once the tool
    runs, i.e. the session is mid-turn."""
    tag = marker()
    scripted_api.route(tag, sa.bash(gate_command(GATE, f"echo {tag}-released")), sa.text(answer))
    sessions.create(name, {"prompt": f"{tag}: wait for the gate", "allowedTools": ["Bash"], **spec})
    pod = sessions.wait_running_pod(name)
    wait_for(lambda: processes_with(f"{tag}-released"), timeout=90, what="the blocking tool")
    return tag, pod


# A Bash tool call that makes the container run out of memory the way agents do: many child
# processes, none bigger than the CLI, so the kernel's OOM killer (cgroup v1 picks the largest
# process in the container) takes the CLI or the runner, not just one allocator.
OOM_COMMAND = (
    "for i in $(seq 60); do python3 -c 'import time; x = b\"x\" * (40 << 20); time.sleep(300)' & "
    "sleep 0.2; done; wait"
)
OOM_RESOURCES = {"requests": {"memory": "512Mi"}, "limits": {"memory": "512Mi"}}


class LocalTranscript:
    """Reads the CLI's own transcript file in a running pod's home volume, as root on the node.

    The kubelet removes a pod's emptyDirs once it has ended, so a test that wants to know what
    the CLI had written before a kill polls it while the pod lives (`follow()`), keeping the
    last complete read.
    """

    def __init__(self, node: LocalNode, namespace: str, pod: str, session_id: str) -> None:
        self.path = (
            node.volume_path(namespace, pod, "home")
            / ".claude"
            / "projects"
            / "-workspace"
            / f"{session_id}.jsonl"
        )
        self.uuids: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def read(self) -> set[str]:
        found = set()
        for line in self.path.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line being written
                entry = json.loads(line)
                if "uuid" in entry and entry.get("type") not in LOCAL_ONLY_TYPES:
                    found.add(entry["uuid"])
        return found

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError):
                self.uuids |= self.read()

    @contextlib.contextmanager
    def follow(self) -> Iterator[LocalTranscript]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=5)


def test_oom_killed_runner_is_retried_and_backoff_limit_zero_fails(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    transcript: TranscriptLoader,
    fault_ledger: FaultLedger,
) -> None:
    ns = sessions.namespace
    retried, final = marker(), marker()
    scripted_api.route(retried, sa.bash(OOM_COMMAND), sa.text("Done after the OOM kill."))
    scripted_api.route(final, sa.bash(OOM_COMMAND), sa.text("must not be reached"))
    base = {"allowedTools": ["Bash"], "resources": OOM_RESOURCES}
    sessions.create("oom-retry", {"prompt": f"{retried}: use memory", **base})
    pod = sessions.wait_running_pod("oom-retry")
    session_id = sessions.wait("oom-retry", lambda s: bool(s.get("sessionId")), what="an id")
    local = LocalTranscript(node, ns, pod, session_id["sessionId"])
    with local.follow():
        sessions.create("oom-final", {"prompt": f"{final}: use memory", "backoffLimit": 0, **base})
        status = sessions.wait("oom-retry", timeout=180)
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    assert status["resultPreview"] == "Done after the OOM kill."
    first, second = sessions.pods("oom-retry")
    assert first.status.container_statuses[0].state.terminated.reason == "OOMKilled"
    failed = next(e for e in sessions.events("oom-retry") if e.reason == "AttemptFailed")
    assert "OOMKilled" in failed.message
    # Lines the CLI wrote before the kill that never reached the store: at most the ones in
    # flight (the kernel may kill the runner before it reconciles them).
    stored = {e["uuid"] for e in transcript(ns, status["sessionId"]) if "uuid" in e}
    assert local.uuids, "the CLI's transcript was never seen"
    lost = local.uuids - stored
    print(f"OOM kill: {len(local.uuids)} transcript lines before the kill, {len(lost)} lost")
    assert len(lost) <= MAX_LINES_IN_FLIGHT, lost
    assert "resuming_earlier_attempt" in node.logs(ns, second.metadata.name)
    tally(
        fault_ledger,
        transcript,
        sessions,
        sessions.uid("oom-retry"),
        status["sessionId"],
        fault="runner OOM-killed",
        in_flight=MAX_LINES_IN_FLIGHT,
    )

    status = sessions.wait("oom-final", timeout=180)
    assert status["phase"] == "Failed", status
    assert status["reason"] == "BackoffLimitExceeded"
    assert status["attempts"] == 1
    assert "backoffLimit 0" in status["message"]
    assert "OOMKilled" in status["message"]
    assert len(sessions.pods("oom-final")) == 1
    tally(
        fault_ledger,
        transcript,
        sessions,
        sessions.uid("oom-final"),
        status["sessionId"],
        fault="runner OOM-killed, backoffLimit 0",
        in_flight=MAX_LINES_IN_FLIGHT,
    )
    # The kill took the whole container: its tool processes too.
    wait_for(lambda: not processes_with("time.sleep(300)"), timeout=30, what="allocators gone")


def test_deleted_pod_gets_a_new_attempt(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    transcript: TranscriptLoader,
    fault_ledger: FaultLedger,
) -> None:
    tag, pod = start_blocked(sessions, scripted_api, "evicted", "Done after the pod deletion.")
    # The kubelet gives the container SIGTERM and its grace period; the runner saves the turn.
    sessions.core.delete_namespaced_pod(pod, sessions.namespace)
    status = sessions.wait("evicted")
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    assert status["podName"] == "evicted-2"
    assert status["resultPreview"] == "Done after the pod deletion."
    assert [p.metadata.name for p in sessions.pods("evicted")] == ["evicted-2"]
    assert not processes_with(f"{tag}-released"), "the deleted pod's tool still runs"
    assert "AttemptFailed" in sessions.event_reasons("evicted")
    # The second attempt resumed the first one's conversation, the blocked tool call included.
    assert "resuming_earlier_attempt" in node.logs(sessions.namespace, "evicted-2")
    assert f"{tag}-released" in str(scripted_api.requests_for(tag)[-1].messages)
    tally(
        fault_ledger,
        transcript,
        sessions,
        sessions.uid("evicted"),
        status["sessionId"],
        fault="pod deleted",
        in_flight=MAX_LINES_IN_FLIGHT,
    )


def test_runner_killed_mid_turn_gets_a_new_attempt_that_resumes(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    transcript: TranscriptLoader,
    fault_ledger: FaultLedger,
) -> None:
    ns = sessions.namespace
    tag, pod = start_blocked(sessions, scripted_api, "killed", "Done after the runner died.")
    runner = node.container_pid(ns, pod)
    assert runner is not None
    assert b"agent-runner" in Path(f"/proc/{runner}/cmdline").read_bytes()
    session_id = sessions.status("killed")["sessionId"]
    before_kill = LocalTranscript(node, ns, pod, session_id).read()
    os.kill(runner, signal.SIGKILL)  # PID 1 of the container: the CLI and the tool go with it
    status = sessions.wait("killed")
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    assert status["resultPreview"] == "Done after the runner died."
    first, _ = sessions.pods("killed")
    ended = first.status.container_statuses[0].state.terminated
    assert (ended.exit_code, ended.reason) == (137, "Error")
    failed = next(e for e in sessions.events("killed") if e.reason == "AttemptFailed")
    assert "exit code 137" in failed.message
    assert not processes_with(f"{tag}-released")
    assert "resuming_earlier_attempt" in node.logs(ns, "killed-2")
    # The tool call was mirrored before the kill (eager flush): the resumed turn carries it.
    assert "Bash" in str(scripted_api.requests_for(tag)[-1].messages)
    stored = {e["uuid"] for e in transcript(ns, status["sessionId"]) if "uuid" in e}
    lost = before_kill - stored
    print(f"runner SIGKILL: {len(before_kill)} lines before the kill, {len(lost)} lost")
    assert before_kill
    assert len(lost) <= MAX_LINES_IN_FLIGHT, lost
    tally(
        fault_ledger,
        transcript,
        sessions,
        sessions.uid("killed"),
        status["sessionId"],
        fault="runner SIGKILLed mid-turn",
        in_flight=MAX_LINES_IN_FLIGHT,
    )


def test_node_loss_gets_a_new_attempt_on_the_recovered_node(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    transcript: TranscriptLoader,
    fault_ledger: FaultLedger,
) -> None:
    tag, pod = start_blocked(sessions, scripted_api, "stranded", "Done after the node came back.")
    runner = node.container_pid(sessions.namespace, pod)
    assert runner is not None
    node.kill_kubelet()
    try:

        def lost() -> bool:
            found = sessions.core.read_node(node.name)
            ready = {c.type: c.status for c in found.status.conditions}["Ready"]
            return ready == "Unknown"

        wait_for(lost, timeout=60, what="the node-lifecycle controller to mark the node lost")
        # An administrator declares the node out of service; its pods are evicted and force-
        # deleted (one node is all nodes: the lifecycle controller itself does not evict).
        node.set_out_of_service(True)
        # The operator sees attempt 1 go and makes attempt 2, which waits for a usable node.
        sessions.wait_pod(
            "stranded",
            lambda p: p.metadata.labels["agents.dev/attempt"] == "2",
            timeout=60,
            what="attempt 2 created",
        )
        assert [p.metadata.name for p in sessions.pods("stranded")] == ["stranded-2"]
        assert sessions.pods("stranded")[0].spec.node_name is None
    finally:
        # Lifted before the kubelet returns: a pod bound while the taint-eviction controller still
        # sees the taint would be evicted too (its node view lags the scheduler's).
        node.set_out_of_service(False)
        node.restart_kubelet()
    status = sessions.wait("stranded", timeout=180)
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    assert status["resultPreview"] == "Done after the node came back."
    failed = next(e for e in sessions.events("stranded") if e.reason == "AttemptFailed")
    assert pod in failed.message
    wait_for(lambda: not alive(runner), timeout=60, what="the returning kubelet to stop attempt 1")
    assert not processes_with(f"{tag}-released")
    assert "resuming_earlier_attempt" in node.logs(sessions.namespace, "stranded-2")
    tally(
        fault_ledger,
        transcript,
        sessions,
        sessions.uid("stranded"),
        status["sessionId"],
        fault="node lost",
        in_flight=MAX_LINES_IN_FLIGHT,
    )


def test_operator_restarts_adopt_the_running_pod(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    operator: OperatorProcess,
    transcript: TranscriptLoader,
    fault_ledger: FaultLedger,
) -> None:
    ns = sessions.namespace
    _, pod = start_blocked(sessions, scripted_api, "steady", "Done across operator restarts.")
    running_message = f"runner pod {pod} (attempt 1) is working on the session"
    running = sessions.wait("steady", lambda s: s.get("message") == running_message, what="Running")
    # A crash while the pod runs. Blank the status message meanwhile: the restarted operator
    # rewrites it from what it observes, which shows it has reconciled the session.
    operator.stop(kill=True)
    sessions.api.patch_namespaced_custom_object_status(
        "agents.dev",
        "v1alpha1",
        ns,
        "agentsessions",
        "steady",
        {"status": {"message": "the operator is restarting"}},
    )
    operator.start()
    sessions.wait("steady", lambda s: s.get("message") == running_message, what="reconciled")
    assert [p.metadata.name for p in sessions.pods("steady")] == [pod], "a second pod appeared"
    assert sessions.status("steady")["attempts"] == 1
    # A crash while the pod finishes: the restarted operator reads the result from the pod.
    with stopped(operator):
        open_gate(node, ns, pod, GATE)
        sessions.wait_pod("steady", lambda p: p.status.phase == "Succeeded", what="Succeeded")
        assert sessions.status("steady")["phase"] == "Running"  # nobody wrote it down yet
    status = sessions.wait("steady")
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 1
    assert status["resultPreview"] == "Done across operator restarts."
    assert status["sessionId"] == running["sessionId"]
    assert status["startTime"] == running["startTime"]
    assert [p.metadata.name for p in sessions.pods("steady")] == [pod]
    assert sessions.event_reasons("steady").count("Succeeded") == 1
    tally(
        fault_ledger,
        transcript,
        sessions,
        sessions.uid("steady"),
        status["sessionId"],
        fault="operator SIGKILLed (no leader election)",
    )


def test_cr_deleted_mid_run_stops_its_pod_and_processes(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    garbage_collector: None,
    transcript: TranscriptLoader,
    fault_ledger: FaultLedger,
) -> None:
    tag, pod = start_blocked(sessions, scripted_api, "abandoned", "must not be reached")
    runner_pid = node.container_pid(sessions.namespace, pod)
    assert runner_pid is not None
    uid, session_id = sessions.uid("abandoned"), sessions.status("abandoned")["sessionId"]
    sessions.delete("abandoned")
    sessions.wait_gone("abandoned")
    # The garbage collector deletes the pod through its ownerReference; the node stops it.
    wait_for(
        lambda: pod_gone(sessions.core, sessions.namespace, pod), timeout=60, what="pod deleted"
    )
    wait_for(lambda: not processes_with(f"{tag}-released"), timeout=30, what="the tool killed")
    wait_for(lambda: not alive(runner_pid), timeout=30, what="the runner stopped")
    assert sessions.pods("abandoned") == []
    assert len(scripted_api.requests_for(tag)) == 1
    # The transcript outlives the AgentSession in the store (S3 lifecycle rules retire it).
    tally(
        fault_ledger,
        transcript,
        sessions,
        uid,
        session_id,
        fault="AgentSession deleted mid-run",
        in_flight=MAX_LINES_IN_FLIGHT,
    )


def test_store_unreachable_is_retried_then_fails_clearly(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    operator: OperatorProcess,
    operator_factory: OperatorFactory,
    tenant_store: TenantStore,
    transcript: TranscriptLoader,
    fault_ledger: FaultLedger,
) -> None:
    tag, first = marker(), marker()
    scripted_api.route(first, sa.text("Stored."))
    server = urlsplit(tenant_store.server.endpoint_url)
    proxy = ToggleProxy(str(server.hostname), int(server.port or 80))
    # The main operator is down; this one (and its runners) reach S3 through a proxy we cut.
    with stopped(operator), contextlib.closing(proxy):
        broken = operator_factory.process(
            "broken-store", {"AGENTSESSION_S3_ENDPOINT_URL": proxy.url}
        )
        broken.start()
        try:
            # The operator cannot check the namespace's credentials: no pod, a clear message.
            proxy.down()
            sessions.create("first", {"prompt": f"{first}: store something"})
            pending = sessions.wait(
                "first",
                lambda s: "cannot vend store credentials" in (s.get("message") or ""),
                what="a message about the store credentials",
                timeout=60,
            )
            assert pending.get("phase") in (None, "Pending"), pending
            assert sessions.pods("first") == []
            assert "StoreCredentialsUnavailable" in sessions.event_reasons("first")
            # It recovers by itself once the store is back.
            proxy.up()
            recovered = sessions.wait("first", timeout=120)
            assert recovered["phase"] == "Succeeded", recovered
            tally(
                fault_ledger,
                transcript,
                sessions,
                sessions.uid("first"),
                recovered["sessionId"],
                fault="S3 down at start (before the pod)",
            )

            # The store goes away after the check: the runners cannot load the session.
            proxy.down()
            sessions.create("storeless", {"prompt": f"{tag}: never runs", "backoffLimit": 1})
            status = sessions.wait("storeless", timeout=180)
        finally:
            broken.stop()
    assert status["phase"] == "Failed", status
    assert status["reason"] == "BackoffLimitExceeded"
    assert status["attempts"] == 2
    assert "store" in status["message"]
    assert "2 attempts failed" in status["message"]
    assert sessions.event_reasons("storeless").count("AttemptFailed") == 1
    assert scripted_api.requests_for(tag) == []  # the agent never ran without its store
    tally(
        fault_ledger,
        transcript,
        sessions,
        sessions.uid("storeless"),
        status["sessionId"],
        fault="S3 down at start (after the credential check)",
        ran=False,
    )


def assert_operator_reconciles(sessions: Sessions, name: str) -> None:
    """A new AgentSession gets its status: kopf's watch works (again). Created suspended, so it
    costs no pod."""
    sessions.create(name, {"prompt": "a probe that never runs", "suspend": True})
    sessions.wait(name, lambda s: s.get("phase") == "Suspended", timeout=60, what="Suspended")


def finish_blocked(
    sessions: Sessions, node: LocalNode, name: str, pod: str, answer: str
) -> dict[str, object]:
    """Open the gate of `start_blocked`'s session; its one attempt must succeed."""
    open_gate(node, sessions.namespace, pod, GATE)
    status = sessions.wait(name)
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 1
    assert status["resultPreview"] == answer
    assert [p.metadata.name for p in sessions.pods(name)] == [pod]
    return status


def test_kubelet_restart_mid_run_keeps_the_running_pod(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    transcript: TranscriptLoader,
    fault_ledger: FaultLedger,
) -> None:
    ns, answer = sessions.namespace, "Done across a kubelet restart."
    _, pod = start_blocked(sessions, scripted_api, "kubelet", answer)
    runner = node.container_pid(ns, pod)
    assert runner is not None
    node.kill_kubelet()
    node.restart_kubelet()
    # The new kubelet adopted the running containers instead of starting them again.
    assert node.container_pid(ns, pod) == runner
    status = finish_blocked(sessions, node, "kubelet", pod, answer)
    tally(
        fault_ledger,
        transcript,
        sessions,
        sessions.uid("kubelet"),
        str(status["sessionId"]),
        fault="kubelet restarted",
    )


def test_api_server_restart_mid_run_changes_nothing(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    local_cluster: LocalCluster,
    operator: OperatorProcess,
    transcript: TranscriptLoader,
    fault_ledger: FaultLedger,
) -> None:
    answer = "Done across an API server restart."
    _, pod = start_blocked(sessions, scripted_api, "apiserver", answer)
    outage = local_cluster.restart_apiserver()
    print(f"kube-apiserver was unreachable for {outage:.1f}s")
    # The pod ends after the restart: the operator's pod watch sees it again.
    status = finish_blocked(sessions, node, "apiserver", pod, answer)
    assert_operator_reconciles(sessions, "after-apiserver")
    assert operator.process is not None
    assert operator.process.poll() is None
    tally(
        fault_ledger,
        transcript,
        sessions,
        sessions.uid("apiserver"),
        str(status["sessionId"]),
        fault="API server restarted",
    )


def test_etcd_restart_mid_run_changes_nothing(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    local_cluster: LocalCluster,
    operator: OperatorProcess,
    transcript: TranscriptLoader,
    fault_ledger: FaultLedger,
) -> None:
    answer = "Done across an etcd restart."
    _, pod = start_blocked(sessions, scripted_api, "etcd", answer)
    outage = local_cluster.restart_etcd()
    print(f"etcd restarted, API server ready again after {outage:.1f}s")
    status = finish_blocked(sessions, node, "etcd", pod, answer)
    assert_operator_reconciles(sessions, "after-etcd")
    assert operator.process is not None
    assert operator.process.poll() is None
    tally(
        fault_ledger,
        transcript,
        sessions,
        sessions.uid("etcd"),
        str(status["sessionId"]),
        fault="etcd restarted",
    )


def test_s3_down_mid_turn_loses_no_transcript_line(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    operator: OperatorProcess,
    operator_factory: OperatorFactory,
    tenant_store: TenantStore,
    transcript: TranscriptLoader,
    fault_ledger: FaultLedger,
) -> None:
    ns, answer = sessions.namespace, "Done across an S3 outage."
    server = urlsplit(tenant_store.server.endpoint_url)
    proxy = ToggleProxy(str(server.hostname), int(server.port or 80))
    # The main operator is down; this one's gateways reach S3 through a proxy we cut.
    with stopped(operator), contextlib.closing(proxy):
        flaky = operator_factory.process("flaky-store", {"AGENTSESSION_S3_ENDPOINT_URL": proxy.url})
        flaky.start()
        try:
            _, pod = start_blocked(sessions, scripted_api, "s3-outage", answer)
            proxy.down()
            open_gate(node, ns, pod, GATE)
            # The turn ends (the API is not behind S3); saving it fails and is retried.
            wait_for(
                lambda: "store_retry" in node.logs(ns, pod),
                timeout=90,
                what="the runner to retry a store write",
            )
            proxy.up()
            status = sessions.wait("s3-outage", timeout=120)
        finally:
            flaky.stop()
    assert status["phase"] == "Succeeded", status
    assert status["resultPreview"] == answer
    print(
        f"S3 outage mid-turn: {status['attempts']} attempt(s), {proxy.refused} connections refused"
    )
    tally(
        fault_ledger,
        transcript,
        sessions,
        sessions.uid("s3-outage"),
        status["sessionId"],
        fault="S3 down mid-turn",
    )


def test_gateway_killed_mid_run_the_attempt_is_retried_and_charged(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    transcript: TranscriptLoader,
    fault_ledger: FaultLedger,
) -> None:
    ns, answer = sessions.namespace, "Done across a gateway restart."
    _, pod = start_blocked(sessions, scripted_api, "gateway", answer)
    gateway = node.container_pid(ns, pod, "gateway")
    assert gateway is not None
    assert b"agentsession-gateway" in Path(f"/proc/{gateway}/cmdline").read_bytes()
    os.kill(gateway, signal.SIGKILL)
    # The agent's next request meets the dead gateway (it takes seconds to come back): no answer.
    open_gate(node, ns, pod, GATE)
    status = sessions.wait("gateway")
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    assert status["resultPreview"] == answer
    failed = next(e for e in sessions.events("gateway") if e.reason == "AttemptFailed")
    assert "got no answer" in failed.message
    # A native sidecar: the kubelet restarted it; it continued from its state volume (same port,
    # token and meter), so the request before the kill is charged, and the one that met the
    # dead gateway is not (it never reached the API).
    first = sessions.pods("gateway")[0]
    restarted = next(s for s in first.status.init_container_statuses if s.name == "gateway")
    assert restarted.restart_count == 1
    stopped_report = [
        json.loads(line)["report"]
        for line in node.logs(ns, pod, "gateway").splitlines()
        if "Gateway stopped" in line
    ]
    assert [r["requests"] for r in stopped_report] == [1]
    assert status["numTurns"] == 2, status  # one request in each attempt
    tally(
        fault_ledger,
        transcript,
        sessions,
        sessions.uid("gateway"),
        status["sessionId"],
        fault="gateway killed mid-run",
    )


LEADER_ELECTION = {
    "AGENTSESSION_LEADER_ELECTION": "true",
    "AGENTSESSION_LEADER_ELECTION_NAMESPACE": OPERATOR_NAMESPACE,
}


def delete_lease(cluster: LocalCluster) -> None:
    """No Lease left behind: the next elected operator need not wait one out."""
    api_client = cluster.api_client()
    try:
        with contextlib.suppress(client.ApiException):
            client.CoordinationV1Api(api_client).delete_namespaced_lease(LEASE, OPERATOR_NAMESPACE)
    finally:
        api_client.close()


def test_leader_killed_mid_run_the_standby_finishes_the_session(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    local_cluster: LocalCluster,
    operator: OperatorProcess,
    operator_factory: OperatorFactory,
    transcript: TranscriptLoader,
    fault_ledger: FaultLedger,
) -> None:
    answer = "Done across a failover."
    delete_lease(local_cluster)
    # Two elected replicas replace the main operator (which runs without election) meanwhile.
    with stopped(operator):
        leader, standby = (
            operator_factory.process(name, {**LEADER_ELECTION, "POD_NAME": name})
            for name in ("replica-a", "replica-b")
        )
        try:
            leader.start()
            wait_for(lambda: leader.leader_gauge() == 1, timeout=30, what="replica-a to lead")
            standby.start()
            assert standby.leader_gauge() == 0
            _, pod = start_blocked(sessions, scripted_api, "failover", answer)
            leader.stop(kill=True)
            # The pod finishes while nobody leads; the standby takes over and writes it down.
            status = finish_blocked(sessions, node, "failover", pod, answer)
            assert standby.leader_gauge() == 1
        finally:
            leader.stop(kill=True)
            standby.stop()
            delete_lease(local_cluster)
    assert sessions.event_reasons("failover").count("Succeeded") == 1
    tally(
        fault_ledger,
        transcript,
        sessions,
        sessions.uid("failover"),
        str(status["sessionId"]),
        fault="operator leader SIGKILLed",
    )
