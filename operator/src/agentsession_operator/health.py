"""The operator's health endpoints on AGENTSESSION_HEALTH_PORT: `/healthz` and `/readyz`.

Started by `agentsession_operator.main` before anything else (a standby serves them while it
waits for the Lease, when kopf has not started yet). `/healthz` (liveness) answers 200 while the
event loop runs. `/readyz` (readiness) answers what `ready()` says, as JSON with the role:
- a leader (or the only replica) is ready once kopf has run the start-up handler;
- a standby is ready while it takes part in the election (the API answered its last Lease read
  within the lease duration): it can take over, so a Deployment rollout and a
  PodDisruptionBudget count it as available. Were standbys unready, a PDB with minAvailable 1
  would count one healthy pod of two and block every drain of the leader's node.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from aiohttp import web

Readiness = Callable[[], tuple[bool, Mapping[str, object]]]


class HealthServer:
    def __init__(self, port: int, ready: Readiness) -> None:
        self._port = port
        self._ready = ready
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "0.0.0.0", self._port).start()  # noqa: S104 (probes)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, detail = self._ready()
        body = json.dumps({"ready": ready, **detail}) + "\n"
        return web.Response(
            text=body, status=200 if ready else 503, content_type="application/json"
        )
