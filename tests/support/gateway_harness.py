"""The gateway's Messages API proxy and a scripted upstream, each on its own thread and loop.

Used by the gateway proxy tests and the gateway benchmark. `ProxyServer` serves a
`MessagesProxy` the way the gateway's main module mounts it; `ScriptedUpstream` answers like
`tests.support.scripted_api` (its replies, queue, routes and recorded requests come from a
`ScriptedAPI` object, which is never started itself) and adds what metering tests need: the
credentials each request carried, usage with cache fields, streams cut mid-way, CRLF line ends
and whole-reply writes.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, TypeVar

from aiohttp import web

from agentsession_contract.gateway import GatewayReport
from agentsession_gateway.metering import Meter
from agentsession_gateway.proxy import MessagesProxy
from tests.support import scripted_api as sa

T = TypeVar("T")

REAL_KEY = "sk-ant-real-0123456789abcdefREALKEY"
"""The upstream credential the proxy is given (what the scripted upstream must see)."""
POD_TOKEN = "pod-token-0123456789abcdef0123456789abcdef"
"""The per-pod token the agent presents (what the scripted upstream must never see)."""

Cut = Literal["before_start", "before_delta"]


@dataclass(frozen=True)
class MeteredReply(sa.Reply):
    """A scripted reply with the usage, framing and faults that metering tests need."""

    start_usage: dict[str, Any] | None = None
    """message_start's usage (default: the scripted API's, from input_tokens)."""
    delta_usage: dict[str, Any] | None = None
    """message_delta's cumulative usage (default: the scripted API's, from output_tokens)."""
    response_model: str | None = None
    """The model the reply names (default: the request's)."""
    cut: Cut | None = None
    """Close the connection right before this event, with no end of the chunked body."""
    crlf: bool = False
    bulk: bool = False
    """Write the whole reply at once (a fast upstream, for throughput measurements)."""


def usage_reply(
    start: dict[str, Any],
    delta: dict[str, Any],
    *,
    text: str = "metered",
    tool: sa.Reply | None = None,
    **options: Any,
) -> MeteredReply:
    """A text (or tool-calling) reply with the given message_start / message_delta usage."""
    base = tool or sa.text(text)
    return MeteredReply(
        blocks=base.blocks,
        stop_reason=base.stop_reason,
        start_usage=start,
        delta_usage=delta,
        **options,
    )


def events(reply: sa.Reply, model: str) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events of a reply, as the scripted API streams them, with MeteredReply's usage."""
    out = list(sa._sse_events(reply, model))
    if isinstance(reply, MeteredReply):
        for name, data in out:
            if name == "message_start":
                if reply.start_usage is not None:
                    data["message"]["usage"] = dict(reply.start_usage)
                if reply.response_model is not None:
                    data["message"]["model"] = reply.response_model
            elif name == "message_delta" and reply.delta_usage is not None:
                data["usage"] = dict(reply.delta_usage)
    return out


def encode_events(items: list[tuple[str, dict[str, Any]]], *, crlf: bool = False) -> list[bytes]:
    newline = "\r\n" if crlf else "\n"
    return [
        f"event: {name}{newline}data: {json.dumps(data)}{newline}{newline}".encode()
        for name, data in items
    ]


class _LoopThread:
    """An asyncio loop on a daemon thread, with an aiohttp app served on loopback."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[[], T], timeout: float = 30) -> T:
        """Run `function` on the loop's thread (the proxy's state is that loop's alone)."""

        async def wrapper() -> T:
            return function()

        return self.run(wrapper(), timeout)

    def serve(self, make_app: Callable[[], web.Application]) -> None:
        self._thread.start()

        async def start() -> int:
            self._runner = web.AppRunner(make_app(), access_log=None, handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            server = site._server
            assert server is not None
            return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

        self.port = self.run(start())

    def shutdown(self, before: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if before is not None:
                await before()

        if self._thread.is_alive():
            self.run(stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        self.loop.close()


class ScriptedUpstream:
    """A Messages API on loopback whose replies a `ScriptedAPI` object scripts."""

    def __init__(self, api: sa.ScriptedAPI | None = None) -> None:
        self.api = api or sa.ScriptedAPI()
        self.credentials: list[tuple[str, str | None, str | None]] = []
        """(path, x-api-key, authorization) of every request received, in order."""
        self.count_tokens_calls = 0
        self._lock = threading.Lock()
        self._bulk_bytes: dict[int, bytes] = {}
        self._thread = _LoopThread("scripted-upstream")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._thread.port}"

    def start(self) -> ScriptedUpstream:
        def make_app() -> web.Application:
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_post("/v1/messages", self._messages)
            app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
            return app

        self._thread.serve(make_app)
        return self

    def stop(self) -> None:
        self._thread.shutdown()

    def __enter__(self) -> ScriptedUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _recorded(self, request: web.Request) -> sa.RecordedRequest:
        raw = await request.read()
        with self._lock:
            self.credentials.append(
                (
                    request.path_qs,
                    request.headers.get("x-api-key"),
                    request.headers.get("authorization"),
                )
            )
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {}
        headers = {
            k.lower(): v
            for k, v in request.headers.items()
            if k.lower() not in ("x-api-key", "authorization")
        }
        return sa.RecordedRequest(request.path_qs, body, headers)

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._recorded(request)
        with self.api._lock:
            self.api.requests.append(recorded)
            self.count_tokens_calls += 1
        return web.json_response({"input_tokens": 10})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._recorded(request)
        reply = self.api.next_reply(recorded)
        if reply.error_status is not None:
            headers = {"retry-after": "0"} if reply.error_status in (429, 529) else None
            return web.json_response(
                {"type": "error", "error": {"type": reply.error_type, "message": "scripted error"}},
                status=reply.error_status,
                headers=headers,
            )
        model = str(recorded.body.get("model", "claude-sonnet-4-5"))
        if not recorded.body.get("stream"):
            message = sa._message_object(reply, model)
            if isinstance(reply, MeteredReply):
                message["usage"] = {**(reply.start_usage or {}), **(reply.delta_usage or {})}
                if reply.response_model:
                    message["model"] = reply.response_model
            return web.json_response(message)
        return await self._stream(request, reply, model)

    async def _stream(
        self, request: web.Request, reply: sa.Reply, model: str
    ) -> web.StreamResponse:
        items = events(reply, model)
        cut_at: str | None = None
        crlf = bulk = False
        if isinstance(reply, MeteredReply):
            cut_at = {"before_start": "message_start", "before_delta": "message_delta"}.get(
                reply.cut or ""
            )
            crlf, bulk = reply.crlf, reply.bulk
        if cut_at is not None:
            items = items[: [name for name, _ in items].index(cut_at)]
        response = web.StreamResponse(
            status=200, headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
        )
        try:
            await self._write(request, response, reply, items, crlf=crlf, bulk=bulk)
        except ConnectionError:
            return response  # the gateway went away (it stops a reply its client left)
        if cut_at is not None:
            # End the connection without the chunked body's last chunk: a truncated reply.
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response

    async def _write(
        self,
        request: web.Request,
        response: web.StreamResponse,
        reply: sa.Reply,
        items: list[tuple[str, dict[str, Any]]],
        *,
        crlf: bool,
        bulk: bool,
    ) -> None:
        await response.prepare(request)
        if bulk:
            # Encoded once per reply object: a bulk upstream should cost next to nothing.
            data = self._bulk_bytes.get(id(reply))
            if data is None:
                data = self._bulk_bytes[id(reply)] = b"".join(encode_events(items, crlf=crlf))
            await response.write(data)
        else:
            for chunk in encode_events(items, crlf=crlf):
                await response.write(chunk)
                if reply.chunk_delay_s:
                    await asyncio.sleep(reply.chunk_delay_s)  # the scenario *is* a slow stream


class ProxyServer:
    """A `MessagesProxy` mounted on its own aiohttp app, on a loop thread, like the gateway."""

    def __init__(
        self,
        upstream_url: str,
        budget: Decimal = Decimal(100),
        *,
        token: str = POD_TOKEN,
        real_key: str = REAL_KEY,
        meter: Meter | None = None,
    ) -> None:
        self.meter = meter or Meter(budget=budget)
        self.token = token
        self.saves = 0
        """How many times the proxy's on_charge ran (the gateway persists its report there)."""
        self.saved: list[GatewayReport] = []
        self._upstream_url = upstream_url
        self._real_key = real_key
        self._thread = _LoopThread("gateway-proxy")
        self.proxy: MessagesProxy | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._thread.port}"

    async def _save(self) -> None:
        self.saves += 1
        self.saved.append(self.meter.report("running"))

    def start(self) -> ProxyServer:
        def make_app() -> web.Application:
            self.proxy = MessagesProxy(
                self.meter,
                self._upstream_url,
                {"x-api-key": self._real_key},
                self.token,
                on_charge=self._save,
            )
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.add_routes(self.proxy.routes())
            return app

        self._thread.serve(make_app)
        return self

    def stop(self) -> None:
        async def close_proxy() -> None:
            if self.proxy is not None:
                await self.proxy.close()

        self._thread.shutdown(before=close_proxy)

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def report(self) -> GatewayReport:
        """The meter's report, read on the proxy's loop."""
        return self._thread.call(lambda: self.meter.report("running"))

    def wait_for(
        self, predicate: Callable[[GatewayReport], bool], timeout_s: float = 10
    ) -> GatewayReport:
        """Poll the report until `predicate` holds (the meter settles after the last byte)."""
        deadline = time.monotonic() + timeout_s
        while True:
            report = self.report()
            if predicate(report):
                return report
            if time.monotonic() > deadline:
                raise AssertionError(f"report never satisfied the condition: {report!r}")
            time.sleep(0.02)  # polling interval, bounded by the deadline above

    def wait_saved(self, count: int, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while self._thread.call(lambda: self.saves) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"on_charge ran {self.saves} times, expected {count}")
            time.sleep(0.02)


def serve(
    api: sa.ScriptedAPI | None = None, budget: Decimal = Decimal(100)
) -> Iterator[tuple[ScriptedUpstream, ProxyServer]]:
    """A scripted upstream with a proxy in front (for fixtures)."""
    with ScriptedUpstream(api) as upstream, ProxyServer(upstream.base_url, budget) as proxy:
        yield upstream, proxy
