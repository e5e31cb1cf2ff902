"""The operator's view of its runner pods: a LIST + WATCH with a server-side label selector.

Started by the kopf startup handler; the controller reads `RunnerPods.of(key)` on every pass and
gets `on_change(key, view)` for every pod event. Like a controller-runtime informer, and unlike a
kopf index (which watches every pod in the cluster and keeps kopf state per pod), only runner pods
reach the operator and each costs one small `PodView`. Pods are filed under the session their
labels name; the controller then keeps only those whose controller ownerReference has the
session's UID (`split_by_owner`): labels are what a pod claims, not whose it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from agentsession_operator.kube.client import KubeClient, KubeError
from agentsession_operator.reconcile.observed import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SESSION_LABEL,
    PodView,
)

logger = logging.getLogger("agentsession_operator")

Key = tuple[str, str]
"""(namespace, AgentSession name): how the controller and this cache address a session."""
RUNNER_POD_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},{SESSION_LABEL}"
WATCH_SECONDS = 300
RETRY_BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0)


class Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def session_key(pod: dict[str, Any]) -> Key | None:
    metadata = pod.get("metadata") or {}
    session = (metadata.get("labels") or {}).get(SESSION_LABEL)
    return (str(metadata.get("namespace")), session) if session else None


class RunnerPods:
    """Runner pods by session key, kept current from the API server."""

    def __init__(
        self,
        client: KubeClient,
        namespaces: Iterable[str],
        on_change: Callable[[Key, PodView | None], None],
    ) -> None:
        self._client = client
        # One scope per watched namespace, or one cluster-wide scope (None).
        self._scopes: list[str | None] = list(namespaces) or [None]
        self._on_change = on_change
        self._pods: dict[Key, tuple[PodView, ...]] = {}
        self._synced_scopes: set[str | None] = set()
        self.synced = asyncio.Event()
        """Set once every scope has been listed: before that, a missing pod proves nothing."""

    def of(self, key: Key) -> tuple[PodView, ...]:
        return self._pods.get(key, ())

    def __len__(self) -> int:
        return sum(len(pods) for pods in self._pods.values())

    async def run(self) -> None:
        """Keep every scope's pods current until cancelled."""
        async with asyncio.TaskGroup() as group:
            for scope in self._scopes:
                group.create_task(self._follow(scope))

    async def _follow(self, namespace: str | None) -> None:
        failures = 0
        while True:
            try:
                version = await self._relist(namespace)
                failures = 0
                while True:
                    version = await self._watch(namespace, version)
            except Expired:
                logger.info("Runner pod watch expired; listing again", extra=_scope(namespace))
            except Exception as exc:  # a broken connection, an API error, a torn JSON line, ...
                # ... none of which may end the watch: the operator would stop seeing its pods.
                delay = RETRY_BACKOFF_SECONDS[min(failures, len(RETRY_BACKOFF_SECONDS) - 1)]
                failures += 1
                logger.warning(
                    "Runner pod watch failed; listing again",
                    extra={**_scope(namespace), "error": str(exc)[:500], "retryIn": delay},
                )
                await asyncio.sleep(delay)  # backoff before the next LIST, not synchronisation

    async def _relist(self, namespace: str | None) -> str:
        """Replace this scope's pods with a fresh LIST; report every difference."""
        items, version = await self._client.list_pods(namespace, RUNNER_POD_SELECTOR)
        listed: dict[Key, dict[str, PodView]] = {}
        for item in items:
            key, view = session_key(item), PodView.from_body(item)
            if key is not None and view is not None:
                listed.setdefault(key, {})[view.name] = view
        in_scope = [k for k in self._pods if namespace is None or k[0] == namespace]
        for key in in_scope:
            for old in self._pods[key]:
                if old.name not in listed.get(key, {}):
                    self._forget(key, old.name)
        for key, views in listed.items():
            for view in views.values():
                self._store(key, view)
        self._synced_scopes.add(namespace)
        if len(self._synced_scopes) == len(self._scopes):
            self.synced.set()
        return version

    async def _watch(self, namespace: str | None, version: str) -> str:
        """Apply watch events from `version` until the server ends the watch; the last version."""
        async for event in self._client.watch_pods(
            namespace, RUNNER_POD_SELECTOR, version, WATCH_SECONDS
        ):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Expired()
                raise KubeError("WATCH", "pods", int(obj.get("code") or 500), json.dumps(obj))
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind == "BOOKMARK":
                continue
            key = session_key(obj)
            view = PodView.from_body(obj)
            if key is None or view is None:
                continue
            if kind == "DELETED":
                self._forget(key, view.name)
            else:
                self._store(key, view)
        return version

    def _store(self, key: Key, view: PodView) -> None:
        pods = self._pods.get(key, ())
        if view in pods:
            return  # a relist of what we had, or an event that changed nothing we look at
        self._pods[key] = (*(p for p in pods if p.name != view.name), view)
        self._on_change(key, view)

    def _forget(self, key: Key, name: str) -> None:
        pods = tuple(p for p in self._pods.get(key, ()) if p.name != name)
        if pods:
            self._pods[key] = pods
        else:
            self._pods.pop(key, None)
        self._on_change(key, None)


def _scope(namespace: str | None) -> dict[str, str]:
    return {"namespace": namespace} if namespace else {}
