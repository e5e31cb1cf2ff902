"""The cached `helm` binary and the chart in charts/, for tests/chart. Test tooling, never shipped.

`Helm` runs helm with its own config/cache/data directories (nothing of the developer's
~/.config/helm is read or written) and, for install/upgrade/uninstall, a given kubeconfig.
Helpers turn a rendered chart into objects and read the operator container out of a Deployment.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "agentsession-operator"

Obj = dict[str, Any]


class HelmError(RuntimeError):
    """helm exited non-zero; the message carries its stderr."""

    def __init__(self, argv: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"helm {' '.join(argv)} exited {result.returncode}:\n{result.stderr}")
        self.stderr = result.stderr


class Helm:
    """helm from `bin_dir` with private state under `home`; `kubeconfig` for cluster commands."""

    def __init__(self, bin_dir: Path, home: Path, kubeconfig: Path | None = None) -> None:
        self.binary = bin_dir / "helm"
        self.home = home
        self.kubeconfig = kubeconfig

    def with_kubeconfig(self, kubeconfig: Path) -> Helm:
        return Helm(self.binary.parent, self.home, kubeconfig)

    def env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def run(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run helm; raise HelmError on a non-zero exit unless `check` is False."""
        result = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise HelmError(args, result)
        return result

    def template(
        self,
        *,
        release: str = "agentsession",
        namespace: str = "agentsession-system",
        values_files: Iterable[Path] = (),
        set_json: Mapping[str, Any] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """`helm template` of the chart; the rendered YAML is the result's stdout."""
        return self.run(
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            *value_args(values_files, set_json),
            check=check,
        )


def value_args(values_files: Iterable[Path], set_json: Mapping[str, Any] | None) -> list[str]:
    """`-f FILE` for each file, then `--set-json key=<json>` for each override."""
    args: list[str] = []
    for path in values_files:
        args += ["--values", str(path)]
    for key, value in (set_json or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def objects(rendered: str) -> list[Obj]:
    """The objects of a multi-document YAML stream (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def only(docs: Iterable[Obj], kind: str, name: str | None = None) -> Obj:
    """The one object of `kind` (and `name`); AssertionError if there is not exactly one."""
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def operator_container(deployment: Obj) -> Obj:
    """The `operator` container of the chart's Deployment."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (container,) = (c for c in containers if c["name"] == "operator")
    result: Obj = container
    return result


def literal_env(container: Obj) -> dict[str, str]:
    """The container's literal env as a dict; every other entry must be a Secret key reference
    (the operator's own credentials, `store.credentials.operatorSecret`) or the pod's name
    (POD_NAME, the start of its leader-election identity)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" not in item:
            source = item.get("valueFrom", {})
            pod_name = source.get("fieldRef", {}).get("fieldPath") == "metadata.name"
            assert "secretKeyRef" in source or pod_name, f"{item['name']}: {item}"
            continue
        env[item["name"]] = item["value"]
    return env


def container_port(container: Obj, name: str) -> int:
    """The containerPort named `name`."""
    (port,) = (p["containerPort"] for p in container["ports"] if p["name"] == name)
    return int(port)


def local_node_values(api_server: str, images: Mapping[str, str]) -> Obj:
    """Chart values that run the chart on the local cluster (tests/support/node.py): our images
    as containerd has them, host networking for the operator and runner pods (no pod network),
    and the API server's loopback address for the operator (no kube-proxy behind the
    `kubernetes` Service), and the S3 server's address for the runner NetworkPolicy. Merge the
    store and API settings in. One replica (two host-network pods on the one node would want the
    same ports), still elected on its Lease."""
    repository, tag = images["operator"].rsplit(":", 1)
    server = urlparse(api_server)
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "hostNetwork": True,
        "replicaCount": 1,
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": server.hostname},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(server.port)},
        ],
        "runner": {"image": images["runner"], "hostNetwork": True},
        # The runner NetworkPolicy (stored, not enforced: no CNI, and host networking) allows
        # loopback, where the scripted API and the S3 server listen.
        "networkPolicy": {"runners": {"s3": {"to": [{"ipBlock": {"cidr": "127.0.0.0/8"}}]}}},
    }
