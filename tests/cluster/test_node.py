"""Proves the local node is a real one: the kubelet and containerd run our runner image as pods.

Status and termination messages, logs through the API server, restarts, deadlines, real OOM kills
by the kernel, private emptyDirs, env and volumes, the production hardening as the container
sees it, and node loss through the node-lifecycle controller. Run by `make test` /
`pytest tests/cluster` (marker `cluster`); uses the tests/cluster fixtures.
"""

from __future__ import annotations

import base64
import os
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
from tests.support.node import CGROUP_ROOT, LocalNode

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
    core: client.CoreV1Api, node: LocalNode, runner_image: str, namespace: str
) -> None:
    pod = restricted_pod(
        "hello",
        ["sh", "-c", 'echo "hello from $(POD_NAME) as $(id -u):$(id -g)" > /dev/termination-log'],
        image=runner_image,
        env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    )
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(core, namespace, "hello", pod_phase_in(*TERMINAL), what="to finish")
    assert done.status.phase == "Succeeded"
    assert done.spec.node_name == node.name
    assert done.status.start_time is not None
    (status,) = done.status.container_statuses
    assert status.image_id, "containerd reports the image it ran"
    assert status.container_id.startswith("containerd://")
    terminated = _terminated(done)
    assert terminated.exit_code == 0
    assert terminated.reason == "Completed"
    assert terminated.message == "hello from hello as 65532:65532\n"
    assert terminated.started_at <= terminated.finished_at
    ready = {c.type: c for c in done.status.conditions}["Ready"]
    assert (ready.status, ready.reason) == ("False", "PodCompleted")


def test_container_sees_the_production_hardening(
    core: client.CoreV1Api, runner_image: str, namespace: str
) -> None:
    script = (
        "{ id -u; touch /etc/probe 2>/dev/null && echo root-writable || echo root-read-only; "
        "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t' ' '; "
        "cat /proc/self/cgroup | grep -c ':memory:/" + CGROUP_ROOT + "/kubepods/'; "
        "} > /dev/termination-log"
    )
    pod = restricted_pod("hardened", ["sh", "-c", script], image=runner_image)
    pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = True
    pod["spec"]["containers"][0]["resources"] = {"limits": {"memory": "128Mi", "cpu": "500m"}}
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(core, namespace, "hardened", pod_phase_in(*TERMINAL), what="to finish")
    assert done.status.phase == "Succeeded"
    assert _terminated(done).message.splitlines() == [
        "65532",
        "root-read-only",
        "CapEff: 0000000000000000",
        "NoNewPrivs: 1",
        "Seccomp: 2",  # RuntimeDefault: a filter is installed
        "1",  # in a pod cgroup under the kubelet's own cgroup root
    ]


def test_running_pod_is_ready_and_deletion_stops_its_container(
    core: client.CoreV1Api, node: LocalNode, runner_image: str, namespace: str
) -> None:
    pod = restricted_pod("sleeper", ["sleep", "300"], image=runner_image)
    core.create_namespaced_pod(namespace, pod)
    running = wait_for_pod(core, namespace, "sleeper", pod_phase_in("Running"), what="to run")
    (status,) = running.status.container_statuses
    assert status.ready
    assert status.state.running.started_at is not None
    assert {c.type: c.status for c in running.status.conditions}["Ready"] == "True"
    pid = node.container_pid(namespace, "sleeper")
    assert pid is not None
    assert _pid_alive(pid)
    assert os.stat(f"/proc/{pid}").st_uid == 65532

    core.delete_namespaced_pod("sleeper", namespace)
    wait_for(lambda: pod_gone(core, namespace, "sleeper"), timeout=60, what="the pod to go")
    assert not _pid_alive(pid)


def test_failing_command_reports_exit_code_and_logs_through_the_api(
    local_cluster: LocalCluster,
    core: client.CoreV1Api,
    node: LocalNode,
    runner_image: str,
    namespace: str,
) -> None:
    pod = restricted_pod(
        "failing",
        ["sh", "-c", "echo something broke; exit 3"],
        image=runner_image,
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(core, namespace, "failing", pod_phase_in(*TERMINAL), what="to finish")
    assert done.status.phase == "Failed"
    terminated = _terminated(done)
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert "something broke" in terminated.message
    assert node.logs(namespace, "failing") == "something broke"
    # kubectl logs goes API server -> kubelet (client certificate, webhook authorization).
    logs = local_cluster.kubectl("logs", "-n", namespace, "failing")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "something broke\n"


def test_on_failure_restarts_until_success_keeping_the_empty_dir(
    core: client.CoreV1Api, runner_image: str, namespace: str
) -> None:
    script = "test -e /pod-scratch/ran && exit 0; touch /pod-scratch/ran; exit 7"
    pod = restricted_pod(
        "flaky",
        ["sh", "-c", script],
        image=runner_image,
        volumeMounts=[{"name": "scratch", "mountPath": "/pod-scratch"}],
    )
    pod["spec"]["restartPolicy"] = "OnFailure"
    pod["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(
        core, namespace, "flaky", pod_phase_in(*TERMINAL), timeout=90, what="to finish"
    )
    assert done.status.phase == "Succeeded"
    (status,) = done.status.container_statuses
    # The second run found the first one's file: the emptyDir outlived the container.
    assert status.restart_count == 1
    assert status.state.terminated.exit_code == 0


def test_active_deadline_fails_pod_with_deadline_exceeded(
    core: client.CoreV1Api, runner_image: str, namespace: str
) -> None:
    pod = restricted_pod("slow", ["sleep", "300"], image=runner_image)
    pod["spec"]["activeDeadlineSeconds"] = 2
    pod["spec"]["terminationGracePeriodSeconds"] = 1
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(core, namespace, "slow", pod_phase_in(*TERMINAL), timeout=60)
    assert (done.status.phase, done.status.reason) == ("Failed", "DeadlineExceeded")


def test_kernel_oom_kills_a_container_past_its_memory_limit(
    core: client.CoreV1Api, runner_image: str, namespace: str
) -> None:
    grow = "x = []\nwhile True:\n    x.append(bytearray(8 << 20))\n"
    pod = restricted_pod("hungry", ["python3", "-c", grow], image=runner_image)
    pod["spec"]["containers"][0]["resources"] = {"limits": {"memory": "64Mi", "cpu": "500m"}}
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(core, namespace, "hungry", pod_phase_in(*TERMINAL), timeout=60)
    assert done.status.phase == "Failed"
    terminated = _terminated(done)
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")


def test_empty_dir_is_private_per_pod(
    core: client.CoreV1Api, node: LocalNode, runner_image: str, namespace: str
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
            image=runner_image,
            env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            volumeMounts=[{"name": "scratch", "mountPath": mount_path}],
        )
        pod["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
        core.create_namespaced_pod(namespace, pod)

    def both_wrote() -> bool:
        paths = [node.volume_path(namespace, n, "scratch") / "mine" for n in names]
        return all(p.exists() and p.read_text().strip() for p in paths)

    wait_for(both_wrote, timeout=60, what="both pods to write their file")

    # Both containers run at the same time, each with its own /pod-scratch.
    def both_running() -> list[int] | None:
        found = [node.container_pid(namespace, n) for n in names]
        return [pid for pid in found if pid] if all(found) else None

    pids = wait_for(both_running, timeout=30, what="both containers reported running")
    assert all(_pid_alive(pid) for pid in pids)
    assert not Path(mount_path, "mine").exists(), "a pod wrote to the host's directory"
    for name in names:
        (node.volume_path(namespace, name, "scratch") / "release").write_text("go\n")
    for name in names:
        done = wait_for_pod(core, namespace, name, pod_phase_in(*TERMINAL), timeout=30)
        assert done.status.phase == "Succeeded"
        assert _terminated(done).message == f"mine\nrelease\n{name}\n"


def test_env_and_volumes_are_resolved_by_the_kubelet(
    core: client.CoreV1Api, node: LocalNode, runner_image: str, namespace: str
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
        image=runner_image,
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
            {"name": "work", "mountPath": "/pod-work"},
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
        {"name": "work", "emptyDir": {}},
    ]
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(core, namespace, "envy", pod_phase_in(*TERMINAL), what="to finish")
    assert done.status.phase == "Succeeded", node.logs(namespace, "envy")
    lines = _terminated(done).message.splitlines()
    assert lines == [
        f"s3cret fast 3 {namespace} hi-fast",
        "/pod-work",
        "envy",
        "fast",
        "65532 2000",
    ]


def test_service_account_token_is_projected_for_in_cluster_clients(
    core: client.CoreV1Api, node: LocalNode, runner_image: str, namespace: str
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
        image=runner_image,
    )
    pod["spec"]["automountServiceAccountToken"] = True
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(core, namespace, "incluster", pod_phase_in(*TERMINAL), what="to finish")
    assert done.status.phase == "Succeeded", node.logs(namespace, "incluster")
    service_ip = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    assert _terminated(done).message == f"{namespace} {service_ip}\n"


def test_job_controller_completes_job_on_the_node(
    local_cluster: LocalCluster, runner_image: str, namespace: str
) -> None:
    batch = client.BatchV1Api(local_cluster.api_client())
    template = restricted_pod("unused", ["sh", "-c", "exit 0"], image=runner_image)
    job = {
        "metadata": {"name": "once"},
        "spec": {"backoffLimit": 0, "template": {"spec": template["spec"]}},
    }
    batch.create_namespaced_job(namespace, job)

    def complete() -> bool:
        status = batch.read_namespaced_job_status("once", namespace).status
        return any(c.type == "Complete" and c.status == "True" for c in status.conditions or [])

    wait_for(complete, timeout=60, what="Job once to complete")


def test_node_loss_evicts_pods_and_the_returning_kubelet_stops_them(
    core: client.CoreV1Api, node: LocalNode, runner_image: str, namespace: str
) -> None:
    pod = restricted_pod("stranded", ["sleep", "300"], image=runner_image)
    core.create_namespaced_pod(namespace, pod)
    wait_for_pod(core, namespace, "stranded", pod_phase_in("Running"), what="to run")
    pid = node.container_pid(namespace, "stranded")
    assert pid is not None

    node.kill_kubelet()
    try:

        def unreachable() -> bool:
            found = core.read_node(node.name)
            ready = {c.type: c.status for c in found.status.conditions}["Ready"]
            taints = {t.key for t in found.spec.taints or []}
            return ready == "Unknown" and "node.kubernetes.io/unreachable" in taints

        wait_for(unreachable, timeout=60, what="the node lifecycle controller to mark it lost")
        # The administrator's move for a node that is down: its pods are evicted and, since no
        # kubelet confirms, force-deleted by the pod garbage collector.
        node.set_out_of_service(True)
        wait_for(lambda: pod_gone(core, namespace, "stranded"), timeout=60, what="the pod to go")
        assert _pid_alive(pid), "a lost node's containers run on until it comes back"
    finally:
        # Lifted before the kubelet returns: a pod bound while the taint-eviction controller still
        # sees the taint would be evicted too (its node view lags the scheduler's).
        node.set_out_of_service(False)
        node.restart_kubelet()
    # The returning kubelet stops what the API no longer has.
    wait_for(lambda: not _pid_alive(pid), timeout=60, what="its container to stop")

    def untainted() -> bool:
        taints = core.read_node(node.name).spec.taints or []
        return not [t for t in taints if t.key.startswith("node.kubernetes.io/")]

    wait_for(untainted, timeout=60, what="the node's taints to be lifted")
