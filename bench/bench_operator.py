"""Operator benchmark: latency, API writes and memory of agentsession-operator at scale.

Everything runs on a fresh local cluster (tests/support/cluster.py: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler as local processes, no Docker) with a real node
(tests/support/node.py: containerd and the kubelet, running the runner image from `make images`),
and the operator as its console script under its least-privilege ServiceAccount
(config/rbac/operator.yaml), exactly as the e2e tests run it. Baselines are measured in the same
run, on the same node. It measures:

1. create -> pod -> Running: N AgentSessions created at once; for each, from the moment its create
   call returned to the moment a pod watch first saw its runner pod, and to the moment it saw the
   pod's container running. Baseline: N batch/v1 Jobs with the same pod (image, command,
   resources), the same way (kube-controller-manager's Job controller, at its default client limit
   of 20 QPS / burst 30). p50/p99, ratio ours/Job (goal <= 1.0x).
2. pod terminated -> terminal status: M sessions whose runner pods run and end on the node; from the
   moment a pod watch first saw the container terminated to the moment an AgentSession watch first
   saw phase Succeeded/Failed. By default both containers are stubs in the runner image
   (AGENTSESSION_RUNNER_COMMAND: writes a valid summary to /dev/termination-log and exits 0;
   AGENTSESSION_GATEWAY_COMMAND: idles, and on SIGTERM writes a valid gateway report): this
   measures the operator, not the claude CLI or the gateway. `--real-runner` runs the real
   agent-runner, claude CLI and gateway against the scripted Messages API and moto S3 instead
   (fewer sessions: 20 real CLIs already saturate 2 cores). Baseline: M Jobs running the stub,
   pod terminated -> condition Complete.
3. API writes per session lifecycle, in the same window as part 2's sessions: the API server's
   `apiserver_request_total` (POST/PUT/PATCH/DELETE) before and after, attributed to the operator
   (agentsessions/status, pods create/delete, its own Events) or to others (the sessions' own
   creation by this script; pods/binding by the scheduler, pods/status, leases and Events by the
   kubelet), cross-checked with the operator's `agentsession_operator_api_requests_total`.
   Goal <= 4 writes per session.
4. Operator memory, scheduler stopped (pods stay Pending and unbound): a freshly restarted operator
   while 1,000 and then 10,000 AgentSessions (and their pods) are created; VmRSS sampled from
   /proc every 0.2 s, VmHWM, the time until every session has status.phase, and the operator's
   CPU time. Goal <= 150 MB at 10,000.
5. Cold start, what a user waits for: K sessions one after another with the real runner image and
   claude CLI; from the moment the create call returned to the moment the scripted Messages API
   received the session's first request, split into create -> pod seen -> container running ->
   first request. Baseline: the very pod the operator would build, created directly (no
   operator), the same way. Ratio ours/bare pod.

Timestamps are client-side (time.monotonic() in this process when a create call returned, a watch
event arrived or the scripted API got a request): creationTimestamp and container startedAt have
one-second resolution.

Run: `make bench`, or `.venv/bin/python bench/bench_operator.py [flags]` (as root: the node):
  --quick              scaled down: 50 sessions/Jobs in parts 1-3, RSS at 100 and 500, 5 cold starts
  --sessions N         part 1 size (default 200)
  --completions N      parts 2-3 size (default 200 with the stub runner, 20 with --real-runner)
  --rss-sizes A,B,...  part 4 checkpoints, cumulative (default 1000,10000)
  --cold-starts N      part 5 size (default 20)
  --concurrency N      create calls in flight (default 50)
  --real-runner        parts 2-3 run the real agent-runner + claude CLI
  --parts 1,2,4,5      run only these parts (3 is measured with 2)
  --keep               keep the work directory (component, node and operator logs)
Figures are printed, never asserted. Latencies under a burst are bounded by CPU (2 cores for the
control plane, the node, the operator and this script), so they move with whatever else the
machine runs: compare the ratios, which are measured minutes apart on the same cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.support; the operator itself is installed in .venv

from tests.support import scripted_api as sa  # noqa: E402
from tests.support.cluster import (  # noqa: E402
    LocalCluster,
    ensure_binaries,
    free_port,
    restricted_pod,
    stop_process,
)
from tests.support.node import IMAGES_SCRIPT, LocalNode  # noqa: E402
from tests.support.operator_process import (  # noqa: E402
    NETWORK_POLICY_ENV,
    OPERATOR_BIN,
    OperatorProcess,
    operator_kubeconfig,
)
from tests.support.runner_harness import TEST_API_KEY  # noqa: E402
from tests.support.s3server import TenantStore  # noqa: E402
from tests.support.stubs import (  # noqa: E402
    STUB_RESOURCES,
    stub_command,
    stub_gateway_command,
)

GROUP, VERSION, PLURAL = "agents.dev", "v1alpha1", "agentsessions"
SESSION_LABEL = "agents.dev/session"
JOB_LABEL = "job-name"
OPERATOR_COMPONENT = "agentsession-operator"
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
RSS_SAMPLE_SECONDS = 0.2

Obj = dict[str, Any]
Sink = Callable[[str, Obj, float], None]


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to (the message says what failed)."""


def log(message: str) -> None:
    """Progress on stderr; the figures go to stdout at the end."""
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# ---- statistics and formatting ------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..1); NaN when there are no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def ratio(ours: float, baseline: float) -> str:
    if math.isnan(ours) or math.isnan(baseline) or baseline <= 0:
        return "n/a"
    return f"{ours / baseline:.2f}x"


@dataclass
class Latencies:
    """One latency population (seconds) with the objects that never got there."""

    label: str
    values: list[float]
    missing: int = 0

    @classmethod
    def between(cls, label: str, start: Mapping[str, float], end: Mapping[str, float]) -> Latencies:
        values = [end[name] - at for name, at in start.items() if name in end]
        return cls(label, values, missing=len(start) - len(values))

    def p(self, q: float) -> float:
        return percentile(self.values, q)

    def row(self) -> str:
        missing = f"  ({self.missing} never seen)" if self.missing else ""
        return (
            f"  {self.label:<52}{len(self.values):>6}{ms(self.p(0.5)):>9}{ms(self.p(0.99)):>9}"
            f"{ms(max(self.values, default=math.nan)):>9}{missing}"
        )


LATENCY_HEADER = f"  {'':<52}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"


def ratio_row(label: str, ours: Latencies, baseline: Latencies) -> str:
    return (
        f"  {label:<58}{ratio(ours.p(0.5), baseline.p(0.5)):>9}"
        f"{ratio(ours.p(0.99), baseline.p(0.99)):>9}"
    )


@dataclass
class Report:
    """Sections of pre-formatted lines, printed at the end (also after a failure, partially)."""

    header: list[str] = field(default_factory=list)
    sections: list[tuple[str, list[str]]] = field(default_factory=list)

    def add(self, title: str, lines: list[str]) -> None:
        self.sections.append((title, lines))

    def print(self) -> None:
        print()
        for line in self.header:
            print(line)
        for title, lines in self.sections:
            print()
            print(title)
            for line in lines:
                print(line)


# ---- processes: CPU and memory from /proc -------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in KiB (empty if it is gone)."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    found[key] = int(value.split()[0])
    except OSError:
        return {}
    return found


class CpuMeter:
    """CPU seconds used by each named process between two snapshots."""

    def __init__(self, pids: Callable[[], Mapping[str, int]]) -> None:
        self._pids = pids

    def snapshot(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self._pids().items()}

    def since(self, before: Mapping[str, float]) -> dict[str, float]:
        now = self.snapshot()
        return {name: now[name] - before.get(name, 0.0) for name in now}


def cpu_line(used: Mapping[str, float], wall: float) -> str:
    parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in used.items())
    return f"  CPU seconds over {wall:.0f} s wall: {parts}"


class RssSampler:
    """Samples one process's VmRSS every RSS_SAMPLE_SECONDS in a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, memory_kib(self.pid).get("VmRSS", 0))
            self._stop.wait(RSS_SAMPLE_SECONDS)

    def now(self) -> dict[str, int]:
        current = memory_kib(self.pid)
        self.peak_kib = max(self.peak_kib, current.get("VmRSS", 0))
        return current


# ---- the API: requests, creates, watches, metrics -----------------------------------------------


class Api:
    """Admin access to the API server over aiohttp (cheaper per request than threads)."""

    def __init__(self, cluster: LocalCluster, connections: int) -> None:
        self._server = cluster.server
        self._token = cluster.token
        self._ssl = ssl.create_default_context(cafile=str(cluster.ca_file))
        self._connections = connections
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._http = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._connections),
            timeout=aiohttp.ClientTimeout(total=60),
            read_bufsize=1 << 20,  # watch lines are whole objects; pods are ~6 KiB
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "Api used outside `async with`"
        return self._http

    async def request(self, method: str, path: str, body: Obj | None = None) -> tuple[int, Any]:
        async with self.http.request(method, self._server + path, json=body) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text) if text else {}
            except ValueError:
                return response.status, text

    async def get(self, path: str) -> Any:
        status, body = await self.request("GET", path)
        if status != 200:
            raise BenchError(f"GET {path}: HTTP {status}: {str(body)[:300]}")
        return body

    async def create(self, path: str, body: Obj) -> None:
        """POST one object; transient failures (429, 5xx, connection) are retried."""
        for attempt in range(6):
            try:
                async with self.http.post(self._server + path, json=body) as response:
                    await response.read()
                    if response.status < 300:
                        return
                    if response.status not in (429, 500, 503, 504):
                        text = (await response.text())[:300]
                        raise BenchError(f"POST {path}: HTTP {response.status}: {text}")
            except (aiohttp.ClientConnectionError, TimeoutError):
                if attempt == 5:
                    raise
            await asyncio.sleep(0.2 * 2**attempt)
        raise BenchError(f"POST {path}: still failing after retries")

    async def metrics_text(self) -> str:
        async with self.http.get(self._server + "/metrics") as response:
            return await response.text()

    async def watch(self, path: str, sinks: Sequence[Sink], synced: asyncio.Event) -> None:
        """List, then watch `path` forever, handing every event to each sink with its arrival time.

        Cancel the task to stop. A listed object counts as ADDED when the list arrived.
        """
        version = ""
        no_timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        while True:
            if not version:
                listing = await self.get(path)
                arrived = time.monotonic()
                for item in listing.get("items") or []:
                    for sink in sinks:
                        sink("ADDED", item, arrived)
                version = listing["metadata"]["resourceVersion"]
                synced.set()
            query = (
                f"?watch=1&allowWatchBookmarks=true&timeoutSeconds=3600&resourceVersion={version}"
            )
            async with self.http.get(self._server + path + query, timeout=no_timeout) as response:
                if response.status == 410:
                    version = ""
                    continue
                if response.status != 200:
                    text = (await response.text())[:300]
                    raise BenchError(f"watch {path}: HTTP {response.status}: {text}")
                async for line in response.content:
                    arrived = time.monotonic()
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            version = ""
                            break
                        raise BenchError(f"watch {path}: {obj.get('message')}")
                    version = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        for sink in sinks:
                            sink(kind, obj, arrived)


@contextlib.asynccontextmanager
async def watching(api: Api, path: str, *sinks: Sink) -> AsyncIterator[asyncio.Task[None]]:
    """Run a watch on `path` for the duration of the block; returns once the first list is in."""
    synced = asyncio.Event()
    task = asyncio.create_task(api.watch(path, sinks, synced))
    waiter = asyncio.create_task(synced.wait())
    done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()  # raises what went wrong
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class FirstSeen:
    """Per object, when a watch first showed it matching `predicate` (monotonic seconds)."""

    key: Callable[[Obj], str | None]
    predicate: Callable[[Obj], bool] = lambda _: True
    times: dict[str, float] = field(default_factory=dict)

    def __call__(self, kind: str, obj: Obj, arrived: float) -> None:
        if kind == "DELETED":
            return
        name = self.key(obj)
        if name is not None and name not in self.times and self.predicate(obj):
            self.times[name] = arrived


@dataclass
class LastSeen:
    """Per object, the last value of `project(obj)` a watch showed."""

    project: Callable[[Obj], Any]
    values: dict[str, Any] = field(default_factory=dict)

    def __call__(self, kind: str, obj: Obj, arrived: float) -> None:
        if kind != "DELETED":
            self.values[obj["metadata"]["name"]] = self.project(obj)


def count_reaches(seen: FirstSeen, target: int) -> Callable[[], bool]:
    return lambda: len(seen.times) >= target


def count_progress(seen: FirstSeen, target: int) -> Callable[[], str]:
    return lambda: f"{len(seen.times)}/{target}"


def by_name(obj: Obj) -> str | None:
    return str(obj["metadata"]["name"])


def by_label(label: str) -> Callable[[Obj], str | None]:
    def key(obj: Obj) -> str | None:
        return (obj["metadata"].get("labels") or {}).get(label)

    return key


def phase_of(obj: Obj) -> str | None:
    return (obj.get("status") or {}).get("phase")


def has_phase(obj: Obj) -> bool:
    return phase_of(obj) is not None


def is_terminal(obj: Obj) -> bool:
    return phase_of(obj) in TERMINAL_PHASES


def container_running(pod: Obj) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and "running" in (statuses[0].get("state") or {})


def container_terminated(pod: Obj) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and bool((statuses[0].get("state") or {}).get("terminated"))


def job_finished(job: Obj) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)


def job_succeeded_count(job: Obj) -> bool:
    return int((job.get("status") or {}).get("succeeded") or 0) >= 1


async def create_all(
    api: Api, path: str, bodies: Iterable[Obj], concurrency: int
) -> dict[str, float]:
    """Create every body with `concurrency` calls in flight; name -> when its call returned."""
    returned: dict[str, float] = {}
    pending: Iterator[Obj] = iter(bodies)

    async def worker() -> None:
        for body in pending:  # one shared iterator: each body is taken by exactly one worker
            await api.create(path, body)
            returned[body["metadata"]["name"]] = time.monotonic()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return returned


async def wait_until(
    condition: Callable[[], bool],
    *,
    within: float,
    what: str,
    progress: Callable[[], str] | None = None,
) -> float:
    """Poll `condition` (cheap, in-memory) until true; returns seconds waited."""
    started = time.monotonic()
    last_note = started
    while not condition():
        now = time.monotonic()
        if now - started > within:
            detail = f" ({progress()})" if progress else ""
            raise BenchError(f"timed out after {within:.0f}s waiting for {what}{detail}")
        if progress is not None and now - last_note >= 15:
            log(f"  ... {what}: {progress()}")
            last_note = now
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def session_path(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


def session_body(name: str, *, sleep: int = 0, prompt: str | None = None) -> Obj:
    """A session; `sleep` seconds is how long the stub runner works before it reports."""
    spec: Obj = {"prompt": prompt or "Reply with the single word: done.", "maxTurns": 1}
    if sleep:
        spec["env"] = [{"name": "STUB_SLEEP", "value": str(sleep)}]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentSession",
        "metadata": {"name": name},
        "spec": spec,
    }


def job_body(name: str, image: str, command: Sequence[str], *, sleep: int = 0) -> Obj:
    """A Job whose one pod is the stub runner pod's twin: image, command, hardening, resources."""
    template = restricted_pod(
        name,
        command,
        image=image,
        env=[{"name": "STUB_SLEEP", "value": str(sleep)}],
        resources={"requests": STUB_RESOURCES, "limits": STUB_RESOURCES},
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": template["spec"]}},
    }


async def create_namespace(cluster: LocalCluster, prefix: str) -> str:
    """A namespace without a Pod Security label: the node's pods use host networking."""
    return await asyncio.to_thread(cluster.create_namespace, prefix, labels={})


async def delete_namespaces(api: Api, names: Iterable[str], within: float = 600) -> float:
    """Delete namespaces and wait until they are gone (their pods, sessions and Jobs too)."""
    names = list(names)
    started = time.monotonic()
    for name in names:
        await api.request("DELETE", f"/api/v1/namespaces/{name}")
    for name in names:
        while (await api.request("GET", f"/api/v1/namespaces/{name}"))[0] != 404:
            if time.monotonic() - started > within:
                raise BenchError(f"namespace {name} still exists after {within:.0f}s")
            await asyncio.sleep(0.5)
    return time.monotonic() - started


async def add_secrets(api: Api, namespace: str) -> None:
    """The API-key Secret runner pods reference by name (the kubelet resolves it at start)."""
    body = {
        "metadata": {"name": "anthropic-api-key"},
        "stringData": {"ANTHROPIC_API_KEY": TEST_API_KEY},
    }
    await api.create(f"/api/v1/namespaces/{namespace}/secrets", body)


# ---- API request counters -----------------------------------------------------------------------

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def apiserver_writes(text: str) -> Counter[tuple[str, str, str, str]]:
    """apiserver_request_total for write verbs: (verb, resource, subresource, code) -> count."""
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
        labels = dict(_LABEL.findall(labels_text))
        if labels.get("verb") not in WRITE_VERBS:
            continue
        key = (labels["verb"], labels.get("resource", ""), labels.get("subresource", ""))
        counts[(*key, labels.get("code", ""))] += int(float(value))
    return counts


def operator_requests(text: str) -> Counter[tuple[str, str, str]]:
    """The operator's own counter: (verb, resource, code) -> count."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name != "agentsession_operator_api_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                labels = sample.labels
                counts[(labels["verb"], labels["resource"], labels["code"])] += int(sample.value)
    return counts


@dataclass(frozen=True)
class Controller:
    """Whose writes a window counts: the operator for sessions, kcm's Job controller for Jobs."""

    name: str
    resource: str
    """The resource it reconciles (its creation is the benchmark's, its status the controller's)."""
    unit: str
    component: str
    """The reporting component of its Events."""


OPERATOR = Controller("operator", PLURAL, "session", OPERATOR_COMPONENT)
JOB_CONTROLLER = Controller("Job controller", "jobs", "Job", "job-controller")


def attribute(controller: Controller, verb: str, resource: str, subresource: str) -> str:
    """Who caused one kind of write in a window in which only one population runs."""
    if resource == controller.resource:
        return "bench (creates them)" if verb == "POST" and not subresource else controller.name
    if resource == "pods" and not subresource:
        return controller.name  # create, finalizer PATCH, delete; the kubelet never writes these
    if resource == "events":
        return "Events: split by component below"
    return "node (kubelet, scheduler)"  # pods/status, pods/binding, leases, nodes/status


@dataclass
class WriteWindow:
    """API writes during one population's run, from the API server's own counter."""

    controller: Controller
    n: int
    delta: Counter[tuple[str, str, str, str]]
    events: Obj

    def event_components(self) -> Counter[str]:
        return Counter(
            e.get("reportingComponent") or (e.get("source") or {}).get("component") or "?"
            for e in self.events.get("items") or []
        )

    def controller_writes(self) -> int:
        total = sum(
            count
            for (verb, resource, sub, _), count in self.delta.items()
            if attribute(self.controller, verb, resource, sub) == self.controller.name
        )
        return total + self.event_components().get(self.controller.component, 0)

    def lines(self) -> list[str]:
        unit = f"/{self.controller.unit}"
        lines = [
            f"  {self.controller.name} window: {'verb resource[/sub] code':<34}"
            f"{'count':>7}{unit:>10}  who"
        ]
        for (verb, resource, sub, code), count in sorted(self.delta.items()):
            if count > 0:
                target = f"{resource}/{sub}" if sub else resource
                who = attribute(self.controller, verb, resource, sub)
                lines.append(
                    f"  {'':<{len(self.controller.name) + 9}}{verb + ' ' + target + ' ' + code:<34}"
                    f"{count:>7}{count / self.n:>10.2f}  {who}"
                )
        components = self.event_components()
        lines.append(
            f"  {'':<{len(self.controller.name) + 9}}Events by component: "
            + ", ".join(f"{name} {count}" for name, count in sorted(components.items()))
        )
        return lines


# ---- the pieces this benchmark starts -----------------------------------------------------------


@dataclass
class Setup:
    """Everything the parts share."""

    args: argparse.Namespace
    cluster: LocalCluster
    node: LocalNode
    operator: OperatorProcess
    operator_env: dict[str, str]
    store: TenantStore
    scripted: sa.ScriptedAPI
    stub: list[str]
    report: Report
    cpu: CpuMeter


# ---- part 1: create -> pod ----------------------------------------------------------------------


async def create_then_see_pods(
    api: Api,
    namespace: str,
    create_path: str,
    bodies: Iterable[Obj],
    pod_label: str,
    n: int,
    concurrency: int,
    what: str,
) -> tuple[dict[str, float], dict[str, float], dict[str, float], float]:
    """Create `n` objects and wait for a running pod (labelled `pod_label` with the object's name)
    of each; returns when each was created, when its first pod was seen, when that pod's
    container was first seen running, and the creation rate per second."""
    pods = FirstSeen(by_label(pod_label))
    running = FirstSeen(by_label(pod_label), container_running)
    async with watching(api, f"/api/v1/namespaces/{namespace}/pods", pods, running):
        started = time.monotonic()
        created = await create_all(api, create_path, bodies, concurrency)
        rate = n / (time.monotonic() - started)
        await wait_until(
            lambda: len(running.times) >= n,
            within=600,
            what=what,
            progress=lambda: f"{len(pods.times)} seen, {len(running.times)}/{n} running",
        )
    return created, pods.times, running.times, rate


async def part_create_to_pod(api: Api, setup: Setup) -> list[str]:
    """Both populations on the node, one after the other; returns the namespaces to delete."""
    n, concurrency = setup.args.sessions, setup.args.concurrency
    sessions_ns = await create_namespace(setup.cluster, "bench-create-ags")
    jobs_ns = await create_namespace(setup.cluster, "bench-create-job")
    await add_secrets(api, sessions_ns)
    cpu_before, wall_start = setup.cpu.snapshot(), time.monotonic()
    # The stub sleeps long enough that every pod is seen running before it ends.
    sleep = 120

    log(f"part 1: creating {n} AgentSessions (stub runner pods on the node)")
    created, pods, running, create_rate = await create_then_see_pods(
        api,
        sessions_ns,
        session_path(sessions_ns),
        (session_body(f"s{i:05d}", sleep=sleep) for i in range(n)),
        SESSION_LABEL,
        n,
        concurrency,
        "runner pods running",
    )
    ours = Latencies.between("AgentSession -> runner pod (operator)", created, pods)
    ours_running = Latencies.between("AgentSession -> runner pod Running", created, running)
    log(f"part 1: deleting the sessions' namespace, then creating {n} Jobs (baseline)")
    await delete_namespaces(api, [sessions_ns])
    jobs, job_pods, job_running, job_rate = await create_then_see_pods(
        api,
        jobs_ns,
        f"/apis/batch/v1/namespaces/{jobs_ns}/jobs",
        (
            job_body(f"j{i:05d}", setup.node.images["runner"], setup.stub, sleep=sleep)
            for i in range(n)
        ),
        JOB_LABEL,
        n,
        concurrency,
        "Job pods running",
    )
    baseline = Latencies.between("Job -> pod (Job controller, kcm at 20 QPS)", jobs, job_pods)
    baseline_running = Latencies.between("Job -> pod Running", jobs, job_running)
    wall = time.monotonic() - wall_start

    setup.report.add(
        f"1. create -> pod -> Running on the node: {n} objects created at once "
        f"({concurrency} calls in flight; {create_rate:.0f} sessions/s, {job_rate:.0f} Jobs/s; "
        "the same stub pod in both)",
        [
            LATENCY_HEADER,
            ours.row(),
            baseline.row(),
            ratio_row("ratio ours/Job, create -> pod (goal <= 1.0x)", ours, baseline),
            ours_running.row(),
            baseline_running.row(),
            ratio_row("ratio ours/Job, create -> Running", ours_running, baseline_running),
            cpu_line(setup.cpu.since(cpu_before), wall),
        ],
    )
    return [jobs_ns]


# ---- parts 2 and 3: pod terminated -> status, API writes ----------------------------------------


async def part_terminated_to_status(api: Api, setup: Setup) -> list[str]:
    """Sessions (and then Jobs) whose pods run; the API-write window is the sessions' run."""
    args = setup.args
    n, concurrency = args.completions, args.concurrency
    runner = (
        "the real agent-runner + claude CLI (scripted API, moto S3)"
        if args.real_runner
        else "a stub runner in the runner image (writes a Completed summary, exits 0)"
    )
    sessions_ns = await create_namespace(setup.cluster, "bench-run-ags")
    jobs_ns = await create_namespace(setup.cluster, "bench-run-job")
    await add_secrets(api, sessions_ns)
    if args.real_runner:
        setup.store.provision(sessions_ns)
    cpu_before, wall_start = setup.cpu.snapshot(), time.monotonic()

    log(f"part 2: {n} AgentSessions run to completion on the node ({runner})")
    terminated = FirstSeen(by_label(SESSION_LABEL), container_terminated)
    terminal = FirstSeen(by_name, is_terminal)
    phases = LastSeen(phase_of)
    api_before = apiserver_writes(await api.metrics_text())
    operator_before = operator_requests(await asyncio.to_thread(setup.operator.metrics))
    async with (
        watching(api, f"/api/v1/namespaces/{sessions_ns}/pods", terminated),
        watching(api, session_path(sessions_ns), terminal, phases),
    ):
        created = await create_all(
            api,
            session_path(sessions_ns),
            (session_body(f"r{i:05d}") for i in range(n)),
            concurrency,
        )
        await wait_until(
            lambda: len(terminal.times) >= n,
            within=600 if not args.real_runner else 1200,
            what="sessions to finish",
            progress=lambda: f"{len(terminated.times)} pods ended, {len(terminal.times)}/{n} done",
        )
        operator_after = await settled_operator_counter(setup.operator)
        api_after = apiserver_writes(await api.metrics_text())
    events = await api.get(f"/api/v1/namespaces/{sessions_ns}/events")
    ours = Latencies.between(
        "AgentSession: pod terminated -> phase terminal", terminated.times, terminal.times
    )
    ours_total = Latencies.between(
        "AgentSession: created -> phase terminal", created, terminal.times
    )
    outcomes = Counter(phases.values.values())

    log(f"part 2: {n} Jobs run to completion (baseline)")
    job_terminated = FirstSeen(by_label(JOB_LABEL), container_terminated)
    job_done = FirstSeen(by_name, job_finished)
    job_counted = FirstSeen(by_name, job_succeeded_count)
    jobs_api_before = apiserver_writes(await api.metrics_text())
    async with (
        watching(api, f"/api/v1/namespaces/{jobs_ns}/pods", job_terminated),
        watching(api, f"/apis/batch/v1/namespaces/{jobs_ns}/jobs", job_done, job_counted),
    ):
        jobs = await create_all(
            api,
            f"/apis/batch/v1/namespaces/{jobs_ns}/jobs",
            (job_body(f"j{i:05d}", setup.node.images["runner"], setup.stub) for i in range(n)),
            concurrency,
        )
        await wait_until(
            lambda: len(job_done.times) >= n,
            within=600,
            what="Jobs to finish",
            progress=lambda: f"{len(job_terminated.times)} pods ended, {len(job_done.times)}/{n}",
        )
        jobs_api_after = await settled_apiserver_writes(api)
    job_events = await api.get(f"/api/v1/namespaces/{jobs_ns}/events")
    baseline = Latencies.between(
        "Job: pod terminated -> condition Complete", job_terminated.times, job_done.times
    )
    baseline_count = Latencies.between(
        "Job: pod terminated -> status.succeeded=1", job_terminated.times, job_counted.times
    )
    baseline_total = Latencies.between("Job: created -> condition Complete", jobs, job_done.times)
    wall = time.monotonic() - wall_start

    outcome_text = ", ".join(f"{phase or 'no phase'} {count}" for phase, count in outcomes.items())
    setup.report.add(
        f"2. pod terminated -> terminal status on the node: {n} sessions, then {n} Jobs "
        f"(stub pods), each population created at once; session runner: {runner}",
        [
            LATENCY_HEADER,
            ours.row(),
            baseline.row(),
            baseline_count.row(),
            ratio_row("ratio ours/Job Complete", ours, baseline),
            ours_total.row(),
            baseline_total.row(),
            # With the real runner, created -> terminal compares a claude CLI run with the stub.
            *(
                []
                if args.real_runner
                else [ratio_row("ratio ours/Job, created -> terminal", ours_total, baseline_total)]
            ),
            f"  session outcomes: {outcome_text}",
            cpu_line(setup.cpu.since(cpu_before), wall),
        ],
    )
    setup.report.add(
        f"3. API writes per session lifecycle ({n} sessions to completion; window = part 2's "
        "sessions)",
        api_write_lines(
            WriteWindow(OPERATOR, n, api_after - api_before, events),
            WriteWindow(JOB_CONTROLLER, n, jobs_api_after - jobs_api_before, job_events),
            operator_after - operator_before,
        ),
    )
    return [sessions_ns, jobs_ns]


async def settled_operator_counter(
    operator: OperatorProcess, quiet: float = 3.0, within: float = 30.0
) -> Counter[tuple[str, str, str]]:
    """The operator's request counter once it has not moved for `quiet` seconds (late Events)."""
    deadline = time.monotonic() + within
    last = operator_requests(await asyncio.to_thread(operator.metrics))
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = operator_requests(await asyncio.to_thread(operator.metrics))
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            break
    return last


async def settled_apiserver_writes(
    api: Api, quiet: float = 3.0, within: float = 30.0
) -> Counter[tuple[str, str, str, str]]:
    """The API server's write counts once the job-related ones have not moved for `quiet` s."""

    def relevant(counts: Counter[tuple[str, str, str, str]]) -> Counter[tuple[str, str, str, str]]:
        return Counter({k: v for k, v in counts.items() if k[1] in ("jobs", "pods", "events")})

    deadline = time.monotonic() + within
    last = apiserver_writes(await api.metrics_text())
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = apiserver_writes(await api.metrics_text())
        if relevant(now) != relevant(last):
            stable_since = time.monotonic()
        last = now
        if time.monotonic() - stable_since >= quiet:
            break
    return last


def api_write_lines(
    sessions: WriteWindow, jobs: WriteWindow, operator_delta: Counter[tuple[str, str, str]]
) -> list[str]:
    n = sessions.n
    ours, baseline = sessions.controller_writes() / n, jobs.controller_writes() / jobs.n
    lines = [*sessions.lines(), *jobs.lines()]
    lines.append(f"  {'operator counter: verb resource code':<43}{'count':>7}{'/session':>10}")
    own_writes = reads = 0
    for (verb, resource, code), count in sorted(operator_delta.items()):
        if count > 0:
            lines.append(f"  {verb + ' ' + resource + ' ' + code:<43}{count:>7}{count / n:>10.2f}")
            own_writes += count if verb in WRITE_VERBS else 0
            reads += count if verb == "GET" else 0
    lines += [
        f"  => operator writes per session: {ours:.2f} (API server), {own_writes / n:.2f} (its own "
        "counter); goal <= 4",
        f"  => Job controller writes per Job: {baseline:.2f}; ours/Job {ratio(ours, baseline)}",
        f"  => operator reads (GET) per session: {reads / n:.2f} (kopf's list/watch not counted)",
    ]
    return lines


# ---- part 4: memory -----------------------------------------------------------------------------


async def part_memory(api: Api, setup: Setup) -> list[str]:
    """A fresh operator process while sessions pile up to each checkpoint; the scheduler is
    stopped, so their pods stay Pending and unbound (as in a cluster out of capacity)."""
    sizes, concurrency = setup.args.rss_sizes, setup.args.concurrency
    log("part 4: stopping the scheduler; restarting the operator (fresh process, empty cluster)")
    scheduler = setup.cluster.processes.pop("kube-scheduler", None)
    if scheduler is not None:
        await asyncio.to_thread(stop_process, scheduler)
    await asyncio.to_thread(setup.operator.stop)
    setup.operator.env = setup.operator_env  # the stub settings (part 5 may have run before)
    await asyncio.to_thread(setup.operator.start)
    assert setup.operator.process is not None
    pid = setup.operator.process.pid
    namespace = await create_namespace(setup.cluster, "bench-rss")
    rows = [
        f"  {'sessions':>9}{'create s':>10}{'reconciled s':>14}{'RSS MB':>9}{'VmHWM MB':>10}"
        f"{'peak MB':>9}{'op CPU s':>10}{'CPU ms/ses':>12}{'create->phase p50/p99 ms':>26}"
    ]
    phased = FirstSeen(by_name, has_phase)
    with RssSampler(pid) as sampler:
        await asyncio.sleep(5)  # let start-up allocations settle before the idle figure
        idle = sampler.now()
        rows.append(
            f"  {0:>9}{'':>10}{'':>14}{idle.get('VmRSS', 0) / 1024:>9.1f}"
            f"{idle.get('VmHWM', 0) / 1024:>10.1f}{sampler.peak_kib / 1024:>9.1f}"
            f"{cpu_seconds(pid):>10.1f}"
        )
        cpu_before, wall_start = setup.cpu.snapshot(), time.monotonic()
        async with watching(api, session_path(namespace), phased):
            done = 0
            for size in sizes:
                log(f"part 4: creating sessions {done}..{size - 1}")
                op_cpu = cpu_seconds(pid)
                started = time.monotonic()
                created = await create_all(
                    api,
                    session_path(namespace),
                    (session_body(f"m{i:05d}") for i in range(done, size)),
                    concurrency,
                )
                create_seconds = time.monotonic() - started
                await wait_until(
                    count_reaches(phased, size),
                    within=max(300.0, size * 0.3),
                    what="every session to have status.phase",
                    progress=count_progress(phased, size),
                )
                reconciled = time.monotonic() - started
                op_used = cpu_seconds(pid) - op_cpu
                await asyncio.sleep(5)  # after the burst: what the operator keeps
                current = sampler.now()
                burst = Latencies.between("", created, phased.times)
                rows.append(
                    f"  {size:>9}{create_seconds:>10.1f}{reconciled:>14.1f}"
                    f"{current.get('VmRSS', 0) / 1024:>9.1f}{current.get('VmHWM', 0) / 1024:>10.1f}"
                    f"{sampler.peak_kib / 1024:>9.1f}{op_used:>10.1f}"
                    f"{op_used * 1000 / (size - done):>12.2f}"
                    f"{ms(burst.p(0.5)) + ' / ' + ms(burst.p(0.99)):>26}"
                )
                log(f"part 4: {size} sessions reconciled in {reconciled:.1f}s")
                done = size
    wall = time.monotonic() - wall_start
    setup.report.add(
        f"4. operator memory, scheduler stopped (pods stay Pending): fresh operator, sessions "
        f"created at checkpoints {', '.join(map(str, sizes))} ({concurrency} in flight). "
        "RSS after 5 s idle at each checkpoint; VmHWM and sampled peak (0.2 s) so far; "
        "op CPU s and CPU ms/ses for that step; goal: peak <= 150 MB at 10,000",
        [*rows, cpu_line(setup.cpu.since(cpu_before), wall)],
    )
    return [namespace]


# ---- part 5: cold start --------------------------------------------------------------------------


COLD_MARKER = re.compile(r"COLD-c[0-9a-f]{8}")


class FirstRequests:
    """When the scripted API first heard from each session (by the marker in its prompt)."""

    def __init__(self, scripted: sa.ScriptedAPI) -> None:
        self.times: dict[str, float] = {}
        self._lock = threading.Lock()
        scripted.on_request = self.record

    def record(self, request: sa.RecordedRequest) -> None:
        now = time.monotonic()
        for marker in COLD_MARKER.findall(request.first_user_text()):
            with self._lock:
                self.times.setdefault(marker, now)


def bare_runner_pod(
    namespace: str,
    name: str,
    prompt: str,
    settings_env: Mapping[str, str],
    credentials: Mapping[str, str],
) -> tuple[Obj, Obj]:
    """The runner pod the operator would build for this session, and the store-credentials
    Secret it would create for it (from `credentials`), built by the same code."""
    from agentsession_operator.models import AgentSession
    from agentsession_operator.reconcile.podspec import build_pod, run_config_for, store_secret
    from agentsession_operator.settings import OperatorSettings

    values = {
        k.removeprefix("AGENTSESSION_").lower(): v
        for k, v in settings_env.items()
        if k.startswith("AGENTSESSION_")
    }
    settings = OperatorSettings(**values)
    session = AgentSession.from_body(
        {
            **session_body(name, prompt=prompt),
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
        }
    )
    pod = build_pod(session, 1, run_config_for(session, None, settings), settings)
    del pod["metadata"]["ownerReferences"]  # no AgentSession owns it
    del pod["metadata"]["labels"]["app.kubernetes.io/managed-by"]  # nor does the operator watch it
    secret = store_secret(session, pod["metadata"]["name"], credentials)
    del secret["metadata"]["ownerReferences"]
    return pod, secret


async def cold_starts(
    api: Api,
    namespace: str,
    k: int,
    create: Callable[[str, str], Awaitable[None]],
    firsts: FirstRequests,
) -> tuple[list[float], list[float], list[float], list[float]]:
    """k sessions one after another: create -> pod seen -> running -> first API request."""
    pods = FirstSeen(by_label(SESSION_LABEL))
    running = FirstSeen(by_label(SESSION_LABEL), container_running)
    totals, to_pod, to_running, to_request = [], [], [], []
    async with watching(api, f"/api/v1/namespaces/{namespace}/pods", pods, running):
        for i in range(k):
            name = f"c{uuid.uuid4().hex[:8]}"
            marker = f"COLD-{name}"
            started = time.monotonic()
            await create(name, f"{marker}: reply with one word")
            await wait_until(
                lambda marker=marker: marker in firsts.times,  # type: ignore[misc]
                within=180,
                what=f"cold start {i + 1}/{k}: the first API request",
            )
            request_at = firsts.times[marker]
            seen, run = pods.times.get(name, request_at), running.times.get(name, request_at)
            totals.append(request_at - started)
            to_pod.append(seen - started)
            to_running.append(run - seen)
            to_request.append(request_at - run)
    return totals, to_pod, to_running, to_request


async def part_cold_start(api: Api, setup: Setup) -> list[str]:
    """The real runner: AgentSession created -> first Messages API request, vs the bare pod."""
    k = setup.args.cold_starts
    log("part 5: restarting the operator with the real runner (image, claude CLI, moto S3)")
    await asyncio.to_thread(setup.operator.stop)
    real_env = real_runner_env(setup.operator_env, setup.store, setup.scripted)
    setup.operator.env = real_env
    await asyncio.to_thread(setup.operator.start)
    sessions_ns = await create_namespace(setup.cluster, "bench-cold-ags")
    pods_ns = await create_namespace(setup.cluster, "bench-cold-pod")
    for namespace in (sessions_ns, pods_ns):
        await add_secrets(api, namespace)
        setup.store.provision(namespace)
    firsts = FirstRequests(setup.scripted)
    cpu_before, wall_start = setup.cpu.snapshot(), time.monotonic()

    async def create_session(name: str, prompt: str) -> None:
        status, body = await api.request(
            "POST", session_path(sessions_ns), session_body(name, prompt=prompt)
        )
        if status != 201:
            raise BenchError(f"creating {name}: HTTP {status}: {body}")

    async def create_pod(name: str, prompt: str) -> None:
        # Vended like the operator does (STS AssumeRole), then Secret and pod.
        credentials = await asyncio.to_thread(setup.store.credentials_for, pods_ns)
        pod, secret = bare_runner_pod(pods_ns, name, prompt, real_env, credentials.env())
        for kind, body in (("secrets", secret), ("pods", pod)):
            status, answer = await api.request("POST", f"/api/v1/namespaces/{pods_ns}/{kind}", body)
            if status != 201:
                raise BenchError(f"creating {kind} for {name}: HTTP {status}: {answer}")

    log(f"part 5: {k} AgentSessions one after another, created -> first API request")
    ours = await cold_starts(api, sessions_ns, k, create_session, firsts)
    log(f"part 5: {k} bare runner pods one after another (baseline)")
    bare = await cold_starts(api, pods_ns, k, create_pod, firsts)
    setup.scripted.on_request = None
    wall = time.monotonic() - wall_start

    def row(label: str, values: list[float]) -> str:
        return f"  {label:<66}{ms(percentile(values, 0.5)):>9}{ms(percentile(values, 0.99)):>9}"

    setup.report.add(
        f"5. cold start, one at a time ({k} each): created -> the scripted API's first request, "
        "real runner image and claude CLI",
        [
            f"  {'':<66}{'p50 ms':>9}{'p99 ms':>9}",
            row("AgentSession -> first API request", ours[0]),
            row("  create -> runner pod seen (operator)", ours[1]),
            row("  pod seen -> container running (scheduler, kubelet, containerd)", ours[2]),
            row("  running -> first API request (runner, CLI)", ours[3]),
            row("bare runner pod -> first API request (baseline)", bare[0]),
            row("  pod seen -> container running", bare[2]),
            row("  running -> first API request", bare[3]),
            f"  {'ratio ours/bare pod':<66}"
            f"{ratio(percentile(ours[0], 0.5), percentile(bare[0], 0.5)):>9}"
            f"{ratio(percentile(ours[0], 0.99), percentile(bare[0], 0.99)):>9}",
            cpu_line(setup.cpu.since(cpu_before), wall),
        ],
    )
    return [sessions_ns, pods_ns]


# ---- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="scaled down")
    parser.add_argument("--sessions", type=int, help="part 1 size (default 200; quick 50)")
    parser.add_argument("--completions", type=int, help="parts 2-3 size (200; 20 real; quick 50)")
    parser.add_argument(
        "--rss-sizes", help="part 4 checkpoints (default 1000,10000; quick 100,500)"
    )
    parser.add_argument("--cold-starts", type=int, help="part 5 size (default 20; quick 5)")
    parser.add_argument("--concurrency", type=int, default=50, help="create calls in flight")
    parser.add_argument("--real-runner", action="store_true", help="real agent-runner + CLI")
    parser.add_argument("--parts", default="1,2,4,5", help="parts to run (3 comes with 2)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    quick = args.quick
    args.sessions = args.sessions or (50 if quick else 200)
    args.completions = args.completions or (20 if args.real_runner else 50 if quick else 200)
    args.cold_starts = args.cold_starts or (5 if quick else 20)
    sizes = args.rss_sizes or ("100,500" if quick else "1000,10000")
    args.rss_sizes = sorted(int(s) for s in sizes.split(",") if s.strip())
    args.parts = {int(p) for p in args.parts.split(",") if p.strip()}
    if 3 in args.parts:
        args.parts.add(2)
    return args


async def run_parts(setup: Setup) -> None:
    async with Api(setup.cluster, connections=setup.args.concurrency + 16) as api:
        leftovers: list[str] = []
        for number, part in (
            (1, part_create_to_pod),
            (2, part_terminated_to_status),
            (5, part_cold_start),
            (4, part_memory),  # last: it stops the scheduler
        ):
            if number not in setup.args.parts:
                continue
            if leftovers:
                # A clean slate: the next part should see only its own pods and sessions.
                log(f"deleting earlier namespaces ({', '.join(leftovers)})")
                seconds = await delete_namespaces(api, leftovers)
                log(f"  gone after {seconds:.0f}s")
            leftovers = await part(api, setup)


def operator_env(
    kubeconfig: Path, home: Path, runner_image: str, stub: list[str]
) -> dict[str, str]:
    """The operator's environment: as in the e2e tests, with the stub runner in tiny pods."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "KUBECONFIG": str(kubeconfig),
        "AGENTSESSION_METRICS_PORT": str(free_port()),
        "AGENTSESSION_HEALTH_PORT": str(free_port()),
        "AGENTSESSION_DEFAULT_TIMEOUT_SECONDS": "300",
        "AGENTSESSION_RUNNER_IMAGE": runner_image,
        "AGENTSESSION_RUNNER_HOST_NETWORK": "true",
        "AGENTSESSION_STORE_URL": "s3://bench-unused/agents",  # the stub never opens it
        "AGENTSESSION_RUNNER_COMMAND": ",".join(stub),
        "AGENTSESSION_DEFAULT_CPU": STUB_RESOURCES["cpu"],
        "AGENTSESSION_DEFAULT_MEMORY": STUB_RESOURCES["memory"],
        "AGENTSESSION_DEFAULT_EPHEMERAL_STORAGE": STUB_RESOURCES["ephemeral-storage"],
        "AGENTSESSION_GATEWAY_COMMAND": ",".join(stub_gateway_command()),
        "AGENTSESSION_GATEWAY_CPU": STUB_RESOURCES["cpu"],
        "AGENTSESSION_GATEWAY_MEMORY": STUB_RESOURCES["memory"],
        # As the chart runs it: the runner NetworkPolicy is checked before every pod.
        **NETWORK_POLICY_ENV,
    }


def real_runner_env(
    base: Mapping[str, str], store: TenantStore, api: sa.ScriptedAPI
) -> dict[str, str]:
    """The same operator, running the real agent-runner (the image's own command) and CLI."""
    env = {
        k: v
        for k, v in base.items()
        if k
        not in (
            "AGENTSESSION_RUNNER_COMMAND",
            "AGENTSESSION_DEFAULT_CPU",
            "AGENTSESSION_DEFAULT_MEMORY",
            "AGENTSESSION_DEFAULT_EPHEMERAL_STORAGE",
            "AGENTSESSION_GATEWAY_COMMAND",
            "AGENTSESSION_GATEWAY_CPU",
            "AGENTSESSION_GATEWAY_MEMORY",
        )
    }
    env.update(
        {
            **store.operator_env(),
            "AGENTSESSION_ANTHROPIC_BASE_URL": api.base_url,
            "AGENTSESSION_CLI_MAX_RETRIES": "0",
            "AGENTSESSION_DEFAULT_MODEL": "claude-sonnet-4-5",
            # Two real CLIs at a time on 2 cores: keep requests honest but schedulable.
            "AGENTSESSION_DEFAULT_CPU": "500m",
        }
    )
    return env


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print(
            "the benchmark runs a real node (kubelet, containerd): run it as root", file=sys.stderr
        )
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # clean up on `kill` as on Ctrl-C
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    report = Report()
    failed = False
    try:
        with contextlib.ExitStack() as stack:
            bin_dir = ensure_binaries()
            subprocess.run(
                [sys.executable, str(IMAGES_SCRIPT), "build"], check=True, stdout=subprocess.DEVNULL
            )
            log(f"starting the control plane in {work}")
            cluster = stack.enter_context(LocalCluster(work / "cluster", bin_dir=bin_dir))
            log("starting the node (containerd, kubelet)")
            node = stack.enter_context(
                LocalNode(
                    cluster.kubeconfig,
                    bin_dir=bin_dir,
                    client_ca_file=cluster.kubelet_client_ca,
                    logs_dir=cluster.logs_dir,
                )
            )
            store = TenantStore(f"bench-operator-{uuid.uuid4().hex[:6]}")
            stack.callback(store.stop)
            scripted = stack.enter_context(sa.ScriptedAPI(default=sa.text("done")))
            stub = stub_command()
            home = work / "operator"
            home.mkdir()
            env = operator_env(
                operator_kubeconfig(cluster, home / "kubeconfig"), home, node.images["runner"], stub
            )
            if args.real_runner:
                env = real_runner_env(env, store, scripted)
            operator = OperatorProcess(
                argv=[OPERATOR_BIN],
                env=env,
                log_path=home / "operator.log",
                metrics_port=int(env["AGENTSESSION_METRICS_PORT"]),
                health_port=int(env["AGENTSESSION_HEALTH_PORT"]),
                die_with_parent=True,
            )
            stack.callback(operator.stop)
            log("starting the operator")
            operator.start()

            def pids() -> dict[str, int]:
                found = {name: p.pid for name, p in cluster.processes.items()}
                found.update({name: p.pid for name, p in node.processes.items()})
                if operator.process is not None:
                    found["operator"] = operator.process.pid
                found["bench"] = os.getpid()
                return found

            setup = Setup(
                args, cluster, node, operator, env, store, scripted, stub, report, CpuMeter(pids)
            )
            report.header = [
                f"Operator benchmark ({dt.date.today()}, {os.cpu_count()} CPUs, "
                f"Kubernetes {bin_dir.parent.name.removeprefix('k8s-')} local cluster, real node "
                f"(kubelet + containerd), runner image {node.images['runner']}; "
                "client-side timestamps)",
                "  command: " + " ".join([sys.executable, *sys.argv]),
            ]
            try:
                asyncio.run(run_parts(setup))
            except BaseException:
                failed = True
                print(f"\noperator log tail:\n{operator.log_tail(30)}", file=sys.stderr)
                raise
    except KeyboardInterrupt:
        print("\ninterrupted: everything this benchmark started has been stopped", file=sys.stderr)
        failed = True
    finally:
        total = time.monotonic() - began
        report.header.append(f"  total wall time: {total / 60:.1f} min")
        report.print()
        if args.keep or failed:
            print(f"\nwork directory (logs) kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
