"""`make demo`: the whole product on a local control plane, in one command.

Builds (once, cached) and starts etcd + kube-apiserver + kube-controller-manager, the node agent,
an S3 server (moto), and the operator under its least-privilege ServiceAccount; applies
examples/hello.yaml as a user would, waits for `condition=Succeeded`, prints `kubectl get ags` and
where the transcript lives. Offline the runner's CLI talks to the scripted Messages API; with
ANTHROPIC_API_KEY set it talks to the real API. Everything it started is stopped at the end,
unless `--keep` leaves it running (then `make demo-down` stops it).
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

from agentsession_runner.store import open_store  # noqa: E402
from tests.support import scripted_api as sa  # noqa: E402
from tests.support.cluster import LocalCluster, ensure_binaries, free_port, wait_for  # noqa: E402
from tests.support.node_agent import NodeAgent  # noqa: E402
from tests.support.operator_process import OperatorProcess, operator_kubeconfig  # noqa: E402
from tests.support.runner_harness import TEST_API_KEY  # noqa: E402
from tests.support.s3server import REGION, MotoServer  # noqa: E402
from tests.support.session_secrets import add_session_secrets  # noqa: E402

DEMO_DIR = REPO / ".demo"
NAMESPACE = "demo"
EXAMPLE = REPO / "examples" / "hello.yaml"
STEPS = 7


def step(number: int, text: str) -> None:
    print(f"[{number}/{STEPS}] {text}", flush=True)


def create_namespace(cluster: LocalCluster) -> None:
    api_client = cluster.api_client()
    try:
        labels = {"pod-security.kubernetes.io/enforce": "restricted"}
        client.CoreV1Api(api_client).create_namespace(
            {"metadata": {"name": NAMESPACE, "labels": labels}}
        )
    finally:
        api_client.close()


def session_status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    result = cluster.kubectl("get", "agentsession", name, "-n", NAMESPACE, "-o", "json")
    return json.loads(result.stdout).get("status", {}) if result.returncode == 0 else {}


def transcript_lines(store_url: str, session_id: str, env: dict[str, str]) -> int:
    os.environ.update(env)
    store = open_store(store_url, NAMESPACE)
    entries = asyncio.run(store.load({"project_key": "sessions", "session_id": session_id}))
    return len(entries or [])


def run(keep: bool) -> int:
    real_key = os.environ.get("ANTHROPIC_API_KEY")
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir(parents=True)
    step(1, "Control-plane binaries (built from the Go module proxy on first use, then cached)")
    bin_dir = ensure_binaries(stream=sys.stdout)
    step(2, "Starting etcd, kube-apiserver, kube-controller-manager; installing the CRD")
    cluster = LocalCluster(DEMO_DIR / "cluster", bin_dir=bin_dir, detach=keep)
    cluster.start()
    stack: list[Any] = [cluster]
    try:
        step(3, "Starting the node agent (runs pods as local processes) and an S3 server (moto)")
        agent = NodeAgent(cluster.kubeconfig, "demo-node")
        agent.start()
        stack.append(agent)
        s3 = MotoServer()
        s3.start()
        stack.append(s3)
        bucket = s3.create_bucket("agentsessions-demo")
        api: sa.ScriptedAPI | None = None
        if real_key:
            print("      ANTHROPIC_API_KEY is set: runner pods call the real Anthropic API")
        else:
            print(
                "      No ANTHROPIC_API_KEY: runner pods call the scripted Messages API (offline)"
            )
            api = sa.ScriptedAPI().start()
            stack.append(api)
            prompt = yaml.safe_load(EXAMPLE.read_text())["spec"]["prompt"]
            api.route(prompt, sa.text("Hello\nHola\nBonjour\nHallo\nCiao"))
        step(4, "Starting the operator under its least-privilege ServiceAccount")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(DEMO_DIR),
            "KUBECONFIG": str(operator_kubeconfig(cluster, DEMO_DIR / "operator.kubeconfig")),
            "AGENTSESSION_STORE_URL": bucket.url("agents"),
            "AGENTSESSION_S3_ENDPOINT_URL": s3.endpoint_url,
            "AGENTSESSION_S3_REGION": REGION,
            "AGENTSESSION_S3_CREDENTIALS_SECRET": "s3-credentials",
            "AGENTSESSION_DEFAULT_MAX_BUDGET_USD": "0.25",
            "AGENTSESSION_METRICS_PORT": str(free_port()),
            "AGENTSESSION_HEALTH_PORT": str(free_port()),
        }
        if api is not None:
            env["AGENTSESSION_ANTHROPIC_BASE_URL"] = api.base_url
            env["AGENTSESSION_DEFAULT_MODEL"] = "claude-sonnet-4-5"
        operator = OperatorProcess(
            argv=[str(Path(sys.executable).parent / "agentsession-operator")],
            env=env,
            log_path=DEMO_DIR / "operator.log",
            metrics_port=int(env["AGENTSESSION_METRICS_PORT"]),
            health_port=int(env["AGENTSESSION_HEALTH_PORT"]),
        )
        operator.start()
        stack.append(operator)
        create_namespace(cluster)
        add_session_secrets(cluster, NAMESPACE, real_key or TEST_API_KEY)
        step(5, f"kubectl apply -f {EXAMPLE.relative_to(REPO)}")
        applied = cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLE))
        print("      " + (applied.stdout or applied.stderr).strip())
        step(6, "kubectl wait --for=condition=Succeeded agentsession/hello")
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
        step(7, "kubectl get ags")
        table = cluster.kubectl("get", "ags", "-n", NAMESPACE, "-o", "wide")
        print("\n".join("      " + line for line in table.stdout.splitlines()))
        status = session_status(cluster, "hello")
        print(f"\n      result:      {status.get('resultPreview', '')!r}")
        print(f"      transcript:  {status.get('transcriptRef')}")
        print(f"      full result: {status.get('resultRef')}")
        if status.get("sessionId"):
            lines = transcript_lines(bucket.url("agents"), status["sessionId"], s3.env())
            print(f"      ({lines} transcript lines in the S3 store at {s3.endpoint_url})")
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
    if not pid_file.exists():
        print("No demo is running.")
        return 0
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=60, what="the demo to stop")
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
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
