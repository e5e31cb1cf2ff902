"""The gateway's MCP proxy: remote MCP servers whose headers come from Secrets.

Mounted by `agentsession_gateway.main` under `MCP_PATH`. The runner points such a server's URL at
`http://127.0.0.1:<port>/v1/mcp/<name><path of the real URL>`; the gateway checks the per-pod token,
forwards to the server's origin with the Secret headers added (the agent's container never holds
them) and streams the answer back. For the SSE transport, the `endpoint` event the server sends
(where to POST messages) is rewritten to go through the gateway as well.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from agentsession_contract.gateway import MCP_PATH, TOKEN_HEADER

# Headers that belong to one connection (RFC 9110 section 7.6.1) or that we set ourselves.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        TOKEN_HEADER,
    }
)


@dataclass(frozen=True)
class McpRoute:
    """One MCP server the gateway forwards to, with the headers it adds."""

    url: str
    headers: dict[str, str]

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"


class McpProxy:
    """aiohttp handlers forwarding `/v1/mcp/<name>/...` to the named server."""

    def __init__(self, routes: dict[str, McpRoute], token: str) -> None:
        self._routes = routes
        self._token = token.encode()
        self._session: aiohttp.ClientSession | None = None
        self._active: set[asyncio.Task[object]] = set()
        """Handlers forwarding right now (an MCP stream can stay open for the whole session)."""

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", MCP_PATH + "{name}{rest:.*}", self.forward)]

    async def close(self) -> None:
        """End every forward still running, then the client: a long-lived MCP stream would
        otherwise hold the gateway's shutdown (and the pod's end) until the server next
        speaks."""
        active = [task for task in self._active if not task.done()]
        for task in active:
            task.cancel()
        await asyncio.gather(*active, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)
            )
        return self._session

    async def forward(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is None:  # always set inside aiohttp's handler task
            return await self._forward(request)
        self._active.add(task)
        try:
            return await self._forward(request)
        finally:
            self._active.discard(task)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        offered = request.headers.get(TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(offered, self._token):
            return web.json_response({"error": "missing or wrong gateway token"}, status=401)
        name = request.match_info["name"]
        route = self._routes.get(name)
        if route is None:
            return web.json_response({"error": f"no MCP server {name!r} here"}, status=404)
        rest = request.match_info["rest"] or "/"
        target = route.origin + rest + (f"?{request.query_string}" if request.query_string else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.update(route.headers)
        async with self._client().request(
            request.method, target, headers=headers, data=request.content, allow_redirects=False
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers[key] = value
            await response.prepare(request)
            rewrite = upstream.headers.get("content-type", "").startswith("text/event-stream")
            prefix = f"{MCP_PATH}{name}"
            pending = b""
            async for chunk in upstream.content.iter_any():
                if not rewrite:
                    await response.write(chunk)
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    await response.write(_rewrite_endpoint(line, route.origin, prefix) + b"\n")
            if pending:
                await response.write(_rewrite_endpoint(pending, route.origin, prefix))
            await response.write_eof()
            return response


def _rewrite_endpoint(line: bytes, origin: str, prefix: str) -> bytes:
    """An SSE `data:` line that names the server's message endpoint, pointed at the gateway.

    Only the SSE transport's endpoint announcement is a bare path or URL on a data line; JSON-RPC
    messages start with `{` and pass unchanged."""
    if not line.startswith(b"data:"):
        return line
    value = line[5:].strip().decode(errors="replace")
    if value.startswith(origin + "/"):
        value = value[len(origin) :]
    if value.startswith("/") and not value.startswith(prefix):
        return f"data: {prefix}{value}".encode()
    return line
