"""A real local Kubernetes control plane: etcd, kube-apiserver, controller manager, scheduler.

Used by the tests/cluster fixtures (`LocalCluster`, in-process) and by `make cluster-up` /
`make cluster-down` (`python -m tests.support.cluster up|down --dir .cluster`). Test tooling, never
shipped. The binaries come from hack/build-control-plane.sh (built once into a version-keyed cache
outside the repository); `ensure_binaries()` runs it, which is a no-op on a cache hit.

The API server serves TLS with a self-signed certificate (--cert-dir), authenticates an admin
bearer token (group system:masters, --token-auth-file) and ServiceAccount tokens, authorizes with
RBAC and runs the default admission plugins (ServiceAccount, PodSecurity, ...). The controller
manager runs the garbage collector, namespace, service-account, token, root-CA publisher, Job,
TTL-after-finished, node-lifecycle, taint-eviction, pod-GC, ClusterRole-aggregation and
StatefulSet controllers,
with node timeouts short enough for node-loss tests. The scheduler binds pods to the node;
tests/support/node.py runs the node itself (containerd and a kubelet), which the API server
reaches with a client certificate.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-control-plane.sh"
CRD_DIR = REPO_ROOT / "crds"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "job-controller",
    "ttl-after-finished-controller",
    "deployment-controller",
    "replicaset-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "pod-garbage-collector-controller",
    # Folds the chart's tenant roles into the built-in edit and view ClusterRoles.
    "clusterrole-aggregation-controller",
    # A StatefulSet's pods can take the name an AgentSession's runner pod would get.
    "statefulset-controller",
)
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
# Node loss within seconds, not minutes: the kubelet renews its lease every 2 s (node.py), the
# node is NotReady 10 s after the last renewal, and pods on it are evicted 5 s later.
NODE_MONITOR_GRACE = "10s"
POD_TOLERATION_SECONDS = 5
RESTRICTED_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
NODE = "node"
AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # Writes only, metadata only: who changed what, with which user agent, and when.
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}

T = TypeVar("T")


class ClusterError(RuntimeError):
    """The local control plane failed to build, start or answer; the message says which part."""


def ensure_binaries(*, stream: IO[str] | None = None) -> Path:
    """Build the control-plane binaries if the cache lacks them; returns their directory.

    Progress of a cold build (tens of minutes on 2 cores) goes to `stream` (default: our stderr).
    """
    started = time.monotonic()
    process = subprocess.run(
        [str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=stream, text=True, check=False
    )
    if process.returncode != 0:
        raise ClusterError(f"{BUILD_SCRIPT} failed with exit code {process.returncode}")
    bin_dir = Path(process.stdout.strip().splitlines()[-1])
    if time.monotonic() - started > 60:
        print(f"Built the control plane in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return bin_dir


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> T:
    """Poll `condition` until it returns something truthy, or raise TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
            last_error = None
        except Exception as error:
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def generate_rsa_key(private_path: Path, public_path: Path) -> None:
    """One RSA key for signing and verifying ServiceAccount tokens (cryptography or openssl)."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        subprocess.run(["openssl", "genrsa", "-out", str(private_path), "2048"], check=True)
        subprocess.run(
            ["openssl", "rsa", "-in", str(private_path), "-pubout", "-out", str(public_path)],
            check=True,
            capture_output=True,
        )
        private_path.chmod(0o600)
        return
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def write_kubelet_client_certificates(certs_dir: Path) -> tuple[Path, Path, Path]:
    """A CA the kubelet trusts for client certificates, and the API server's client certificate
    (group system:masters, so the kubelet's webhook authorization allows logs and exec).

    Returns (ca, certificate, key) paths; existing files are reused.
    """
    ca_path = certs_dir / "kubelet-client-ca.crt"
    cert_path = certs_dir / "apiserver-kubelet-client.crt"
    key_path = certs_dir / "apiserver-kubelet-client.key"
    if ca_path.exists() and cert_path.exists() and key_path.exists():
        return ca_path, cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentsession-kubelet-client-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver-kubelet-client"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certs_dir.mkdir(parents=True, exist_ok=True)
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


def kubeconfig_document(server: str, ca_pem: bytes, user: str, token: str) -> dict[str, Any]:
    """A kubeconfig with one cluster, one token user and one current context."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "local", "user": user}}],
        "current-context": user,
    }


class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager on free loopback ports under `work_dir`.

    Use as a context manager, or `start()`/`stop()`. Every process it starts is stopped by PID on
    `stop()`, on leaving the `with` block and, as a safety net, at interpreter exit. Logs stay in
    `work_dir/logs` (see `log_tails()` for failure reports). With `detach=True` (the CLI) the
    processes get their own session and PID files in `work_dir/pids` so `down` can stop them later.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        bin_dir: Path | None = None,
        crd_dir: Path | None = CRD_DIR,
        detach: bool = False,
        audit: bool = False,
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.audit_log = self.work_dir / "logs" / "audit.jsonl" if audit else None
        """With `audit`, the API server logs every write (who, which user agent, when) here."""
        self._apiserver_argv: list[str] = []
        self._etcd_argv: list[str] = []
        self.bin_dir = bin_dir
        self.crd_dir = crd_dir
        self.detach = detach
        self.logs_dir = self.work_dir / "logs"
        self.pids_dir = self.work_dir / "pids"
        self.kubeconfig = self.work_dir / "kubeconfig"
        self.ca_file = self.work_dir / "certs" / "apiserver.crt"
        self.token = secrets.token_hex(24)
        self.server = ""
        self.crd_names: list[str] = []
        self.kubelet_client_ca = self.work_dir / "certs" / "kubelet-client-ca.crt"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._atexit_registered = False

    # ---- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        """Build if needed, start the three components, write the kubeconfig, install CRDs."""
        if self.bin_dir is None:
            self.bin_dir = ensure_binaries()
        if not self.detach and not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        for sub in ("logs", "pids", "certs", "etcd"):
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.work_dir / "etcd").chmod(0o700)
        deadline = time.monotonic() + timeout
        try:
            self._start_etcd(deadline)
            self._start_apiserver(deadline)
            # CRDs first: a garbage collector that starts before them cannot resolve custom
            # owners for its first ~30 s (it rediscovers resources only periodically).
            if self.crd_dir is not None:
                self.crd_names = self.install_crds(self.crd_dir, timeout=60)
            self._start_controller_manager(deadline)
            self._start_scheduler()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every process this object started (reverse order): SIGTERM, then SIGKILL."""
        for name in reversed(list(self.processes)):
            stop_process(self.processes.pop(name), timeout=timeout)
            (self.pids_dir / f"{name}.pid").unlink(missing_ok=True)

    def _remaining(self, deadline: float) -> float:
        return max(1.0, deadline - time.monotonic())

    def _spawn(self, name: str, argv: Sequence[str], *, cwd: Path | None = None) -> None:
        log_file = open(self.logs_dir / f"{name}.log", "ab")  # noqa: SIM115 (child owns it)
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=cwd or self.work_dir,
                start_new_session=self.detach,
                # Attached children die with us even if we are SIGKILLed (atexit cannot run).
                preexec_fn=None if self.detach else _die_with_parent,
            )
        finally:
            log_file.close()
        self.processes[name] = process
        (self.pids_dir / f"{name}.pid").write_text(f"{process.pid}\n")

    def _check_alive(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            raise ClusterError(
                f"{name} exited with code {process.returncode}; log:\n{self.log_tail(name)}"
            )

    def _start_etcd(self, deadline: float) -> None:
        assert self.bin_dir is not None
        client_port, peer_port = free_port(), free_port()
        client_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self.etcd_url = client_url
        self._etcd_argv = [
            str(self.bin_dir / "etcd"),
            "--name=local",
            f"--data-dir={self.work_dir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=local={peer_url}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]
        self._spawn("etcd", self._etcd_argv)
        self._wait_etcd_healthy(deadline)

    def _wait_etcd_healthy(self, deadline: float) -> None:
        def healthy() -> bool:
            self._check_alive("etcd")
            url = f"{self.etcd_url}/health"
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (http only)
                return bool(json.load(response).get("health") == "true")

        wait_for(healthy, timeout=self._remaining(deadline), what="etcd /health")

    def restart_etcd(self, *, timeout: float = 60.0) -> float:
        """Stop etcd (SIGTERM) and start it again on the same ports and data directory, then wait
        until etcd and kube-apiserver (/readyz checks etcd) are healthy; returns how long that
        took. Call it from the thread that started the cluster (see `start_apiserver`)."""
        assert self._etcd_argv, "start() first"
        stopped = time.monotonic()
        process = self.processes.pop("etcd", None)
        if process is not None:
            stop_process(process)
        deadline = time.monotonic() + timeout
        self._spawn("etcd", self._etcd_argv)
        self._wait_etcd_healthy(deadline)
        if "kube-apiserver" in self.processes:
            self._wait_apiserver_ready(deadline)
        return time.monotonic() - stopped

    def restart_apiserver(self, *, down_seconds: float = 0.0, timeout: float = 60.0) -> float:
        """Stop kube-apiserver (SIGTERM, as a rolling restart does), keep it down for
        `down_seconds`, start it again on the same port and certificates; returns how long it
        was unreachable until /readyz answered again."""
        stopped = time.monotonic()
        self.stop_apiserver()
        if down_seconds:
            time.sleep(down_seconds)  # an outage of a chosen length, not synchronisation
        self.start_apiserver(timeout=timeout)
        return time.monotonic() - stopped

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver; everything talking to it gets connection refused until
        `start_apiserver()`."""
        process = self.processes.pop("kube-apiserver", None)
        if process is not None:
            stop_process(process)

    def start_apiserver(self, *, timeout: float = 60.0) -> None:
        """Start kube-apiserver again as it was (same port, certificates and etcd). Call it from
        the thread that started the cluster: the process dies with the thread that starts it."""
        assert self._apiserver_argv, "start() first"
        self._spawn("kube-apiserver", self._apiserver_argv)
        self._wait_apiserver_ready(time.monotonic() + timeout)

    def _start_apiserver(self, deadline: float) -> None:
        assert self.bin_dir is not None
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        tokens = self.work_dir / "tokens.csv"
        tokens.write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        tokens.chmod(0o600)
        sa_key, sa_pub = self.work_dir / "sa.key", self.work_dir / "sa.pub"
        if not sa_key.exists():
            generate_rsa_key(sa_key, sa_pub)
        self.kubelet_client_ca, client_cert, client_key = write_kubelet_client_certificates(
            self.work_dir / "certs"
        )
        audit: list[str] = []
        if self.audit_log is not None:
            policy = self.work_dir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
            audit = [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
            ]
        self._apiserver_argv = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.work_dir / 'certs'}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={sa_pub}",
            f"--service-account-signing-key-file={sa_key}",
            "--service-cluster-ip-range=10.0.0.0/24",
            # Privileged pods pass the API server's own check, so Pod Security admission is
            # what rejects them in a restricted namespace (as in a real cluster).
            "--allow-privileged=true",
            # A loopback advertise address cannot be an Endpoints address.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            # The kubelet (node.py) serves on 127.0.0.1 under a name that resolves there,
            # and authenticates us by this client certificate.
            f"--kubelet-client-certificate={client_cert}",
            f"--kubelet-client-key={client_key}",
            "--kubelet-preferred-address-types=Hostname,InternalIP",
            # Pods on a lost node are evicted within seconds (DefaultTolerationSeconds).
            f"--default-not-ready-toleration-seconds={POD_TOLERATION_SECONDS}",
            f"--default-unreachable-toleration-seconds={POD_TOLERATION_SECONDS}",
            *audit,
        ]
        self._spawn("kube-apiserver", self._apiserver_argv)

        def certificate_written() -> bool:
            self._check_alive("kube-apiserver")
            return self.ca_file.exists()

        wait_for(
            certificate_written,
            timeout=self._remaining(deadline),
            what="kube-apiserver to write its serving certificate",
        )
        self._wait_apiserver_ready(deadline)
        self.write_kubeconfig(self.kubeconfig, "admin", self.token)

    def _wait_apiserver_ready(self, deadline: float) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))

        def ready() -> bool:
            self._check_alive("kube-apiserver")
            request = urllib.request.Request(  # noqa: S310 (our https URL)
                f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as response:  # noqa: S310
                    return bool(response.status == 200)
            except urllib.error.HTTPError:
                return False

        wait_for(ready, timeout=self._remaining(deadline), what="kube-apiserver /readyz")

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit log's events so far (needs `audit=True`)."""
        assert self.audit_log is not None, "LocalCluster(audit=True) keeps an audit log"
        if not self.audit_log.exists():
            return []
        lines = self.audit_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def _start_controller_manager(self, deadline: float) -> None:
        assert self.bin_dir is not None
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={self.work_dir / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                "--use-service-account-credentials=false",
                "--secure-port=0",
                f"--node-monitor-grace-period={NODE_MONITOR_GRACE}",
                "--node-monitor-period=1s",
            ],
        )
        core = client.CoreV1Api(self.api_client())

        def default_service_account() -> bool:
            self._check_alive("kube-controller-manager")
            core.read_namespaced_service_account("default", "default")
            return True

        wait_for(
            default_service_account,
            timeout=self._remaining(deadline),
            what="kube-controller-manager to create ServiceAccount default/default",
        )
        core.api_client.close()

    def _start_scheduler(self) -> None:
        assert self.bin_dir is not None
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
            ],
        )

    # ---- access --------------------------------------------------------------------------------

    def write_kubeconfig(self, path: Path, user: str, token: str) -> Path:
        """Write a kubeconfig for this API server authenticating with `token`."""
        document = kubeconfig_document(self.server, self.ca_file.read_bytes(), user, token)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        path.chmod(0o600)
        return path

    def api_client(self, kubeconfig: Path | None = None) -> client.ApiClient:
        """A new kubernetes ApiClient (admin unless another kubeconfig is given); close it."""
        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input_text: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the cached kubectl against this cluster; never raises on a non-zero exit."""
        assert self.bin_dir is not None
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig)}
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=input_text,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )

    def install_crds(self, crd_dir: Path, *, timeout: float = 60.0) -> list[str]:
        """Create or replace every CRD in `crd_dir`/*.yaml, then wait until each is Established."""
        files = (
            sorted([*crd_dir.glob("*.yaml"), *crd_dir.glob("*.yml")]) if crd_dir.is_dir() else []
        )
        api_client = self.api_client()
        extensions = client.ApiextensionsV1Api(api_client)
        names: list[str] = []
        try:
            for path in files:
                for document in yaml.safe_load_all(path.read_text()):
                    if not document:
                        continue
                    if document.get("kind") != "CustomResourceDefinition":
                        raise ClusterError(f"{path} holds a {document.get('kind')}, not a CRD")
                    name = document["metadata"]["name"]
                    try:
                        extensions.create_custom_resource_definition(document)
                    except ApiException as error:
                        if error.status != 409:
                            raise ClusterError(f"installing {path}: {error.body}") from error
                        current = extensions.read_custom_resource_definition(name)
                        document["metadata"]["resourceVersion"] = current.metadata.resource_version
                        extensions.replace_custom_resource_definition(name, document)
                    names.append(name)
            for name in names:
                wait_for(
                    lambda name=name: crd_established(extensions, name),  # type: ignore[misc]
                    timeout=timeout,
                    what=f"CRD {name} to be Established",
                )
        finally:
            api_client.close()
        return names

    def create_namespace(
        self,
        prefix: str = "test",
        *,
        labels: dict[str, str] | None = None,
        timeout: float = 120.0,
        name: str | None = None,
    ) -> str:
        """A fresh namespace (`name`, or `<prefix>-<random>`), by default labelled Pod Security
        `restricted` (enforce).

        Returns once its `default` ServiceAccount and `kube-root-ca.crt` ConfigMap exist, so pods
        can be created at once.
        """
        name = name or f"{prefix}-{uuid.uuid4().hex[:8]}"
        api_client = self.api_client()
        core = client.CoreV1Api(api_client)
        try:
            body = {
                "metadata": {
                    "name": name,
                    "labels": RESTRICTED_LABELS if labels is None else labels,
                }
            }
            core.create_namespace(body)
            wait_for(
                lambda: (
                    core.read_namespaced_service_account("default", name)
                    and core.read_namespaced_config_map("kube-root-ca.crt", name)
                ),
                timeout=timeout,
                what=f"ServiceAccount and root CA ConfigMap in namespace {name}",
            )
        finally:
            api_client.close()
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace without waiting (the namespace controller finishes the job)."""
        api_client = self.api_client()
        with contextlib.suppress(ApiException):
            client.CoreV1Api(api_client).delete_namespace(name)
        api_client.close()

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        path: Path | None = None,
        *,
        expiration_seconds: int = 3600,
    ) -> Path:
        """Create ServiceAccount `name` if missing, mint a token (TokenRequest), write a kubeconfig.

        Code run with this kubeconfig has exactly the permissions RBAC grants that ServiceAccount.
        """
        api_client = self.api_client()
        core = client.CoreV1Api(api_client)
        try:
            try:
                core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
            except ApiException as error:
                if error.status != 409:
                    raise
            request = {"spec": {"expirationSeconds": expiration_seconds}}
            token = core.create_namespaced_service_account_token(name, namespace, request)
        finally:
            api_client.close()
        path = path or self.work_dir / "service-accounts" / f"{namespace}.{name}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{name}"
        return self.write_kubeconfig(path, user, str(token.status.token))

    # ---- diagnostics ---------------------------------------------------------------------------

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The last lines of one component's log."""
        path = self.logs_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of every component's log, for failure reports."""
        parts = []
        for path in sorted(self.logs_dir.glob("*.log")):
            parts.append(f"==> {path} <==\n{self.log_tail(path.stem, lines)}")
        return "\n".join(parts)


def restricted_pod(
    name: str,
    command: Sequence[str],
    *,
    image: str,
    host_network: bool = True,
    run_as_user: int = 65532,
    **container: Any,
) -> dict[str, Any]:
    """A pod manifest with the runner's hardening, running `command` as a non-root UID.

    With `host_network=False` it passes Pod Security `restricted`; the local node has no pod
    network, so pods that run there need `host_network=True` (the only difference). Extra keyword
    arguments go into the container (`env`, `volumeMounts`, `workingDir`, ...); set pod-level
    fields on the returned dict.
    """
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            **({"hostNetwork": True} if host_network else {}),
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": run_as_user,
                "runAsGroup": run_as_user,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "command": list(command),
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    **container,
                }
            ],
        },
    }


def wait_for_pod(
    core: client.CoreV1Api,
    namespace: str,
    name: str,
    condition: Callable[[client.V1Pod], bool],
    *,
    timeout: float = 60.0,
    what: str = "",
) -> client.V1Pod:
    """Poll the pod until `condition(pod)` holds; returns the pod (TimeoutError otherwise)."""

    def check() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if condition(pod) else None

    return wait_for(check, timeout=timeout, what=f"pod {namespace}/{name} {what}".strip())


def pod_phase_in(*phases: str) -> Callable[[client.V1Pod], bool]:
    """A `wait_for_pod` condition: the pod's phase is one of `phases`."""
    return lambda pod: pod.status is not None and pod.status.phase in phases


def pod_gone(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    """Whether the pod no longer exists in the API."""
    try:
        core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def _die_with_parent() -> None:
    """In the child before exec: ask the kernel for SIGKILL when the parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def crd_established(extensions: client.ApiextensionsV1Api, name: str) -> bool:
    """Whether the CRD's Established condition is True."""
    crd = extensions.read_custom_resource_definition(name)
    conditions = (crd.status.conditions if crd.status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 15.0) -> None:
    """SIGTERM one child, SIGKILL it if it outlives `timeout`, and reap it."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=timeout)


def stop_pid(pid: int, expected: str, *, timeout: float = 15.0) -> bool:
    """Stop a process started by an earlier `up` if its command line still names `expected`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    if expected not in cmdline:
        return False  # the PID was reused by something else: leave it alone
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _pid_files(work_dir: Path) -> Iterable[tuple[str, int]]:
    pids_dir = work_dir / "pids"
    for name in reversed(COMPONENTS):
        path = pids_dir / f"{name}.pid"
        if path.exists():
            with contextlib.suppress(ValueError):
                yield name, int(path.read_text().strip())


def _running(work_dir: Path) -> list[str]:
    running = []
    for name, pid in _pid_files(work_dir):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if name.encode() in cmdline and not _is_zombie(pid):
                running.append(name)
    return running


def cluster_up(work_dir: Path, *, with_node: bool = True) -> int:
    """`up`: start everything detached, install CRDs, write work_dir/kubeconfig, link binaries."""
    from tests.support.node import LocalNode, running_node_pids

    work_dir = work_dir.resolve()
    running = _running(work_dir)
    if running:
        print(f"Already running ({', '.join(running)}); `down` first to restart.")
        return 0
    if with_node and running_node_pids():
        raise ClusterError(
            "a local node already runs on this machine (another cluster-up, demo or test run); "
            "stop it first"
        )
    cluster_down(work_dir, quiet=True)
    for sub in ("etcd", "certs", "logs", "pids", "service-accounts"):
        shutil.rmtree(work_dir / sub, ignore_errors=True)
    bin_dir = ensure_binaries()
    cluster = LocalCluster(work_dir, bin_dir=bin_dir, detach=True)
    cluster.start()
    links = work_dir / "bin"
    links.mkdir(parents=True, exist_ok=True)
    for binary in sorted(bin_dir.iterdir()):
        if binary.name.startswith("."):
            continue
        link = links / binary.name
        link.unlink(missing_ok=True)
        link.symlink_to(binary)
    if with_node:
        node = LocalNode(
            cluster.kubeconfig,
            bin_dir=bin_dir,
            client_ca_file=cluster.kubelet_client_ca,
            logs_dir=cluster.logs_dir,
            detach=True,
        )
        node.start()
        (work_dir / "images.json").write_text(json.dumps(node.images, indent=2) + "\n")
        print(f"Node {node.name} is Ready (containerd + kubelet); images: {node.images}")
    print(f"Control plane up at {cluster.server} (logs in {cluster.logs_dir}).")
    if cluster.crd_names:
        print(f"CRDs installed: {', '.join(cluster.crd_names)}")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print(f"  {links / 'kubectl'} get pods -A")
    return 0


def cluster_down(work_dir: Path, *, quiet: bool = False) -> int:
    """`down`: stop the node (every container, then its host changes), then the control plane."""
    from tests.support.node import clean_host

    work_dir = work_dir.resolve()
    stopped = []
    if clean_host(quiet=quiet):
        stopped.append("node (containerd, kubelet)")
    for name, pid in _pid_files(work_dir):
        if stop_pid(pid, name):
            stopped.append(f"{name} ({pid})")
        (work_dir / "pids" / f"{name}.pid").unlink(missing_ok=True)
    if not quiet:
        print(f"Stopped: {', '.join(stopped)}" if stopped else "Nothing was running.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `up` or `down` a local control plane in a directory (default .cluster)."""
    parser = argparse.ArgumentParser(description="Local Kubernetes control plane for tests.")
    parser.add_argument("command", choices=["up", "down", "build"])
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / ".cluster")
    parser.add_argument("--no-node", action="store_true", help="control plane only")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(ensure_binaries())
            return 0
        if args.command == "up":
            return cluster_up(args.dir, with_node=not args.no_node)
        return cluster_down(args.dir)
    except (ClusterError, TimeoutError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        if args.command == "up":
            cluster_down(args.dir, quiet=True)
            print(f"Logs are in {args.dir / 'logs'}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
