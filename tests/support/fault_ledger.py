"""Counts what a fault cost a session on the real node: duplicate runner pods and lost transcript
lines. Used by the fault tests (tests/e2e/test_faults.py, test_retries.py) for the README's fault
matrix.

`FaultLedger` watches the namespace's pods from before the session exists to the end (LIST, then
WATCH; after a broken watch, an API server or etcd restart included, it lists again), records
every pod by its controller ownerReference's UID, and notes the most pods of one owner in phase
Running at once. Meanwhile it reads the CLI's own transcript files in every such pod's home volume
on the node (as root), keeping every line it ever saw, because the kubelet removes the volume once
the pod has ended. At the end, lines seen locally but absent from the store are the lines lost.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from tests.support.cluster import LocalCluster
from tests.support.node import LocalNode
from tests.support.runner_harness import LOCAL_ONLY_TYPES

POLL_SECONDS = 0.02
"""How often the transcript files are read: a line the CLI wrote and lost within this interval
before a kill is not counted (so the count is a lower bound by at most that window)."""


@dataclass
class _Pod:
    uid: str
    name: str
    owner_uid: str
    attempt: str
    phase: str = ""


@dataclass(frozen=True)
class FaultCount:
    """What one session went through, as the ledger saw it."""

    pods: int
    """Distinct runner pods (UIDs) the session ever had."""
    attempts: int
    """Distinct attempt numbers among them."""
    most_running_at_once: int
    """The most of the session's pods in phase Running at the same time (1 is right)."""
    lines_seen: int
    """Transcript lines (by uuid) the CLI wrote in any of the session's pods."""
    lines_lost: int
    """Of those, lines the store does not hold at the end."""
    lost: frozenset[str] = field(default_factory=frozenset)

    @property
    def duplicate_pods(self) -> int:
        """Pods beyond one per attempt, plus one for each pod running next to another."""
        return self.pods - self.attempts + max(self.most_running_at_once - 1, 0)


class FaultLedger:
    """Watch a namespace's runner pods and their transcripts; see the module docstring."""

    def __init__(self, cluster: LocalCluster, node: LocalNode, namespace: str) -> None:
        self.cluster = cluster
        self.node = node
        self.namespace = namespace
        self._lock = threading.Lock()
        self._pods: dict[str, _Pod] = {}
        self._present: set[str] = set()
        self._most_running: Counter[str] = Counter()
        self._lines: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._listed = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch_pods, daemon=True),
            threading.Thread(target=self._follow_transcripts, daemon=True),
        ]

    @contextlib.contextmanager
    def running(self) -> Iterator[FaultLedger]:
        for thread in self._threads:
            thread.start()
        self._listed.wait(timeout=30)
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=10)

    def count(self, owner_uid: str, stored_uuids: Iterable[str]) -> FaultCount:
        """The tally for the session with UID `owner_uid`, against the uuids the store holds."""
        self._read_transcripts()  # whatever is still on disk
        with self._lock:
            pods = [p for p in self._pods.values() if p.owner_uid == owner_uid]
            seen = set().union(*(self._lines.get(p.uid, set()) for p in pods))
            most = self._most_running[owner_uid]
        lost = seen - set(stored_uuids)
        return FaultCount(
            pods=len(pods),
            attempts=len({p.attempt for p in pods}),
            most_running_at_once=most,
            lines_seen=len(seen),
            lines_lost=len(lost),
            lost=frozenset(lost),
        )

    # ---- the pod watch -------------------------------------------------------------------------

    def _record(self, pod: client.V1Pod, deleted: bool = False) -> None:
        owner = next((r for r in pod.metadata.owner_references or [] if r.controller), None)
        if owner is None:
            return
        uid = str(pod.metadata.uid)
        with self._lock:
            entry = self._pods.setdefault(
                uid,
                _Pod(
                    uid,
                    str(pod.metadata.name),
                    str(owner.uid),
                    str((pod.metadata.labels or {}).get("agents.dev/attempt", "")),
                ),
            )
            entry.phase = "" if deleted else str(pod.status.phase if pod.status else "")
            if deleted:
                self._present.discard(uid)
            else:
                self._present.add(uid)
            self._note_running(entry.owner_uid)

    def _note_running(self, owner_uid: str) -> None:
        running = sum(
            1
            for uid in self._present
            if self._pods[uid].owner_uid == owner_uid and self._pods[uid].phase == "Running"
        )
        self._most_running[owner_uid] = max(self._most_running[owner_uid], running)

    def _watch_pods(self) -> None:
        configuration = client.Configuration()
        config.load_kube_config(str(self.cluster.kubeconfig), client_configuration=configuration)
        configuration.retries = False  # a refused connection is an outage: list again soon
        while not self._stop.is_set():
            api_client = client.ApiClient(configuration)
            core = client.CoreV1Api(api_client)
            try:
                listed = core.list_namespaced_pod(self.namespace)
                with self._lock:
                    # Pods deleted while the watch was down are gone now.
                    self._present &= {str(p.metadata.uid) for p in listed.items}
                for pod in listed.items:
                    self._record(pod)
                self._listed.set()
                stream = watch.Watch().stream(
                    core.list_namespaced_pod,
                    self.namespace,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=5,  # comes back to look at the stop flag
                )
                for event in stream:
                    if event["type"] == "ERROR":
                        break  # expired resourceVersion: list again
                    self._record(event["object"], deleted=event["type"] == "DELETED")
                    if self._stop.is_set():
                        break
            except Exception:  # the API server is down or restarting: list again
                self._stop.wait(0.5)
            finally:
                api_client.close()

    # ---- the transcripts -----------------------------------------------------------------------

    def _transcript_files(self, pod_uid: str) -> Iterator[Path]:
        """The CLI's transcript files in a pod: under its config dir (`$HOME/.claude`) and, on a
        resume, under the directory the SDK materialises the loaded session in."""
        volumes = self.node.kubelet_root / "pods" / pod_uid / "volumes" / "kubernetes.io~empty-dir"
        yield from (volumes / "home" / ".claude" / "projects").glob("*/*.jsonl")
        resumes = volumes / "tmp" / "agent-runner" / "sdk-tmp"
        yield from resumes.glob("claude-resume-*/projects/*/*.jsonl")

    def _read_transcripts(self) -> None:
        with self._lock:
            uids = list(self._present)
        for uid in uids:
            found: set[str] = set()
            with contextlib.suppress(OSError):
                for path in self._transcript_files(uid):
                    found |= _line_uuids(path.read_text())
            if found:
                with self._lock:
                    self._lines.setdefault(uid, set()).update(found)

    def _follow_transcripts(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._read_transcripts()


def _line_uuids(text: str) -> set[str]:
    found = set()
    for line in text.splitlines():
        with contextlib.suppress(ValueError):  # a line being written
            entry: dict[str, Any] = json.loads(line)
            if "uuid" in entry and entry.get("type") not in LOCAL_ONLY_TYPES:
                found.add(str(entry["uuid"]))
    return found
