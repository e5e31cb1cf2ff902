"""Spend metering at the wire: usage parsing, pricing and the attempt's budget.

Called by `proxy` (which feeds every forwarded response chunk to a usage parser and charges the
attempt's `Meter` when the response ends) and by the gateway's main module (which restores the
`Meter` from its persisted `GatewayReport` and writes `Meter.report()` as the attempt's account).

Usage semantics (Messages API): `message_start.message.usage` carries the input side and a
provisional output count; every `message_delta.usage` carries *cumulative* totals, so each
non-null field it names overwrites the one seen so far, and nothing is ever added. A non-streaming
reply carries the same fields in its top-level `usage`. The three input fields do not overlap.

Prices come from genai-prices' bundled snapshot (provider "anthropic"), never refreshed from the
network. A model it does not know is charged at the most expensive price of every Anthropic model
it knows (each unit's maximum over all models, tiers and variants: fail closed), flagged on the
`Charge` and logged once per model name.

Fail-closed rule, for a request that may have been served but whose final usage never arrived (a
200 stream cut before `message_delta`, a 200 body that cannot be read, a request sent upstream
that got no response):
- input: exactly the usage `message_start` reported when it arrived (with server tools the real
  input can grow during a request; that growth is not bounded here). When no `message_start`
  arrived the input is estimated from the request body: one token per body byte (a token is at
  least one byte of UTF-8 and JSON only adds bytes), plus `PROMPT_OVERHEAD_TOKENS` for what the
  API adds around tools and turns, plus `IMAGE_TOKENS_BOUND` per image block (a highly
  compressible image costs more tokens than its base64 bytes); a request carrying a document block
  (PDF pages are billed as images too) is charged the model's whole context window. The estimate
  is capped at the model's context window and priced at the one-hour cache-write rate, the
  dearest input rate, because nothing says how the unseen input was cached.
- output: the request's `max_tokens` (`FALLBACK_MAX_TOKENS` if it named none), or the provisional
  count seen, whichever is larger.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import ModelInfo, ModelPrice, TieredPrices

from agentsession_contract.gateway import GatewayEnd, GatewayReport, ModelSpend

log = logging.getLogger(__name__)

PROVIDER = "anthropic"
FALLBACK_MAX_TOKENS = 128_000
"""Output charged for a cut stream whose request named no `max_tokens` (the largest limit of any
current model; the API refuses such a request anyway)."""
PROMPT_OVERHEAD_TOKENS = 4_096
"""Tokens the API adds around a request's bytes (tool-use system text, turn markers)."""
IMAGE_TOKENS_BOUND = 10_000
"""Upper bound on one image block's input tokens (the largest images cost about 4,800)."""
MAX_JSON_BODY_BYTES = 64 * 1024 * 1024
"""A non-streaming reply larger than this is not parsed (and so, if it was a 200, fails closed)."""

_START = b"message_start"
_DELTA = b"message_delta"


# --- Usage -------------------------------------------------------------------------------------


def _count(value: Any) -> int:
    """A token count from the wire; anything but a non-negative int counts as zero."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


@dataclass(frozen=True)
class TokenUsage:
    """One response's token counts, as the Messages API names them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation_5m_input_tokens: int | None = None
    """The 5-minute part of the cache write, when the reply broke it down."""
    cache_creation_1h_input_tokens: int | None = None
    """The one-hour part of the cache write, when the reply broke it down."""
    web_search_requests: int = 0
    speed: str | None = None
    """`fast` when the reply says it was served in fast mode (priced higher)."""

    @classmethod
    def from_api(cls, usage: Mapping[str, Any]) -> TokenUsage:
        """From a Messages API `usage` object (message_start, merged deltas or a JSON reply)."""
        breakdown = usage.get("cache_creation")
        five = one = None
        if isinstance(breakdown, Mapping):
            five = _count(breakdown.get("ephemeral_5m_input_tokens"))
            one = _count(breakdown.get("ephemeral_1h_input_tokens"))
        server = usage.get("server_tool_use")
        searches = _count(server.get("web_search_requests")) if isinstance(server, Mapping) else 0
        speed = usage.get("speed")
        return cls(
            input_tokens=_count(usage.get("input_tokens")),
            output_tokens=_count(usage.get("output_tokens")),
            cache_read_input_tokens=_count(usage.get("cache_read_input_tokens")),
            cache_creation_input_tokens=_count(usage.get("cache_creation_input_tokens")),
            cache_creation_5m_input_tokens=five,
            cache_creation_1h_input_tokens=one,
            web_search_requests=searches,
            speed=speed if isinstance(speed, str) else None,
        )

    @property
    def cache_write_tokens(self) -> int:
        """The cache write, never less than its breakdown (so an odd reply cannot underprice)."""
        parts = (self.cache_creation_5m_input_tokens or 0) + (
            self.cache_creation_1h_input_tokens or 0
        )
        return max(self.cache_creation_input_tokens, parts)

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_read_input_tokens + self.cache_write_tokens


def merge_usage(current: dict[str, Any] | None, update: Mapping[str, Any]) -> dict[str, Any]:
    """The overwrite rule: each non-null field of `update` replaces the one in `current`."""
    merged = dict(current or {})
    for key, value in update.items():
        if value is not None:
            merged[key] = value
    return merged


# --- Usage parsers -----------------------------------------------------------------------------


class UsageParser:
    """Follows one response's bytes as the proxy forwards them; see `parser_for`."""

    def __init__(self) -> None:
        self.model: str | None = None
        """The model the response names (message_start or the JSON reply)."""
        self.start_usage: TokenUsage | None = None
        """Usage as message_start reported it (the input side is exact from here on)."""
        self._usage: dict[str, Any] | None = None
        self._final = False

    def feed(self, chunk: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """The response ended (cleanly or not): no more bytes will come."""

    def _take_message(self, message: Mapping[str, Any]) -> bool:
        """The model and usage of a Message object (message_start's, or a whole JSON reply);
        whether it carried usage."""
        model = message.get("model")
        if isinstance(model, str) and model:
            self.model = model
        usage = message.get("usage")
        if not isinstance(usage, dict):
            return False
        self._usage = merge_usage(None, usage)
        self.start_usage = TokenUsage.from_api(self._usage)
        return True

    @property
    def has_final(self) -> bool:
        """Has the final usage arrived (cheap to ask after every chunk)?"""
        return self._final

    @property
    def final_usage(self) -> TokenUsage | None:
        """The response's final usage: set once message_delta (or a whole JSON reply) arrived."""
        if not self._final or self._usage is None:
            return None
        return TokenUsage.from_api(self._usage)


class SSEUsageParser(UsageParser):
    """Usage from a `text/event-stream` reply, fed raw chunks in any split (LF or CRLF lines).

    Each chunk is split once at its last complete event; only events the byte search finds
    `message_start` / `message_delta` in are JSON-parsed; the incomplete tail waits for the
    next chunk. Linear in the stream's size whatever the chunking.
    """

    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        searched_from = max(0, len(self._buffer) - 3)  # a separator may straddle the chunks
        self._buffer += chunk
        end = _last_event_end(self._buffer, searched_from)
        if end < 0:
            return
        self._scan(end)
        # bytearray deletes from the front in amortised O(1): no re-slicing of the tail.
        del self._buffer[:end]

    def finish(self) -> None:
        # A final event without its blank line still counts (some servers end that way).
        if self._buffer:
            self._scan(len(self._buffer))
            self._buffer.clear()

    def _scan(self, end: int) -> None:
        spans: list[tuple[int, int]] = []
        for needle in (_START, _DELTA):
            position = self._buffer.find(needle, 0, end)
            while position >= 0:
                start = _event_start(self._buffer, position)
                stop = _event_stop(self._buffer, position, end)
                spans.append((start, stop))
                position = self._buffer.find(needle, stop, end)
        # Stream order matters: message_start first, then each delta overwrites.
        for start, stop in sorted(set(spans)):
            self._handle(bytes(self._buffer[start:stop]))

    def _handle(self, raw: bytes) -> None:
        payload = _event_data(raw)
        if payload is None:
            return
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self._take_message(message)
        elif kind == "message_delta":
            usage = event.get("usage")
            if isinstance(usage, dict):
                self._usage = merge_usage(self._usage, usage)
                self._final = True


def _last_event_end(buffer: bytearray, searched_from: int) -> int:
    """Index just past the last blank line (event separator) at or after `searched_from`."""
    lf = buffer.rfind(b"\n\n", searched_from)
    crlf = buffer.rfind(b"\r\n\r\n", searched_from)
    return max(lf + 2 if lf >= 0 else -1, crlf + 4 if crlf >= 0 else -1)


def _event_start(buffer: bytearray, position: int) -> int:
    lf = buffer.rfind(b"\n\n", 0, position)
    crlf = buffer.rfind(b"\r\n\r\n", 0, position)
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _event_stop(buffer: bytearray, position: int, end: int) -> int:
    stops = [
        i
        for i in (buffer.find(b"\n\n", position, end), buffer.find(b"\r\n\r\n", position, end))
        if i >= 0
    ]
    return min(stops) if stops else end


def _event_data(raw: bytes) -> bytes | None:
    """The joined `data:` lines of one SSE event, or None if it has none."""
    lines = [line[5:] for line in raw.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[1:] if line.startswith(b" ") else line for line in lines)


class JSONUsageParser(UsageParser):
    """Usage from a non-streaming `application/json` reply (collected, parsed at the end)."""

    def __init__(
        self, limit: int = MAX_JSON_BODY_BYTES, *, expected_bytes: int | None = None
    ) -> None:
        super().__init__()
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = limit
        self._expected = expected_bytes
        """The reply's Content-Length, if it sent one: parsed as soon as that much arrived."""

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self._limit:
            self._chunks.append(chunk)
        else:
            self._chunks.clear()  # too large to be a reply: leave it unmetered -> fail closed
        if self._expected is not None and self._size == self._expected:
            self.finish()

    def finish(self) -> None:
        if not self._chunks or self._size > self._limit:
            return
        data = b"".join(self._chunks)
        self._chunks.clear()
        try:
            message = json.loads(data)
        except ValueError:
            return
        if isinstance(message, dict) and self._take_message(message):
            self._final = True  # a whole reply: its usage is final


class OpaqueParser(UsageParser):
    """A body the gateway cannot read (an encoding it did not ask for): never any usage."""

    def feed(self, chunk: bytes) -> None:
        pass


def parser_for(
    content_type: str | None,
    content_encoding: str | None = None,
    content_length: int | None = None,
) -> UsageParser:
    """The parser for a response's media type; encoded bodies cannot be metered. With the
    reply's `content_length`, a JSON reply is final on its last byte, before the proxy passes
    that byte on."""
    if content_encoding and content_encoding.strip().lower() not in ("", "identity"):
        return OpaqueParser()
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "text/event-stream":
        return SSEUsageParser()
    if media == "application/json" or media.endswith("+json"):
        return JSONUsageParser(expected_bytes=content_length)
    return OpaqueParser()


# --- The request -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestFacts:
    """What a Messages API request body says that metering needs."""

    model: str = ""
    max_tokens: int | None = None
    stream: bool = False
    fast: bool = False
    """The request asked for fast mode (`speed: fast`)."""
    body_bytes: int = 0
    image_blocks: int = 0
    has_document: bool = False

    @classmethod
    def parse(cls, body: bytes) -> RequestFacts:
        """From the raw body; an unreadable body yields only its size (upstream will refuse it)."""
        try:
            data = json.loads(body)
        except ValueError:
            return cls(body_bytes=len(body))
        if not isinstance(data, dict):
            return cls(body_bytes=len(body))
        model = data.get("model")
        max_tokens = data.get("max_tokens")
        images, documents = _media_blocks(data.get("messages"))
        return cls(
            model=model if isinstance(model, str) else "",
            max_tokens=_count(max_tokens) if isinstance(max_tokens, int) else None,
            stream=data.get("stream") is True,
            fast=data.get("speed") == "fast",
            body_bytes=len(body),
            image_blocks=images,
            has_document=documents > 0,
        )


def _media_blocks(messages: Any) -> tuple[int, int]:
    images = documents = 0
    pending: list[Any] = list(messages) if isinstance(messages, list) else []
    while pending:
        item = pending.pop()
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "image":
            images += 1
        elif kind == "document":
            documents += 1
        content = item.get("content")
        if isinstance(content, list):  # a message's blocks, or a tool_result's
            pending.extend(content)
    return images, documents


# --- Prices ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    cost_usd: Decimal
    model_id: str | None
    """genai-prices' id of the model priced, None when the fallback price was used."""

    @property
    def unknown_model(self) -> bool:
        return self.model_id is None


_PRICED_KEYS = (
    "input_mtok",
    "output_mtok",
    "cache_read_mtok",
    "cache_write_mtok",
    "cache_write_1h_mtok",
    "web_searches_kcount",
)
_fallback_price: ModelPrice | None = None
_largest_context_window: int | None = None
_warned_models: set[str] = set()


def _anthropic_models() -> list[ModelInfo]:
    return get_snapshot().find_provider(None, PROVIDER, None).models


def _all_prices(model: ModelInfo) -> Iterable[ModelPrice]:
    if isinstance(model.prices, ModelPrice):
        yield model.prices
    else:
        yield from (conditional.prices for conditional in model.prices)
    for variant in model.price_variants or ():
        yield variant.prices


def _highest(value: Decimal | TieredPrices | None) -> Decimal | None:
    if isinstance(value, TieredPrices):
        return max([value.base, *(tier.price for tier in value.tiers)])
    return value


def fallback_price() -> ModelPrice:
    """Each unit at its most expensive over every Anthropic model genai-prices knows."""
    global _fallback_price
    if _fallback_price is None:
        highest: dict[str, Decimal] = {}
        for model in _anthropic_models():
            for prices in _all_prices(model):
                for key in _PRICED_KEYS:
                    value = _highest(getattr(prices, key, None))
                    if value is not None and value > highest.get(key, Decimal(0)):
                        highest[key] = value
        _fallback_price = ModelPrice(**highest)
    return _fallback_price


def largest_context_window() -> int:
    global _largest_context_window
    if _largest_context_window is None:
        windows = [m.context_window for m in _anthropic_models() if m.context_window]
        _largest_context_window = max(windows, default=1_000_000)
    return _largest_context_window


def _find_model(model: str) -> ModelInfo | None:
    if not model:
        return None
    try:
        return get_snapshot().find_provider_model(model, None, PROVIDER, None)[1]
    except LookupError:
        return None


def context_window(model: str) -> int | None:
    """The model's context window per genai-prices, None if unknown."""
    info = _find_model(model)
    return info.context_window if info is not None else None


def _genai_usage(usage: TokenUsage) -> Usage:
    write = usage.cache_write_tokens
    values: dict[str, int] = {
        # genai-prices counts input_tokens as *all* input, cache reads and writes included.
        "input_tokens": usage.total_input_tokens,
        "output_tokens": usage.output_tokens,
    }
    if usage.cache_read_input_tokens:
        values["cache_read_tokens"] = usage.cache_read_input_tokens
    if write:
        values["cache_write_tokens"] = write
        # Without a breakdown the whole write is priced at the cache_write (5m) rate.
        if usage.cache_creation_5m_input_tokens is not None:
            values["cache_write_5m_tokens"] = usage.cache_creation_5m_input_tokens
        if usage.cache_creation_1h_input_tokens is not None:
            values["cache_write_1h_tokens"] = usage.cache_creation_1h_input_tokens
    if usage.web_search_requests:
        values["web_searches"] = usage.web_search_requests
    return Usage(**values)


def price(
    usage: TokenUsage, model: str, *, fast: bool = False, at: datetime | None = None
) -> Price:
    """USD for `usage` on `model`; an unknown model is priced at `fallback_price()`."""
    genai_usage = _genai_usage(usage)
    context = {"speed": "fast"} if fast or usage.speed == "fast" else None
    if _find_model(model) is not None:
        calculation = calc_price(
            genai_usage,
            model,
            provider_id=PROVIDER,
            genai_request_timestamp=at,
            price_context=context,
        )
        return Price(cost_usd=calculation.total_price, model_id=calculation.model.id)
    if model not in _warned_models:
        _warned_models.add(model)
        log.warning(
            "Priced unknown model %r at the most expensive Anthropic price (fail closed)", model
        )
    return Price(cost_usd=fallback_price().calc_price(genai_usage)["total_price"], model_id=None)


# --- Charges -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Charge:
    """What one finished request cost the attempt."""

    model: str
    """The model the response named (else the request): the key in the report's `models`."""
    usage: TokenUsage
    """The tokens charged: the reply's, or the fail-closed bound's."""
    cost_usd: Decimal
    fail_closed: bool = False
    """Charged as an upper bound because the final usage never arrived."""
    unknown_model: bool = False
    """genai-prices does not know the model: charged at the most expensive known price."""


def charge_for(
    model: str,
    usage: TokenUsage,
    *,
    fast: bool = False,
    fail_closed: bool = False,
    at: datetime | None = None,
) -> Charge:
    priced = price(usage, model, fast=fast, at=at)
    return Charge(
        model=model or "unknown",
        usage=usage,
        cost_usd=priced.cost_usd,
        fail_closed=fail_closed,
        unknown_model=priced.unknown_model,
    )


def estimated_input_bound(request: RequestFacts, model: str) -> int:
    """Input tokens a request can at most have cost when no message_start arrived."""
    window = context_window(model)
    if request.has_document:
        return window or largest_context_window()
    estimate = (
        request.body_bytes + PROMPT_OVERHEAD_TOKENS + IMAGE_TOKENS_BOUND * request.image_blocks
    )
    return min(estimate, window) if window else estimate


def fail_closed_usage(request: RequestFacts, started: TokenUsage | None, model: str) -> TokenUsage:
    """The upper bound charged for a request whose final usage never arrived (module docstring)."""
    output = request.max_tokens if request.max_tokens is not None else FALLBACK_MAX_TOKENS
    if started is not None:
        return replace(started, output_tokens=max(output, started.output_tokens))
    bound = estimated_input_bound(request, model)
    return TokenUsage(
        output_tokens=output,
        cache_creation_input_tokens=bound,
        cache_creation_5m_input_tokens=0,
        cache_creation_1h_input_tokens=bound,
    )


def settle(
    request: RequestFacts,
    parser: UsageParser | None,
    status: int | None,
    *,
    at: datetime | None = None,
) -> Charge | None:
    """The charge for a request that went upstream, once its response is over.

    `status` is the upstream status, or None when the request was sent and no response came.
    Final usage is charged whatever the status; without it a 2xx (a cut or unreadable reply)
    or a missing response fails closed, and an error status costs nothing.
    """
    model = (parser.model if parser is not None else None) or request.model
    final = parser.final_usage if parser is not None else None
    if final is not None:
        return charge_for(model, final, fast=request.fast, at=at)
    if status is not None and not 200 <= status < 300:
        return None
    started = parser.start_usage if parser is not None else None
    bound = fail_closed_usage(request, started, model)
    return charge_for(model, bound, fast=request.fast, fail_closed=True, at=at)


# --- The attempt's meter -----------------------------------------------------------------------


@dataclass
class _ModelTotals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)

    def spend(self) -> ModelSpend:
        return ModelSpend(
            requests=self.requests,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens,
            cost_usd=self.cost_usd,
        )


def request_bound(request: RequestFacts, *, at: datetime | None = None) -> Decimal:
    """The most a request can cost before any of its reply is seen: what it would be charged
    fail-closed (its reservation while in flight)."""
    usage = fail_closed_usage(request, None, request.model)
    return charge_for(request.model, usage, fast=request.fast, fail_closed=True, at=at).cost_usd


class Meter:
    """One attempt's spend against its budget. Used from one event loop (no locking).

    Each metered request reserves its upper bound (`request_bound`) while in flight. `admit()`
    answers yes while the spend plus every reservation is below the budget, no once the spend
    reached it, and "not yet" (None) in between: the proxy then waits for requests in flight to
    settle and asks again. So whatever a client does (the CLI one request at a time, or an agent
    firing many at once), a request is only admitted when everything before it, at its worst,
    still fits: the overshoot is at most one request's cost.
    """

    def __init__(self, budget: Decimal) -> None:
        if budget < 0:
            raise ValueError("budget must not be negative")
        self.budget = budget
        """The attempt's cap in USD."""
        self.spent = Decimal(0)
        """Metered spend in USD, fail-closed charges included."""
        self.fail_closed = Decimal(0)
        """The part of `spent` charged as upper bounds."""
        self.requests = 0
        self.refused = 0
        self.in_flight = Decimal(0)
        """Sum of the reservations of requests admitted and not yet ended."""
        self._models: dict[str, _ModelTotals] = {}

    @classmethod
    def restore(cls, report: GatewayReport, *, budget: Decimal | None = None) -> Meter:
        """Resume from a persisted report (a restarted gateway); optionally with a new budget.
        The report's requests in flight are spent (their count is not known: `requests` and the
        per-model totals leave them out)."""
        meter = cls(report.budget_usd if budget is None else budget)
        # Requests in flight when the gateway died may have been answered upstream: each is
        # charged its upper bound (fail closed), as a stream cut before its usage is.
        meter.spent = report.spent_usd + report.in_flight_usd
        meter.fail_closed = report.fail_closed_usd + report.in_flight_usd
        meter.requests = report.requests
        meter.refused = report.refused
        for name, spend in report.models.items():
            meter._models[name] = _ModelTotals(
                requests=spend.requests,
                input_tokens=spend.input_tokens,
                output_tokens=spend.output_tokens,
                cache_read_input_tokens=spend.cache_read_input_tokens,
                cache_creation_input_tokens=spend.cache_creation_input_tokens,
                cost_usd=spend.cost_usd,
            )
        return meter

    @property
    def remaining(self) -> Decimal:
        return max(self.budget - self.spent, Decimal(0))

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.budget

    def admit(self) -> bool | None:
        """May another metered request go upstream? None: not until requests in flight end."""
        if self.exhausted:
            return False
        if self.spent + self.in_flight < self.budget:
            return True
        return None

    def reserve(self, bound: Decimal) -> None:
        """An admitted request goes upstream with `bound` as its worst case."""
        self.in_flight += bound

    def release(self, bound: Decimal) -> None:
        """The request that reserved `bound` ended (after `record`, if it was charged)."""
        self.in_flight = max(self.in_flight - bound, Decimal(0))

    def refuse(self) -> None:
        """Count a request refused because the budget is spent."""
        self.refused += 1

    def record(self, charge: Charge | None) -> None:
        """Count a finished request that went upstream, and its charge if it has one."""
        self.requests += 1
        if charge is None:
            return
        self.spent += charge.cost_usd
        if charge.fail_closed:
            self.fail_closed += charge.cost_usd
        totals = self._models.setdefault(charge.model, _ModelTotals())
        usage = charge.usage
        totals.requests += 1
        totals.input_tokens += usage.input_tokens
        totals.output_tokens += usage.output_tokens
        totals.cache_read_input_tokens += usage.cache_read_input_tokens
        totals.cache_creation_input_tokens += usage.cache_write_tokens
        totals.cost_usd += charge.cost_usd

    def report(self, ended: GatewayEnd) -> GatewayReport:
        return GatewayReport(
            budget_usd=self.budget,
            spent_usd=self.spent,
            fail_closed_usd=self.fail_closed,
            requests=self.requests,
            refused=self.refused,
            in_flight_usd=self.in_flight,
            models={name: totals.spend() for name, totals in self._models.items()},
            ended=ended,
        )
