"""Proves the node agent runs pods like a kubelet: status, env, volumes, deadlines, faults.

Run by `make test` / `pytest tests/cluster` (marker `cluster`); uses the tests/cluster fixtures.
"""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from tests.support.cluster import (
    LocalCluster,
    pod_gone,
    pod_phase_in,
    restricted_pod,
    wait_for,
    wait_for_pod,
)
from tests.support.node_agent import OOM_ANNOTATION, NodeAgent

pytestmark = pytest.mark.cluster

TERMINAL = ("Succeeded", "Failed")


def _terminated(pod: client.V1Pod) -> client.V1ContainerStateTerminated:
    (status,) = pod.status.container_statuses
    assert status.state.terminated is not None, status.state
    return status.state.terminated


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_pod_runs_to_succeeded_with_termination_message(
    core: client.CoreV1Api, node_agent: NodeAgent, namespace: str
) -> None:
    pod = restricted_pod(
        "hello",
        ["sh", "-c", 'echo "hello from $(POD_NAME) as $(id -u):$(id -g)" > /dev/termination-log'],
        env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    )
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(core, namespace, "hello", pod_phase_in(*TERMINAL), what="to finish")
    assert done.status.phase == "Succeeded"
    assert done.spec.node_name == node_agent.node_name
    assert done.status.start_time is not None
    terminated = _terminated(done)
    assert terminated.exit_code == 0
    assert terminated.reason == "Completed"
    assert terminated.message == "hello from hello as 65532:65532\n"
    assert terminated.started_at <= terminated.finished_at
    ready = {c.type: c for c in done.status.conditions}["Ready"]
    assert (ready.status, ready.reason) == ("False", "PodCompleted")


def test_running_pod_is_ready_and_deletion_kills_its_process(
    core: client.CoreV1Api, node_agent: NodeAgent, namespace: str
) -> None:
    core.create_namespaced_pod(namespace, restricted_pod("sleeper", ["sleep", "300"]))
    running = wait_for_pod(core, namespace, "sleeper", pod_phase_in("Running"), what="to run")
    (status,) = running.status.container_statuses
    assert status.ready
    assert status.state.running.started_at is not None
    assert {c.type: c.status for c in running.status.conditions}["Ready"] == "True"
    pid = node_agent.pid(namespace, "sleeper")
    assert pid is not None
    assert _pid_alive(pid)
    assert os.stat(f"/proc/{pid}").st_uid == 65532

    core.delete_namespaced_pod("sleeper", namespace)
    wait_for(lambda: pod_gone(core, namespace, "sleeper"), timeout=30, what="the pod to go")
    assert not _pid_alive(pid)


def test_failing_command_reports_exit_code_and_log_fallback(
    core: client.CoreV1Api, node_agent: NodeAgent, namespace: str
) -> None:
    pod = restricted_pod(
        "failing",
        ["sh", "-c", "echo something broke; exit 3"],
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(core, namespace, "failing", pod_phase_in(*TERMINAL), what="to finish")
    assert done.status.phase == "Failed"
    terminated = _terminated(done)
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert "something broke" in terminated.message
    assert "something broke" in node_agent.logs(namespace, "failing")


def test_on_failure_restarts_until_success_keeping_the_empty_dir(
    core: client.CoreV1Api, node_agent: NodeAgent, namespace: str
) -> None:
    script = "test -e /pod-scratch/ran && exit 0; touch /pod-scratch/ran; exit 7"
    pod = restricted_pod(
        "flaky",
        ["sh", "-c", script],
        volumeMounts=[{"name": "scratch", "mountPath": "/pod-scratch"}],
    )
    pod["spec"]["restartPolicy"] = "OnFailure"
    pod["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(core, namespace, "flaky", pod_phase_in(*TERMINAL), what="to finish")
    assert done.status.phase == "Succeeded"
    (status,) = done.status.container_statuses
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 7
    assert status.state.terminated.exit_code == 0


def test_active_deadline_fails_pod_with_deadline_exceeded(
    core: client.CoreV1Api, node_agent: NodeAgent, namespace: str
) -> None:
    pod = restricted_pod("slow", ["sleep", "300"])
    pod["spec"]["activeDeadlineSeconds"] = 2
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(core, namespace, "slow", pod_phase_in(*TERMINAL), timeout=30)
    assert (done.status.phase, done.status.reason) == ("Failed", "DeadlineExceeded")
    assert _terminated(done).exit_code == 143  # SIGTERM ended `sleep`


@pytest.mark.parametrize("trigger", ["annotation", "method"])
def test_simulated_oom_kill(
    core: client.CoreV1Api, node_agent: NodeAgent, namespace: str, trigger: str
) -> None:
    pod = restricted_pod("hungry", ["sleep", "300"])
    if trigger == "annotation":
        pod["metadata"]["annotations"] = {OOM_ANNOTATION: "1"}
    core.create_namespaced_pod(namespace, pod)
    if trigger == "method":
        wait_for(lambda: node_agent.pid(namespace, "hungry"), timeout=30, what="the process")
        node_agent.oom_kill(namespace, "hungry")
    done = wait_for_pod(core, namespace, "hungry", pod_phase_in(*TERMINAL), timeout=30)
    assert done.status.phase == "Failed"
    terminated = _terminated(done)
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")


def test_empty_dir_is_private_per_pod(
    core: client.CoreV1Api, node_agent: NodeAgent, namespace: str
) -> None:
    mount_path = "/pod-scratch"
    script = (
        "echo $(POD_NAME) > /pod-scratch/mine; "
        "while [ ! -e /pod-scratch/release ]; do sleep 0.1; done; "
        "ls -A /pod-scratch > /dev/termination-log; cat /pod-scratch/mine >> /dev/termination-log"
    )
    names = ["writer-a", "writer-b"]
    for name in names:
        pod = restricted_pod(
            name,
            ["sh", "-c", script],
            env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            volumeMounts=[{"name": "scratch", "mountPath": mount_path}],
        )
        pod["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
        core.create_namespaced_pod(namespace, pod)

    def both_wrote() -> bool:
        paths = [node_agent.volume_path(namespace, n, "scratch") / "mine" for n in names]
        return all(p.exists() and p.read_text().strip() for p in paths)

    wait_for(both_wrote, timeout=30, what="both pods to write their file")
    # Both processes run at the same time, each with its own /pod-scratch.
    pids = [node_agent.pid(namespace, n) for n in names]
    assert all(pid is not None and _pid_alive(pid) for pid in pids)
    assert not Path(mount_path, "mine").exists(), "a pod wrote to the host's directory"
    for name in names:
        (node_agent.volume_path(namespace, name, "scratch") / "release").write_text("go\n")
    for name in names:
        done = wait_for_pod(core, namespace, name, pod_phase_in(*TERMINAL), timeout=30)
        assert done.status.phase == "Succeeded"
        assert _terminated(done).message == f"mine\nrelease\n{name}\n"


def test_env_and_volumes_are_resolved_like_a_kubelet(
    core: client.CoreV1Api, node_agent: NodeAgent, namespace: str
) -> None:
    secret_value = base64.b64encode(b"s3cret").decode()
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "data": {"token": secret_value}}
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"mode": "fast", "LEVEL": "3"}}
    )
    script = (
        "{ echo $TOKEN $MODE $LEVEL $NS $GREETING; pwd; cat /etc/podinfo/name; echo; "
        "cat /etc/settings/mode; echo; id -G; } > /dev/termination-log"
    )
    pod = restricted_pod(
        "envy",
        ["sh", "-c", script],
        workingDir="/pod-work",
        env=[
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "GREETING", "value": "hi-$(MODE)"},
        ],
        envFrom=[{"configMapRef": {"name": "settings"}}],
        volumeMounts=[
            {"name": "podinfo", "mountPath": "/etc/podinfo"},
            {"name": "settings", "mountPath": "/etc/settings"},
        ],
    )
    pod["spec"]["securityContext"]["fsGroup"] = 2000
    pod["spec"]["volumes"] = [
        {
            "name": "podinfo",
            "downwardAPI": {
                "items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]
            },
        },
        {"name": "settings", "configMap": {"name": "settings"}},
    ]
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(core, namespace, "envy", pod_phase_in(*TERMINAL), what="to finish")
    assert done.status.phase == "Succeeded", node_agent.logs(namespace, "envy")
    lines = _terminated(done).message.splitlines()
    assert lines == [
        f"s3cret fast 3 {namespace} hi-fast",
        "/pod-work",
        "envy",
        "fast",
        "65532 2000",
    ]


def test_service_account_token_is_projected_for_in_cluster_clients(
    local_cluster: LocalCluster, core: client.CoreV1Api, node_agent: NodeAgent, namespace: str
) -> None:
    pod = restricted_pod(
        "incluster",
        [
            "sh",
            "-c",
            "d=/var/run/secrets/kubernetes.io/serviceaccount; "
            "test -s $d/token && test -s $d/ca.crt && cat $d/namespace > /dev/termination-log; "
            'echo " $KUBERNETES_SERVICE_HOST" >> /dev/termination-log',
        ],
    )
    pod["spec"]["automountServiceAccountToken"] = True
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(core, namespace, "incluster", pod_phase_in(*TERMINAL), what="to finish")
    assert done.status.phase == "Succeeded", node_agent.logs(namespace, "incluster")
    assert _terminated(done).message == f"{namespace} 127.0.0.1\n"


def test_job_controller_completes_job_on_the_node(
    local_cluster: LocalCluster, node_agent: NodeAgent, namespace: str
) -> None:
    batch = client.BatchV1Api(local_cluster.api_client())
    template = restricted_pod("unused", ["sh", "-c", "exit 0"])
    job = {
        "metadata": {"name": "once"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": template["spec"]},
        },
    }
    batch.create_namespaced_job(namespace, job)

    def complete() -> bool:
        status = batch.read_namespaced_job_status("once", namespace).status
        return any(c.type == "Complete" and c.status == "True" for c in status.conditions or [])

    wait_for(complete, timeout=60, what="Job once to complete")


def test_simulated_node_loss_fails_pods(
    local_cluster: LocalCluster, core: client.CoreV1Api, namespace: str
) -> None:
    node_name = f"doomed-{uuid.uuid4().hex[:6]}"
    agent = NodeAgent(local_cluster.kubeconfig, node_name, max_grace_seconds=5)
    agent.start()
    try:
        pod = restricted_pod("stranded", ["sleep", "300"])
        pod["spec"]["nodeName"] = node_name
        core.create_namespaced_pod(namespace, pod)
        wait_for_pod(core, namespace, "stranded", pod_phase_in("Running"), what="to run")
        pid = agent.pid(namespace, "stranded")
        assert pid is not None
        assert _pid_alive(pid)

        agent.simulate_node_loss(delete_pods=False)
        assert not _pid_alive(pid)
        lost = core.read_namespaced_pod("stranded", namespace)
        assert (lost.status.phase, lost.status.reason) == ("Failed", "NodeLost")
        node = core.read_node(node_name)
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "Unknown"
        assert {t.key for t in node.spec.taints} == {"node.kubernetes.io/unreachable"}
    finally:
        agent.stop()
        core.delete_node(node_name)
