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

from tests.e2e.conftest import (
    OperatorFactory,
    Sessions,
    TranscriptLoader,
    gate_command,
    marker,
    open_gate,
    stopped,
)
from tests.support import scripted_api as sa
from tests.support.cluster import pod_gone, wait_for
from tests.support.node import LocalNode
from tests.support.operator_process import OperatorProcess
from tests.support.runner_harness import LOCAL_ONLY_TYPES
from tests.support.s3server import TenantStore
from tests.support.tcp_proxy import ToggleProxy

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]

GATE = "release"
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

    status = sessions.wait("oom-final", timeout=180)
    assert status["phase"] == "Failed", status
    assert status["reason"] == "BackoffLimitExceeded"
    assert status["attempts"] == 1
    assert "backoffLimit 0" in status["message"]
    assert "OOMKilled" in status["message"]
    assert len(sessions.pods("oom-final")) == 1
    # The kill took the whole container: its tool processes too.
    wait_for(lambda: not processes_with("time.sleep(300)"), timeout=30, what="allocators gone")


def test_deleted_pod_gets_a_new_attempt(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, node: LocalNode
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


def test_runner_killed_mid_turn_gets_a_new_attempt_that_resumes(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    transcript: TranscriptLoader,
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


def test_node_loss_gets_a_new_attempt_on_the_recovered_node(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, node: LocalNode
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


def test_operator_restarts_adopt_the_running_pod(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    operator: OperatorProcess,
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


def test_cr_deleted_mid_run_stops_its_pod_and_processes(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    garbage_collector: None,
) -> None:
    tag, pod = start_blocked(sessions, scripted_api, "abandoned", "must not be reached")
    runner_pid = node.container_pid(sessions.namespace, pod)
    assert runner_pid is not None
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


def test_store_unreachable_is_retried_then_fails_clearly(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    operator: OperatorProcess,
    operator_factory: OperatorFactory,
    tenant_store: TenantStore,
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
            assert sessions.wait("first", timeout=120)["phase"] == "Succeeded"

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
