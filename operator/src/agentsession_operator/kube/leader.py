"""Leader election for the operator's replicas on a coordination.k8s.io/v1 Lease.

Built by `agentsession_operator.main` when AGENTSESSION_LEADER_ELECTION is on: `acquire()` waits
(as a standby) until this replica holds the Lease, `keep_leading()` renews it and returns when it
is lost, `leading()` is the write fence `KubeClient` asks before every write, and `release()`
hands the Lease over on a graceful stop. The rules (create, take over, renew, wait) are the pure
`reconcile.lease`; this module only reads and writes the Lease, with the resourceVersion it read.
It has its own API client and connection pool, so a renewal never queues behind reconcile passes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from agentsession_operator.kube.client import KubeClient, KubeError
from agentsession_operator.metrics import Metrics
from agentsession_operator.reconcile.lease import (
    LeaseRecord,
    Observation,
    Verdict,
    next_step,
    released,
    still_leading,
)

logger = logging.getLogger("agentsession_operator")

JITTER = 1.2
"""A standby looks again after retry period x [1, 1.2) (client-go's JitterFactor), so standbys
started together do not stay in step."""


def candidate_identity(pod_name: str | None, hostname: str) -> str:
    """holderIdentity: the pod's name (whoever reads the Lease finds the pod) and a random suffix,
    so a restarted container never mistakes its predecessor's lease for its own."""
    return f"{pod_name or hostname}_{secrets.token_hex(4)}"


@dataclass(frozen=True)
class ElectionConfig:
    namespace: str
    name: str
    lease_duration_seconds: int
    renew_deadline_seconds: float
    retry_period_seconds: float


class LeaderElector:
    """One candidate in the election; see the module docstring for the lifecycle."""

    def __init__(
        self,
        client: KubeClient,
        config: ElectionConfig,
        identity: str,
        metrics: Metrics,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.client = client
        self.config = config
        self.identity = identity
        self._metrics = metrics
        self._monotonic = monotonic
        self._wall = wall
        self._observed: Observation | None = None
        self._version: str | None = None
        """resourceVersion of the Lease as we last read or wrote it."""
        self._renewed_at: float | None = None
        """When (monotonic) our last successful write of the Lease was sent; None: not leading."""
        self._released = False
        self.last_contact: float | None = None
        """When (monotonic) the API last answered a Lease request: readiness."""
        self.holder: str | None = None
        """Who held the Lease when we last read it."""

    def leading(self) -> bool:
        """The write fence: True while this replica holds the Lease and is within its renew
        deadline. Asked before every write, so a leader that was paused or partitioned past
        the deadline sends nothing once it runs again, whatever its tasks had in flight."""
        return not self._released and still_leading(
            self._renewed_at, self._monotonic(), self.config.renew_deadline_seconds
        )

    async def acquire(self) -> None:
        """Return once this replica holds the Lease (as a standby, look every retry period)."""
        logger.info(
            "Waiting to acquire the leader Lease",
            extra={"namespace": self.config.namespace, "lease": self.config.name},
        )
        while True:
            if await self._try_acquire_or_renew():
                break
            await asyncio.sleep(
                self.config.retry_period_seconds * random.uniform(1.0, JITTER)  # noqa: S311
            )
        self._metrics.leader.set(1)
        logger.info(
            "Acquired the leader Lease",
            extra={"namespace": self.config.namespace, "lease": self.config.name},
        )

    async def keep_leading(self) -> None:
        """Renew every retry period; return once the renew deadline has passed without a
        successful renewal (the Lease is lost: stop acting at once)."""
        while True:
            await asyncio.sleep(self.config.retry_period_seconds)
            # Never write the Lease after the deadline: a paused leader that wakes up late must
            # not even try (its update would race the new holder's).
            if self.leading():
                await self._try_acquire_or_renew()
            if not self.leading():
                self._metrics.leader.set(0)
                logger.critical(
                    "Lost the leader Lease: stopped reconciling",
                    extra={
                        "namespace": self.config.namespace,
                        "lease": self.config.name,
                        "holder": self.holder,
                    },
                )
                return

    async def release(self) -> None:
        """Give the Lease up (graceful stop): no further writes from here, and a standby takes
        over at its next look instead of waiting out the lease."""
        was_leading = self.leading()
        self._released = True
        self._metrics.leader.set(0)
        if not was_leading or self._observed is None or self._version is None:
            return
        record = released(self._observed.record, self._wall())
        try:
            version = await self.client.update_lease(
                self.config.namespace,
                self.config.name,
                record.to_spec(),
                self._version,
                time_limit=self.config.renew_deadline_seconds,
            )
        except Exception as exc:  # the standby takes over after the lease duration instead
            logger.warning("Releasing the leader Lease failed", extra={"error": str(exc)[:500]})
            return
        if version is not None:
            logger.info(
                "Released the leader Lease",
                extra={"namespace": self.config.namespace, "lease": self.config.name},
            )

    async def _try_acquire_or_renew(self) -> bool:
        """One round: read the Lease and write it if the rules say so; True if we hold it now."""
        started = self._monotonic()
        time_limit = max(self.config.retry_period_seconds, self.config.renew_deadline_seconds / 2)
        namespace, name = self.config.namespace, self.config.name
        try:
            found = await self.client.get_lease(namespace, name, time_limit=time_limit)
            current = LeaseRecord.from_spec(found[0]) if found else None
            if found:
                self._version = found[1]
            self.last_contact = self._monotonic()
            self.holder = current.holder if current else None
            step = next_step(
                self.identity,
                current,
                self._observed,
                duration_seconds=self.config.lease_duration_seconds,
                now=self._monotonic(),
                wall=self._wall(),
            )
            if step.observation is not None:
                self._observed = step.observation
            if step.verdict is Verdict.WAIT or step.write is None:
                return False
            if step.verdict is Verdict.CREATE:
                version = await self.client.create_lease(
                    namespace, name, step.write.to_spec(), time_limit=time_limit
                )
            else:
                assert self._version is not None
                version = await self.client.update_lease(
                    namespace, name, step.write.to_spec(), self._version, time_limit=time_limit
                )
        except (KubeError, OSError, TimeoutError) as exc:
            logger.warning(
                "Leader Lease request failed",
                extra={"namespace": namespace, "lease": name, "error": str(exc)[:500]},
            )
            return False
        except Exception as exc:  # aiohttp's errors, a malformed Lease: never end the loop
            logger.warning(
                "Leader Lease request failed",
                extra={"namespace": namespace, "lease": name, "error": repr(exc)[:500]},
            )
            return False
        if version is None:
            return False  # someone else wrote it first: look again next round
        self.last_contact = self._monotonic()
        self._version = version
        self._observed = Observation(step.write, self._monotonic())
        self._renewed_at = started
        self.holder = self.identity
        return True
