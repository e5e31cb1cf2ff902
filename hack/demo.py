"""`make demo`: the whole product on a local cluster with a real node, in one command.

Builds (once, cached) the control plane, the kubelet and both images, starts etcd +
kube-apiserver + kube-controller-manager + kube-scheduler and a real node (containerd + kubelet),
an S3 server (moto), and installs the Helm chart: the operator runs in a pod from its own image.
It applies examples/hello.yaml as a user would, waits for `condition=Succeeded`, and prints
`kubectl get ags`, where the runner ran (node, image, container runtime) and where the transcript
lives. Offline the runner's CLI talks to the scripted Messages API; with ANTHROPIC_API_KEY set it
talks to the real API. Everything it started is stopped at the end, unless `--keep` leaves it
running (then `make demo-down` stops it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from kubernetes import client  # noqa: E402

from agentsession_gateway.s3 import open_store  # noqa: E402
from tests.support import scripted_api as sa  # noqa: E402
from tests.support.cluster import LocalCluster, ensure_binaries, free_port, wait_for  # noqa: E402
from tests.support.helm import CHART, Helm, local_node_values  # noqa: E402
from tests.support.node import IMAGES_SCRIPT, LocalNode  # noqa: E402
from tests.support.runner_harness import TEST_API_KEY  # noqa: E402
from tests.support.s3server import TenantStore  # noqa: E402
from tests.support.session_secrets import add_session_secrets  # noqa: E402

DEMO_DIR = REPO / ".demo"
NAMESPACE = "demo"
OPERATOR_NAMESPACE = "agentsession-system"
OPERATOR_SECRET = "agentsession-operator-aws"  # noqa: S105 - a Secret's name
EXAMPLE = REPO / "examples" / "hello.yaml"
STEPS = 8


def step(number: int, text: str) -> None:
    print(f"[{number}/{STEPS}] {text}", flush=True)


def kubectl_json(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    result = cluster.kubectl("get", *args, "-o", "json")
    return json.loads(result.stdout) if result.returncode == 0 else {}


def transcript_lines(
    store_url: str, namespace_uid: str | None, session_id: str, env: dict[str, str]
) -> int:
    os.environ.update(env)
    store = open_store(store_url, NAMESPACE, namespace_uid)
    entries = asyncio.run(store.load({"project_key": "sessions", "session_id": session_id}))
    return len(entries or [])


def install_operator(
    cluster: LocalCluster,
    node: LocalNode,
    bin_dir: Path,
    store: TenantStore,
    api: sa.ScriptedAPI | None,
) -> dict[str, Any]:
    """`helm install` the chart with the local-node values; returns the operator pod once Ready."""
    created = cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    assert created.returncode == 0, created.stderr
    api_client = cluster.api_client()
    try:  # the identity the operator assumes the namespaces' store roles with
        core = client.CoreV1Api(api_client)
        core.create_namespaced_secret(OPERATOR_NAMESPACE, store.operator_secret(OPERATOR_SECRET))
    finally:
        api_client.close()
    values: dict[str, Any] = {
        **local_node_values(cluster.server, node.images),
        "store": store.chart_values(OPERATOR_SECRET),
        "limits": {"maxBudgetUsd": {"default": 0.25}},
        "metrics": {"port": free_port()},
        "health": {"port": free_port()},
    }
    if api is not None:
        values["anthropic"] = {"baseUrl": api.base_url}
        values["runner"]["defaultModel"] = "claude-sonnet-4-5"
    values_file = DEMO_DIR / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    helm = Helm(bin_dir, DEMO_DIR / "helm", cluster.kubeconfig)
    helm.run(
        "install",
        "agentsession",
        str(CHART),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--take-ownership",  # the CRD the cluster already installed from crds/
        "--values",
        str(values_file),
        "--wait",
        "--timeout=180s",
        timeout=200,
    )
    selector = "app.kubernetes.io/component=operator"
    found = kubectl_json(cluster, "pods", "-n", OPERATOR_NAMESPACE, "-l", selector)
    (pod,) = found["items"]
    result: dict[str, Any] = pod
    return result


def describe_pod(pod: dict[str, Any], info: dict[str, Any]) -> str:
    """Where a pod ran: node, kubelet, container runtime, image, container."""
    (container,) = pod["status"]["containerStatuses"]
    return (
        f"pod {pod['metadata']['name']} on node {pod['spec']['nodeName']} "
        f"(kubelet {info.get('kubeletVersion')}, {info.get('containerRuntimeVersion')}), "
        f"image {container['image']}, container {container['containerID'][:25]}..."
    )


def run(keep: bool) -> int:
    real_key = os.environ.get("ANTHROPIC_API_KEY")
    if os.geteuid() != 0:
        print("make demo runs a real kubelet and containerd: it needs root (or use make kind-e2e)")
        return 1
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir(parents=True)
    step(1, "Control-plane and node binaries (built from the Go module proxy once, then cached)")
    bin_dir = ensure_binaries(stream=sys.stdout)
    step(2, "Images: operator/Dockerfile and runner-image/Dockerfile (make images; cached)")
    subprocess.run(
        [sys.executable, str(IMAGES_SCRIPT), "build"], check=True, stdout=subprocess.DEVNULL
    )
    step(3, "Starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler; the CRD")
    cluster = LocalCluster(DEMO_DIR / "cluster", bin_dir=bin_dir, detach=keep)
    cluster.start()
    stack: list[Any] = [cluster]
    try:
        step(4, "Starting the node: containerd and the kubelet; importing both images")
        node = LocalNode(
            cluster.kubeconfig,
            bin_dir=bin_dir,
            client_ca_file=cluster.kubelet_client_ca,
            logs_dir=cluster.logs_dir,
            detach=keep,
        )
        node.start()
        stack.append(node)
        node_info = kubectl_json(cluster, "node", node.name)["status"]["nodeInfo"]
        print(
            f"      node {node.name} Ready: kubelet {node_info['kubeletVersion']}, "
            f"{node_info['containerRuntimeVersion']}"
        )
        step(5, "Starting S3 (moto, IAM enforced) and, offline, the scripted Messages API")
        store = TenantStore("agentsessions-demo")
        stack.append(store)
        store.provision(NAMESPACE)  # the role the operator assumes for the demo namespace
        api: sa.ScriptedAPI | None = None
        if real_key:
            print("      ANTHROPIC_API_KEY is set: runner pods call the real Anthropic API")
        else:
            print("      No ANTHROPIC_API_KEY: runner pods call the scripted Messages API")
            api = sa.ScriptedAPI().start()
            stack.append(api)
            prompt = yaml.safe_load(EXAMPLE.read_text())["spec"]["prompt"]
            api.route(prompt, sa.text("Hello\nHola\nBonjour\nHallo\nCiao"))
        step(6, "helm install charts/agentsession-operator (the operator from its image)")
        operator_pod = install_operator(cluster, node, bin_dir, store, api)
        print("      operator: " + describe_pod(operator_pod, node_info))
        created = cluster.kubectl("create", "namespace", NAMESPACE)
        assert created.returncode == 0, created.stderr
        add_session_secrets(cluster, NAMESPACE, real_key or TEST_API_KEY)
        step(7, f"kubectl apply -f {EXAMPLE.relative_to(REPO)}; kubectl wait")
        applied = cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLE))
        print("      " + (applied.stdout or applied.stderr).strip())
        started = time.monotonic()
        waited = cluster.kubectl(
            "wait",
            "-n",
            NAMESPACE,
            "--for=condition=Succeeded",
            "agentsession/hello",
            "--timeout=300s",
            timeout=320,
        )
        print(
            f"      {(waited.stdout or waited.stderr).strip()} ({time.monotonic() - started:.1f}s)"
        )
        step(8, "kubectl get ags")
        table = cluster.kubectl("get", "ags", "-n", NAMESPACE, "-o", "wide")
        print("\n".join("      " + line for line in table.stdout.splitlines()))
        status = kubectl_json(cluster, "agentsession", "hello", "-n", NAMESPACE).get("status", {})
        if status.get("podName"):
            runner = kubectl_json(cluster, "pod", status["podName"], "-n", NAMESPACE)
            print("\n      runner:      " + describe_pod(runner, node_info))
            ended = runner["status"]["containerStatuses"][0]["state"].get("terminated", {})
            print(f"      exit code:   {ended.get('exitCode')} ({ended.get('reason')})")
        print(f"      result:      {status.get('resultPreview', '')!r}")
        print(f"      transcript:  {status.get('transcriptRef')}")
        print(f"      full result: {status.get('resultRef')}")
        if status.get("sessionId"):
            lines = transcript_lines(
                store.url, status.get("namespaceUid"), status["sessionId"], store.reader_env()
            )
            endpoint = store.server.endpoint_url
            print(f"      ({lines} transcript lines in the S3 store at {endpoint})")
        if keep:
            print(f"\nLeft running. KUBECONFIG={cluster.kubeconfig} {bin_dir}/kubectl get ags -A")
            print("Stop everything with: make demo-down")
            (DEMO_DIR / "demo.pid").write_text(str(os.getpid()))
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
            signal.sigwait({signal.SIGTERM, signal.SIGINT})
        return 0 if waited.returncode == 0 else 1
    finally:
        for part in reversed(stack):
            part.stop()


def down() -> int:
    pid_file = DEMO_DIR / "demo.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=90, what="the demo to stop")
        except ProcessLookupError:
            pass
        pid_file.unlink(missing_ok=True)
    # Whatever is left (a demo that was killed): the node first, then the control plane.
    subprocess.run(
        [sys.executable, "-m", "tests.support.cluster", "down", "--dir", str(DEMO_DIR / "cluster")],
        check=False,
    )
    print("Demo stopped.")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=["run", "down"], default="run")
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    args = parser.parse_args()
    if args.command == "down":
        return down()
    return run(args.keep)


if __name__ == "__main__":
    sys.exit(main())
