"""Every Kubernetes API call the operator makes (besides kopf's own watches), over aiohttp.

Built once at start-up from kopf's login result and handed to the handlers through kopf's memo
(and, for the Lease, to `kube.leader`). Counts every request it makes by verb, resource and status
code, so the API writes the operator causes are observable
(`agentsession_operator_api_requests_total`). It re-reads a service account token from its file
(bound tokens rotate), retries what is safe to retry (tenacity: bounded exponential backoff with
jitter, `Retry-After` honoured), and refuses every write once its `fence` says this replica is no
longer the leader.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import email.utils
import json
import os
import socket
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from importlib import metadata
from typing import Any

import aiohttp
import kopf
import tenacity
import yaml

from agentsession_operator.metrics import Metrics
from agentsession_operator.models.resource import API_VERSION, GROUP, KIND, PLURAL, VERSION

COMPONENT = "agentsession-operator"


class KubeError(Exception):
    """An API request failed in a way the caller cannot take as an answer."""

    def __init__(
        self, method: str, path: str, status: int, body: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status
        self.retry_after = retry_after
        """Seconds the server asked us to wait (its Retry-After header), if it said."""
        self.reason, self.api_message = _status_of(body)
        """The API server's Status (`reason`, e.g. Forbidden or Invalid, and `message`) when the
        body is one; else no reason and the body's text."""


def _status_of(body: str) -> tuple[str | None, str]:
    """The reason and message of a metav1.Status body (what the API server answers a refused
    request with)."""
    try:
        status = json.loads(body)
    except ValueError:
        return None, body.strip()
    if not isinstance(status, dict) or status.get("kind") != "Status":
        return None, body.strip()
    reason = status.get("reason")
    return (str(reason) if reason else None), str(status.get("message") or "").strip()


class NotLeader(Exception):
    """A write refused before it was sent: this replica no longer holds the leader Lease."""


def is_api_failure(exc: BaseException) -> bool:
    """Whether `exc` is the API server's or the network's doing (an answer, a broken or refused
    connection, a timeout, a write fenced off), not a bug of the code that called the client."""
    return isinstance(exc, KubeError | NotLeader | aiohttp.ClientError | OSError | TimeoutError)


SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
TOKEN_MAX_AGE_SECONDS = 60.0
"""How long a token read from its file is used before the file is read again (client-go: 1 min)."""


class TokenFile:
    """A bearer token kept in a file: a projected service account token, or a kubeconfig user's
    `tokenFile`. Bound tokens rotate (the kubelet rewrites the file well before the old one
    expires), so the file is read again after `max_age` seconds, and at once after a 401."""

    def __init__(
        self,
        path: str,
        max_age: float = TOKEN_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._max_age = max_age
        self._clock = clock
        self._token = ""
        self._read_at: float | None = None

    def token(self) -> str:
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self._max_age:
            with open(self.path, encoding="utf-8") as handle:
                self._token = handle.read().strip()
            self._read_at = now
        return self._token

    def invalidate(self) -> None:
        """The server refused the token: read the file again before the next request."""
        self._read_at = None


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate: kopf's ConnectionInfo, plus the file the
    token lives in when it rotates (None: the token, if any, is fixed)."""

    info: kopf.ConnectionInfo
    token_file: str | None = None


def in_cluster_server(env: Mapping[str, str]) -> str | None:
    """The API server address the kubelet gives every container, as client-go's InClusterConfig
    reads it; None outside a pod. kopf's own service-account login names
    `kubernetes.default.svc`, which a pod without cluster DNS (hostNetwork pods with the default
    dnsPolicy, clusters without CoreDNS) cannot resolve."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def kubeconfig_token_file(env: Mapping[str, str]) -> str | None:
    """The current user's `tokenFile` in the kubeconfig (first file that names it), which kopf's
    own kubeconfig login ignores; None if the user has none or there is no kubeconfig."""
    paths = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p.strip()]
    if not paths and os.path.exists(os.path.expanduser("~/.kube/config")):
        paths = ["~/.kube/config"]
    documents = []
    for path in paths:
        with open(os.path.expanduser(path.strip()), encoding="utf-8") as handle:
            documents.append(yaml.safe_load(handle) or {})
    context_name = next((d["current-context"] for d in documents if d.get("current-context")), None)
    contexts = {c["name"]: c.get("context") or {} for d in documents for c in d.get("contexts", [])}
    user_name = contexts.get(context_name or "", {}).get("user")
    for document in documents:
        for user in document.get("users", []):
            if user.get("name") == user_name:
                token_file = (user.get("user") or {}).get("tokenFile")
                return str(token_file) if token_file else None
    return None


def connection(settings: kopf.OperatorSettings | None = None) -> Connection:
    """In-cluster service account if present (at the address in_cluster_server names), else the
    kubeconfig; with the token's file when the token is read from one."""
    settings = settings or kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings)
    if info is not None:
        server = in_cluster_server(os.environ)
        info = dataclasses.replace(info, server=server) if server else info
        return Connection(info, SERVICE_ACCOUNT_TOKEN)
    info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no in-cluster service account and no kubeconfig found")
    token_file = None if info.token else kubeconfig_token_file(os.environ)
    if token_file is not None:
        info = dataclasses.replace(info, token=TokenFile(token_file).token())
    return Connection(info, token_file)


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """kopf's own watches: the same credentials as KubeClient. kopf calls this again after a 401,
    which reads a rotated token from its file."""
    return connection(settings).info


def own_namespace() -> str | None:
    """The namespace of the operator's service account (in a pod), else None."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def _write_material(data: str | bytes, directory: str, name: str) -> str:
    """Decode base64 PEM material into a file (ssl loads client certificates only from files)."""
    target = os.path.join(directory, name)
    with open(target, "wb") as handle:
        handle.write(base64.b64decode(data))
    os.chmod(target, 0o600)
    return target


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return False
    context = ssl.create_default_context()
    if info.ca_path:
        context.load_verify_locations(cafile=os.fsdecode(info.ca_path))
    elif info.ca_data:
        context.load_verify_locations(cadata=base64.b64decode(info.ca_data).decode())
    cert_path = os.fsdecode(info.certificate_path) if info.certificate_path else None
    key_path = os.fsdecode(info.private_key_path) if info.private_key_path else None
    if cert_path or info.certificate_data:
        # In a pod (token auth) nothing is written; a kubeconfig with embedded client
        # certificates needs a scratch directory for the moment of loading.
        with tempfile.TemporaryDirectory() as scratch:
            if cert_path is None and info.certificate_data:
                cert_path = _write_material(info.certificate_data, scratch, "tls.crt")
            if key_path is None and info.private_key_data:
                key_path = _write_material(info.private_key_data, scratch, "tls.key")
            assert cert_path is not None
            context.load_cert_chain(cert_path, key_path)
    if info.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Which failures of one request are tried again, how often and for how long."""

    attempts: int
    seconds: float
    """Stop retrying once this long has passed since the first attempt."""
    idempotent: bool
    """Sending it twice does no harm, so a failure after it may have arrived (a 5xx, a dropped
    connection, a timeout) is retried too; otherwise only what the server surely did not act on
    (429, a refused connection, 401 with a token since rotated) is."""


SAFE = RetryPolicy(attempts=8, seconds=30.0, idempotent=True)
"""Reads, deletes, conditional writes (resourceVersion) and creates of a deterministic name (a 409
on the retry means the first attempt got there: callers treat it as ours)."""
UNSAFE = RetryPolicy(attempts=8, seconds=30.0, idempotent=False)
"""Creates with generateName (Events): a retry after an ambiguous failure could duplicate it."""
ONCE = RetryPolicy(attempts=1, seconds=0.0, idempotent=True)
"""The Lease: leader election retries on its own clock and must not overrun its deadline."""
BACKOFF_SECONDS = 0.25
"""First retry after this long, doubling per attempt..."""
BACKOFF_MAX_SECONDS = 5.0
"""... up to this long..."""
BACKOFF_JITTER_SECONDS = 0.5
"""... plus up to this much at random, so replicas and passes do not retry in step. The waits
before the last of SAFE's attempts add up to at least 17 s: a request rides out an API server
restart."""
RETRY_AFTER_MAX_SECONDS = 10.0
"""A Retry-After longer than this is cut to it (the whole retry budget still bounds it)."""


class _Unauthorized(Exception):
    """A 401 with a token from a file: read the file again and retry."""


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """The delay a Retry-After header asks for: seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def should_retry(exc: BaseException, policy: RetryPolicy) -> bool:
    """Whether a failed attempt is worth another under `policy` (429 and 5xx from the server, a
    connection that failed or broke, a timeout), never a refused write or a client error."""
    if isinstance(exc, _Unauthorized):
        return True
    if isinstance(exc, KubeError):
        if exc.status == 429:
            return True
        return policy.idempotent and exc.status >= 500 and exc.status != 501
    if isinstance(exc, aiohttp.ClientConnectorError):
        return True  # never reached the server
    if isinstance(exc, aiohttp.ClientError | TimeoutError):
        return policy.idempotent
    return False


_jittered = tenacity.wait_exponential_jitter(
    multiplier=BACKOFF_SECONDS, max=BACKOFF_MAX_SECONDS, jitter=BACKOFF_JITTER_SECONDS
)


def retry_wait(state: tenacity.RetryCallState) -> float:
    """Wait what the server asked for (Retry-After), else exponential backoff with jitter."""
    exc = state.outcome.exception() if state.outcome is not None else None
    if isinstance(exc, _Unauthorized):
        return 0.0
    hint = exc.retry_after if isinstance(exc, KubeError) else None
    if hint is not None:
        return min(hint, RETRY_AFTER_MAX_SECONDS)
    return float(_jittered(state))


def _user_agent(identity: str | None) -> str:
    try:
        version = metadata.version("agentsession-operator")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"{COMPONENT}/{version}" + (f" ({identity})" if identity else "")


WATCH_READ_SECONDS = 360
"""Longer than the watches' timeoutSeconds (300) plus a bookmark interval: a silent stream
this long is a dead connection."""


def _pods_path(namespace: str | None) -> str:
    return f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"


def _network_policy_path(namespace: str, name: str) -> str:
    return f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{name}"


def _session_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


def _custom_path(plural: str, namespace: str | None, name: str = "") -> str:
    if namespace is None:
        return f"/apis/{GROUP}/{VERSION}/{plural}"
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}"
    return f"{base}/{name}" if name else base


LIST_PAGE_SIZE = 500


class KubeClient:
    """The operator's API client: sessions' and budgets' status, runner pods, their Secrets and
    NetworkPolicy, events, the leader Lease."""

    def __init__(
        self,
        conn: Connection,
        metrics: Metrics,
        connections: int,
        *,
        fence: Callable[[], bool] | None = None,
        identity: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        info = conn.info
        self._server = info.server.rstrip("/")
        self._token_file = TokenFile(conn.token_file) if conn.token_file else None
        self._static_auth = {} if self._token_file else _auth_headers(info)
        self._scheme = info.scheme or "Bearer"
        self._ssl = _ssl_context(info)
        self._metrics = metrics
        self._http: aiohttp.ClientSession | None = None
        self._watch_http: aiohttp.ClientSession | None = None
        self._instance = socket.gethostname()
        self._connections = connections
        self._fence = fence
        """Asked before every write: False means this replica is not the leader (any more)."""
        self._user_agent = _user_agent(identity)
        self._timeout = timeout

    async def __aenter__(self) -> KubeClient:
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        self._http = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._connections),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
        )
        # Watches hold their connection for minutes: their own pool, so they never take one
        # from the passes, and no total timeout (the server ends each watch).
        self._watch_http = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, connect=30, sock_read=WATCH_READ_SECONDS),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for http in (self._http, self._watch_http):
            if http is not None:
                await http.close()
        self._http = self._watch_http = None

    def _auth(self) -> dict[str, str]:
        if self._token_file is not None:
            return {"Authorization": f"{self._scheme} {self._token_file.token()}"}
        return self._static_auth

    async def _request(
        self,
        method: str,
        path: str,
        resource: str,
        *,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        accept: tuple[int, ...] = (),
        params: Mapping[str, str] | None = None,
        retry: RetryPolicy = SAFE,
        time_limit: float | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Send one request, retried under `retry`; statuses in `accept` come back as answers,
        other errors raise (after the retries)."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(lambda exc: should_retry(exc, retry)),
            wait=retry_wait,
            stop=(
                tenacity.stop_after_attempt(retry.attempts)
                | tenacity.stop_after_delay(retry.seconds)
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._send(
                        method, path, resource, body, content_type, accept, params, time_limit
                    )
        except _Unauthorized as exc:
            raise KubeError(method, path, 401, str(exc)) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _send(
        self,
        method: str,
        path: str,
        resource: str,
        body: Mapping[str, Any] | None,
        content_type: str,
        accept: tuple[int, ...],
        params: Mapping[str, str] | None,
        time_limit: float | None,
    ) -> tuple[int, dict[str, Any]]:
        assert self._http is not None, "KubeClient used outside `async with`"
        if method != "GET" and self._fence is not None and not self._fence():
            raise NotLeader(f"{method} {path} not sent: this replica does not hold the Lease")
        headers = {**self._auth(), **({"Content-Type": content_type} if body is not None else {})}
        async with self._http.request(
            method,
            self._server + path,
            json=body,
            headers=headers,
            params=params,
            timeout=aiohttp.ClientTimeout(total=time_limit) if time_limit is not None else None,
        ) as response:
            self._metrics.api_requests.labels(method, resource, str(response.status)).inc()
            text = await response.text()
            if response.status < 300 or response.status in accept:
                try:
                    return response.status, (await response.json(content_type=None)) or {}
                except ValueError:
                    return response.status, {}
            if response.status == 401 and self._token_file is not None:
                self._token_file.invalidate()
                raise _Unauthorized(text[:500])
            raise KubeError(
                method,
                path,
                response.status,
                text,
                retry_after_seconds(response.headers.get("Retry-After")),
            )

    async def get_session(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, body = await self._request(
            "GET", _session_path(namespace, name), PLURAL, accept=(404,)
        )
        return None if status == 404 else body

    async def get_namespace_uid(self, name: str) -> str:
        """The namespace's UID (the session store is scoped by it). A session's pass reads it, so
        its namespace exists: a 404 here is an error like any other."""
        path = f"/api/v1/namespaces/{name}"
        _, body = await self._request("GET", path, "namespaces")
        uid = (body.get("metadata") or {}).get("uid")
        if not uid:
            raise KubeError("GET", path, 200, "the namespace has no metadata.uid")
        return str(uid)

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, body = await self._request(
            "GET", f"/api/v1/namespaces/{namespace}/pods/{name}", "pods", accept=(404,)
        )
        return None if status == 404 else body

    async def list_pods(
        self, namespace: str | None, selector: str
    ) -> tuple[list[dict[str, Any]], str]:
        """Pods matching `selector` (in `namespace`, or everywhere) and the list's version."""
        _, body = await self._request(
            "GET", _pods_path(namespace), "pods", params={"labelSelector": selector}
        )
        return list(body.get("items") or []), str(
            (body.get("metadata") or {}).get("resourceVersion")
        )

    async def watch_pods(
        self, namespace: str | None, selector: str, version: str, seconds: int
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events of the pods matching `selector` after `version`, until the server ends."""
        assert self._watch_http is not None, "KubeClient used outside `async with`"
        params = {
            "labelSelector": selector,
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(seconds),
        }
        async with self._watch_http.get(
            self._server + _pods_path(namespace), params=params, headers=self._auth()
        ) as response:
            if response.status == 401 and self._token_file is not None:
                self._token_file.invalidate()  # the caller relists (and so watches) again
            self._metrics.api_requests.labels("WATCH", "pods", str(response.status)).inc()
            if response.status >= 300:
                raise KubeError(
                    "WATCH", _pods_path(namespace), response.status, await response.text()
                )
            async for event in json_lines(response.content.iter_any()):
                yield event

    async def list_custom(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        """Every object of one of our kinds (in `namespace`, or everywhere), paginated."""
        items: list[dict[str, Any]] = []
        params = {"limit": str(LIST_PAGE_SIZE)}
        while True:
            _, body = await self._request(
                "GET", _custom_path(plural, namespace), plural, params=params
            )
            items.extend(body.get("items") or [])
            token = (body.get("metadata") or {}).get("continue")
            if not token:
                return items
            params = {"limit": str(LIST_PAGE_SIZE), "continue": str(token)}

    async def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        status, body = await self._request(
            "GET", _custom_path(plural, namespace, name), plural, accept=(404,)
        )
        return None if status == 404 else body

    async def replace_custom_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        resource_version: str,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """Write an object's whole status if it is still at `resource_version`: the object as
        written, or None if it changed since (409) or is gone (404)."""
        status_patch: dict[str, Any] = {key: None for key in old if key not in new}
        status_patch.update(new)
        patch = {"metadata": {"resourceVersion": resource_version}, "status": status_patch}
        code, body = await self._request(
            "PATCH",
            _custom_path(plural, namespace, name) + "/status",
            f"{plural}/status",
            body=patch,
            content_type="application/merge-patch+json",
            accept=(404, 409),
        )
        return body if code < 300 else None

    async def create_pod(self, namespace: str, manifest: Mapping[str, Any]) -> bool:
        """Create the pod; False when one of that name exists (the caller reads it to see whose:
        names are deterministic, so it may be ours from a pass whose status write was lost)."""
        status, _ = await self._request(
            "POST", f"/api/v1/namespaces/{namespace}/pods", "pods", body=manifest, accept=(409,)
        )
        return status != 409

    async def create_secret(self, namespace: str, manifest: Mapping[str, Any]) -> bool:
        """Create a Secret of ours (an attempt's vended credentials); False if it exists.

        Create is the only verb the operator has on Secrets: it never reads one."""
        status, _ = await self._request(
            "POST",
            f"/api/v1/namespaces/{namespace}/secrets",
            "secrets",
            body=manifest,
            accept=(409,),
        )
        return status != 409

    async def get_network_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, body = await self._request(
            "GET", _network_policy_path(namespace, name), "networkpolicies", accept=(404,)
        )
        return None if status == 404 else body

    async def apply_network_policy(self, manifest: Mapping[str, Any]) -> None:
        """Server-side apply (forced: the policy is the operator's) of a NetworkPolicy, which
        creates it or makes it say what the manifest says. The RBAC allows it one name only."""
        meta = manifest["metadata"]
        await self._request(
            "PATCH",
            _network_policy_path(meta["namespace"], meta["name"]),
            "networkpolicies",
            body=manifest,
            content_type="application/apply-patch+yaml",  # JSON is YAML
            params={"fieldManager": COMPONENT, "force": "true"},
        )

    async def delete_pod(self, namespace: str, name: str) -> None:
        await self._request(
            "DELETE",
            f"/api/v1/namespaces/{namespace}/pods/{name}",
            "pods",
            body={"propagationPolicy": "Background"},
            accept=(404,),
        )

    async def patch_status(
        self,
        namespace: str,
        name: str,
        resource_version: str | None,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """Replace our status fields: the object as written, or None if it changed since it was
        read (409) or is gone (404)."""
        status_patch: dict[str, Any] = {key: None for key in old if key not in new}
        status_patch.update(new)
        patch: dict[str, Any] = {"status": status_patch}
        if resource_version:
            patch["metadata"] = {"resourceVersion": resource_version}
        code, body = await self._request(
            "PATCH",
            _session_path(namespace, name) + "/status",
            f"{PLURAL}/status",
            body=patch,
            content_type="application/merge-patch+json",
            accept=(404, 409),
        )
        return body if code < 300 else None

    async def delete_session(self, namespace: str, name: str, uid: str | None) -> None:
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        await self._request(
            "DELETE", _session_path(namespace, name), PLURAL, body=body, accept=(404, 409)
        )

    async def create_event(
        self,
        namespace: str,
        involved: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
    ) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        name = str(involved.get("name"))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": name,
                "namespace": namespace,
                "uid": involved.get("uid"),
                "resourceVersion": involved.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._request(
            "POST", f"/api/v1/namespaces/{namespace}/events", "events", body=event, retry=UNSAFE
        )

    # -- the leader Lease (kube.leader) ----------------------------------------------------------

    async def get_lease(
        self, namespace: str, name: str, time_limit: float
    ) -> tuple[dict[str, Any], str] | None:
        """The Lease's spec and resourceVersion; None if it does not exist. Never retried."""
        status, body = await self._request(
            "GET",
            _lease_path(namespace, name),
            "leases",
            accept=(404,),
            retry=ONCE,
            time_limit=time_limit,
        )
        if status == 404:
            return None
        version = str((body.get("metadata") or {}).get("resourceVersion"))
        return dict(body.get("spec") or {}), version

    async def create_lease(
        self, namespace: str, name: str, spec: Mapping[str, Any], time_limit: float
    ) -> str | None:
        """Create the Lease; its resourceVersion, or None if someone else created it first."""
        manifest = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": dict(spec),
        }
        status, body = await self._request(
            "POST",
            _lease_path(namespace),
            "leases",
            body=manifest,
            accept=(409,),
            retry=ONCE,
            time_limit=time_limit,
        )
        return None if status == 409 else str((body.get("metadata") or {}).get("resourceVersion"))

    async def update_lease(
        self,
        namespace: str,
        name: str,
        spec: Mapping[str, Any],
        resource_version: str,
        time_limit: float,
    ) -> str | None:
        """Replace the Lease's spec if it is still at `resource_version` (compare-and-swap); its
        new resourceVersion, or None if it changed in between (409: someone else wrote it)."""
        manifest = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": resource_version},
            "spec": dict(spec),
        }
        status, body = await self._request(
            "PUT",
            _lease_path(namespace, name),
            "leases",
            body=manifest,
            accept=(409,),
            retry=ONCE,
            time_limit=time_limit,
        )
        return None if status == 409 else str((body.get("metadata") or {}).get("resourceVersion"))


def _lease_path(namespace: str, name: str = "") -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base


def _auth_headers(info: kopf.ConnectionInfo) -> dict[str, str]:
    if info.token:
        return {"Authorization": f"{info.scheme or 'Bearer'} {info.token}"}
    if info.username and info.password:
        return {"Authorization": aiohttp.BasicAuth(info.username, info.password).encode()}
    return {}


async def json_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """Split a watch stream into its JSON objects, however long a line is."""
    pending = bytearray()  # grows in place while a long object arrives in many chunks
    async for chunk in chunks:
        pending += chunk
        if b"\n" not in chunk:
            continue
        *lines, rest = pending.split(b"\n")
        pending = bytearray(rest)
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if pending.strip():
        with contextlib.suppress(ValueError):  # a line the server cut off when it closed
            yield json.loads(pending)
