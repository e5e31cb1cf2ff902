"""The gateway's Messages API proxy: token check, the budget's cap, and metering at the wire.

Mounted by `agentsession_gateway.main` (which owns the app, the port and the lifecycle) through
`MessagesProxy.routes()`. The agent's CLI reaches it as `ANTHROPIC_BASE_URL` with the per-pod token
as its API key; the proxy checks the token, replaces it with the real credential and streams the
upstream reply back byte for byte, feeding every chunk to a usage parser after writing it.

Budget: a metered request (`POST /v1/messages`) is refused once the attempt's spend has reached
its budget, with the answer the CLI treats as final (429, `billing_error`, `x-should-retry:
false`), and never reaches upstream. While in flight a request reserves its fail-closed upper
bound, and a request that would not fit next to the reservations waits until they settle (see
`Meter`): however many requests a client sends at once, the spend passes the budget by at most
one request's cost. `count_tokens` is forwarded unmetered and never refused.

Charging: see `metering.settle`. A request whose final usage never arrived (a 200 cut mid-stream,
the agent gone mid-stream, a request sent that got no response) is charged the fail-closed upper
bound; an upstream error status passes through unchanged and costs nothing; a request that could
not even connect costs nothing and gets a 502 (the CLI retries 5xx).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from agentsession_gateway.metering import (
    Meter,
    RequestFacts,
    UsageParser,
    parser_for,
    request_bound,
    settle,
)

log = logging.getLogger(__name__)

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
MAX_BODY_BYTES = 64 * 1024 * 1024
"""Request bodies forwarded (the Messages API itself takes 32 MB)."""
REFUSAL_RETRY_AFTER_S = 3600
"""`retry-after` on a budget refusal: the budget will not come back within the attempt."""

# Headers that belong to one connection (RFC 9110 section 7.6.1).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Besides those, never forwarded upstream: the client's credential (replaced by the real one),
# what aiohttp sets for the new request, and the client's encodings (upstream must send identity
# bytes, or the usage parser would see compressed data).
_NOT_FORWARDED = _HOP_BY_HOP | {
    "host",
    "content-length",
    "x-api-key",
    "authorization",
    "accept-encoding",
    "expect",
}


class MessagesProxy:
    """aiohttp handlers for `POST /v1/messages` (metered) and `/v1/messages/count_tokens`.

    `on_charge` is awaited after every change to the meter (a request settled or refused), in a
    background task once the client has its last byte, one call at a time, coalescing changes
    that arrive while a call runs; the meter itself is updated before that, synchronously.
    `on_reserve` is called synchronously once a request's reservation is made, before it is
    forwarded.
    """

    def __init__(
        self,
        meter: Meter,
        upstream_base_url: str,
        upstream_headers: dict[str, str],
        token: str,
        on_charge: Callable[[], Awaitable[None]] | None = None,
        on_reserve: Callable[[], None] | None = None,
        *,
        connect_timeout_s: float = 30.0,
        read_timeout_s: float = 600.0,
        max_connections: int = 64,
        max_body_bytes: int = MAX_BODY_BYTES,
        trust_env: bool = False,
    ) -> None:
        if not token:
            raise ValueError("the proxy needs a token")
        self.meter = meter
        self._base = upstream_base_url.rstrip("/")
        self._upstream_headers = dict(upstream_headers)
        self._token = token.encode()
        self._on_charge = on_charge
        self._on_reserve = on_reserve
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._max_connections = max_connections
        self._max_body_bytes = max_body_bytes
        self._trust_env = trust_env
        self._session: aiohttp.ClientSession | None = None
        self._persisting: asyncio.Task[None] | None = None
        self._dirty = False
        self._meter_changed = asyncio.Event()
        """Set (and replaced) whenever a metered request ends: admissions waiting on the
        reservations of requests in flight look again."""

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(MESSAGES_PATH, self.messages),
            web.post(COUNT_TOKENS_PATH, self.count_tokens),
        ]

    async def close(self) -> None:
        """Finish the pending `on_charge` call, then close the upstream connections."""
        if self._persisting is not None:
            await self._persisting
        if self._session is not None:
            await self._session.close()
            self._session = None

    def authorized(self, request: web.BaseRequest) -> bool:
        """Does the request carry the per-pod token (as `x-api-key` or a Bearer token)?"""
        offered = []
        key = request.headers.get("x-api-key")
        if key:
            offered.append(key)
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            offered.append(credentials.strip())
        # Compare every candidate: the time taken does not tell which one was checked.
        matched = False
        for candidate in offered:
            matched |= hmac.compare_digest(candidate.encode(), self._token)
        return matched

    # ---- handlers ---------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        if not self.authorized(request):
            return _api_error(401, "authentication_error", "missing or wrong gateway token")
        body = await self._read_body(request)
        if body is None:
            return _api_error(413, "request_too_large", "request body too large for the gateway")
        facts = RequestFacts.parse(body)
        # Checked after the body arrived: as close to forwarding as possible.
        while (admitted := self.meter.admit()) is None:
            await self._meter_changed.wait()
        if not admitted:
            self.meter.refuse()
            self._notify()
            log.info(
                "Refused a request: the budget is spent",
                extra={
                    "model": facts.model,
                    "budgetUsd": str(self.meter.budget),
                    "spentUsd": str(self.meter.spent),
                    "refused": self.meter.refused,
                },
            )
            return _api_error(
                429,
                "billing_error",
                f"The session's budget of {self.meter.budget} USD is spent "
                f"({self.meter.spent} USD metered); the gateway refuses further requests.",
                headers={"x-should-retry": "false", "retry-after": str(REFUSAL_RETRY_AFTER_S)},
            )
        bound = request_bound(facts)
        self.meter.reserve(bound)
        try:
            if self._on_reserve is not None:
                # Saved before a byte goes upstream: a gateway killed mid-request restarts with
                # the reservation on record and charges it (Meter.restore).
                self._on_reserve()
            return await self._forward(request, body, facts)
        finally:
            # After the charge (recorded inside _forward): spend + reservations never dip.
            self.meter.release(bound)
            self._meter_changed.set()
            self._meter_changed = asyncio.Event()

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        if not self.authorized(request):
            return _api_error(401, "authentication_error", "missing or wrong gateway token")
        body = await self._read_body(request)
        if body is None:
            return _api_error(413, "request_too_large", "request body too large for the gateway")
        return await self._forward(request, body, None)

    # ---- forwarding -------------------------------------------------------------------------

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The whole body (the model and max_tokens are needed first), None if over the cap;
        read here rather than with `request.read()` so the app's client_max_size cannot
        answer for us in another shape."""
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > self._max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=self._timeout,
                # Bytes pass through unchanged: no transparent decompression, no cookies kept.
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=self._trust_env,
            )
        return self._session

    def _request_headers(self, request: web.Request) -> CIMultiDict[str]:
        dropped = _NOT_FORWARDED | _connection_tokens(request.headers)
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in dropped
        )
        for key, value in self._upstream_headers.items():
            headers[key] = value
        headers["Accept-Encoding"] = "identity"
        return headers

    async def _forward(
        self, request: web.Request, body: bytes, facts: RequestFacts | None
    ) -> web.StreamResponse:
        url = URL(self._base + request.raw_path, encoded=True)
        try:
            upstream = await self._client().post(
                url, data=body, headers=self._request_headers(request), allow_redirects=False
            )
        except aiohttp.ClientConnectorError as exc:
            # Never connected: the request cannot have been served, so it costs nothing.
            log.warning("Upstream unreachable", extra={"error": str(exc)})
            return _api_error(502, "api_error", "the gateway cannot reach the Messages API")
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Sent (or partly sent) with no answer: upstream may have served it.
            log.warning("Upstream gave no response", extra={"error": repr(exc)})
            if facts is not None:
                self._settle(facts, None, None)
                self._notify()
            return _api_error(502, "api_error", "the Messages API gave no response")
        except asyncio.CancelledError:
            if facts is not None:  # the same, for a handler cancelled while it waited
                self._settle(facts, None, None)
                self._notify()
            raise

        parser = (
            parser_for(
                upstream.headers.get("content-type"),
                upstream.headers.get("content-encoding"),
                upstream.content_length,
            )
            if facts is not None
            else None
        )
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        dropped = _HOP_BY_HOP | _connection_tokens(upstream.headers)
        for key, value in upstream.headers.items():
            if key.lower() not in dropped:
                response.headers.add(key, value)
        settled = False
        complete = client_gone = False
        try:
            try:
                await response.prepare(request)
            except (ConnectionError, aiohttp.ClientConnectionError):
                client_gone = True
            while not client_gone:
                try:
                    chunk = await upstream.content.readany()
                except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                    log.warning("Upstream stream broke", extra={"error": repr(exc)})
                    break
                if not chunk:
                    complete = True
                    break
                if parser is not None and facts is not None:
                    parser.feed(chunk)
                    # Charged the moment the usage is final and before the chunk that carries
                    # it is passed on: a client that acts on the reply's end at once (its next
                    # request, sequential or not) finds the charge already on the meter.
                    if not settled and parser.has_final:
                        self._settle(facts, parser, upstream.status)
                        settled = True
                try:
                    await response.write(chunk)
                except (ConnectionError, aiohttp.ClientConnectionError):
                    client_gone = True
                if client_gone:
                    log.info("The client went away mid-reply", extra={"status": upstream.status})
                    break
        finally:
            if complete:
                upstream.release()  # back to the pool
            else:
                upstream.close()  # stop the generation upstream
            if parser is not None and facts is not None and not settled:
                parser.finish()
                self._settle(facts, parser, upstream.status)
        if complete:
            with contextlib.suppress(ConnectionError, aiohttp.ClientConnectionError):
                await response.write_eof()  # the client may leave on the very last byte
        elif not client_gone and request.transport is not None:
            # Upstream broke mid-reply: cut the client's connection too, so it sees a truncated
            # reply instead of a well-formed end of an incomplete one.
            request.transport.close()
        if facts is not None:
            self._notify()
        return response

    def _settle(self, facts: RequestFacts, parser: UsageParser | None, status: int | None) -> None:
        charge = settle(facts, parser, status)
        self.meter.record(charge)
        # An unknown model is logged by metering, once per name.
        if charge is not None and charge.fail_closed:
            log.warning(
                "Charged a request as an upper bound: its final usage never arrived",
                extra={
                    "model": charge.model,
                    "costUsd": str(charge.cost_usd),
                    "status": status,
                    "failClosed": charge.fail_closed,
                    "unknownModel": charge.unknown_model,
                },
            )

    # ---- persistence ------------------------------------------------------------------------

    def _notify(self) -> None:
        if self._on_charge is None:
            return
        self._dirty = True
        if self._persisting is None or self._persisting.done():
            self._persisting = asyncio.get_running_loop().create_task(self._persist())

    async def _persist(self) -> None:
        assert self._on_charge is not None
        while self._dirty:
            self._dirty = False
            try:
                await self._on_charge()
            except Exception:  # a failed save must not take the proxy down; the next one retries
                log.exception("Saving the meter failed")


def _connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Header names the `Connection` header lists (hop-by-hop as well)."""
    tokens: set[str] = set()
    for value in headers.getall("connection", []):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(tokens)


def _api_error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An error in the Messages API's shape, so the CLI reports it like the API's own."""
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": message}},
        status=status,
        headers=headers,
    )
