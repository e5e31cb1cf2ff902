"""The gateway's store service served over real HTTP on loopback, in a background thread.

For store tests that need the service with a grant of their own (the SDK conformance suite
touches sessions no single attempt holds) or many instances at once; tests that need the whole
gateway process use tests/support/gateway_process.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web

from agentsession_gateway.store_service import StoreService


class ServedStore:
    """Serves `service.routes()` on 127.0.0.1:<free port> until `stop()`."""

    def __init__(self, service: StoreService) -> None:
        self.service = service
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(timeout=30):
            raise RuntimeError("the store service did not start")

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.add_routes(self.service.routes())
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._loop.run_until_complete(start())
        ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            await self.service.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self.service.backend.close()
