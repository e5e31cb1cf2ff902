"""The gateway's metering: SSE and JSON usage parsing, genai-prices pricing, fail-closed bounds,
and the attempt's Meter (admission, refusals, reports, restore after a restart)."""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import ModelPrice, TieredPrices

from agentsession_contract.gateway import GatewayReport
from agentsession_gateway.metering import (
    FALLBACK_MAX_TOKENS,
    IMAGE_TOKENS_BOUND,
    PROMPT_OVERHEAD_TOKENS,
    Charge,
    JSONUsageParser,
    Meter,
    OpaqueParser,
    RequestFacts,
    SSEUsageParser,
    TokenUsage,
    charge_for,
    parser_for,
    price,
    request_bound,
    settle,
)

MTOK = Decimal(1_000_000)


# --- Realistic streams -------------------------------------------------------------------------

START_USAGE = {
    "input_tokens": 2000,
    "cache_creation_input_tokens": 1500,
    "cache_read_input_tokens": 3000,
    "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 1000},
    "output_tokens": 1,
    "service_tier": "standard",
}
# Cumulative: input grew during the request (a server tool ran); web searches only appear here;
# the null cache field must not wipe the one message_start gave.
DELTA_USAGE = {
    "input_tokens": 2100,
    "cache_read_input_tokens": None,
    "output_tokens": 700,
    "server_tool_use": {"web_search_requests": 2},
}
EXPECTED = TokenUsage(
    input_tokens=2100,
    output_tokens=700,
    cache_read_input_tokens=3000,
    cache_creation_input_tokens=1500,
    cache_creation_5m_input_tokens=500,
    cache_creation_1h_input_tokens=1000,
    web_search_requests=2,
)


def stream_events(
    start_usage: dict[str, Any] = START_USAGE,
    deltas: tuple[dict[str, Any], ...] = (DELTA_USAGE,),
    model: str = "claude-sonnet-4-5-20250929",
) -> list[tuple[str, dict[str, Any]]]:
    message: dict[str, Any] = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "usage": start_usage,
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        ),
    ]
    # Text that names the events (and a fake usage) must not be taken for them.
    words = ["Streams", "end", "with", "message_delta", "and", "message_start", "comes", "first"]
    words += ['{"usage": {"output_tokens": 999999}}', "ünïcödé", "line\nbreak"] * 20
    for word in words:
        delta = {"type": "text_delta", "text": " " + word}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    tool = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}
    events.append(
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": tool})
    )
    partial = {"type": "input_json_delta", "partial_json": json.dumps({"command": "ls -la"})}
    events.append(
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": partial})
    )
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 1}))
    for usage in deltas:
        events.append(
            (
                "message_delta",
                {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": usage},
            )
        )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def encode(events: list[tuple[str, dict[str, Any]]], *, crlf: bool) -> bytes:
    newline = "\r\n" if crlf else "\n"
    return b"".join(
        f"event: {name}{newline}data: {json.dumps(data, ensure_ascii=False)}{newline}".encode()
        + newline.encode()
        for name, data in events
    )


def random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    """Splits of every size, from single bytes to most of the stream."""
    chunks, position = [], 0
    while position < len(data):
        size = rng.choice([1, 2, 3, rng.randint(1, 64), rng.randint(1, 4096), len(data) // 3])
        chunks.append(data[position : position + max(size, 1)])
        position += max(size, 1)
    return chunks


def parse(chunks: list[bytes]) -> SSEUsageParser:
    parser = SSEUsageParser()
    for chunk in chunks:
        parser.feed(chunk)
    parser.finish()
    return parser


# --- The SSE parser ----------------------------------------------------------------------------


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_parser_gets_the_same_usage_from_any_chunking(crlf: bool) -> None:
    data = encode(stream_events(), crlf=crlf)
    whole = parse([data])
    assert whole.final_usage == EXPECTED
    assert whole.model == "claude-sonnet-4-5-20250929"
    assert parse([data[i : i + 1] for i in range(len(data))]).final_usage == EXPECTED
    for seed in range(200):
        parser = parse(random_chunks(data, random.Random(seed)))
        assert parser.final_usage == EXPECTED, f"seed {seed}"
        assert parser.model == "claude-sonnet-4-5-20250929"


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_parser_keeps_no_complete_event_buffered(crlf: bool) -> None:
    """Each chunk is split once at its last complete event: the buffer holds one partial event
    at most, which is what keeps the parser linear in the stream's size."""
    events = stream_events()
    data = encode(events, crlf=crlf)
    longest = max(len(encode([event], crlf=crlf)) for event in events)
    single_bytes = [data[i : i + 1] for i in range(len(data))]
    for chunks in [single_bytes] + [random_chunks(data, random.Random(s)) for s in range(20)]:
        parser = SSEUsageParser()
        for chunk in chunks:
            parser.feed(chunk)
            assert len(parser._buffer) < longest + len(chunk)
            assert b"\n\n" not in parser._buffer
            assert b"\r\n\r\n" not in parser._buffer


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_usage_is_final_the_moment_message_delta_is_complete(crlf: bool) -> None:
    """The proxy charges on this signal, before the client can act on the reply's end."""
    events = stream_events()
    data = encode(events, crlf=crlf)
    until_delta = encode(events[: [n for n, _ in events].index("message_delta") + 1], crlf=crlf)
    parser = SSEUsageParser()
    for i in range(len(until_delta) - 1):
        parser.feed(data[i : i + 1])
    assert not parser.has_final
    parser.feed(data[len(until_delta) - 1 : len(until_delta)])
    assert parser.has_final
    assert parser.final_usage == EXPECTED


def test_parser_json_parses_only_the_usage_events(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[Any] = []
    real_loads = json.loads

    def counting_loads(data: Any) -> Any:
        value = real_loads(data)
        parsed.append(value)
        return value

    monkeypatch.setattr(json, "loads", counting_loads)  # metering calls json.loads
    events = stream_events()
    parse(random_chunks(encode(events, crlf=False), random.Random(3)))
    monkeypatch.undo()
    # message_start, message_delta, and the two text deltas that contain the event names.
    assert [p["type"] for p in parsed].count("message_start") == 1
    assert [p["type"] for p in parsed].count("message_delta") == 1
    assert len(parsed) == 4
    assert len(events) > 60


def test_every_delta_overwrites_and_nothing_is_added() -> None:
    deltas = (
        {"output_tokens": 10},
        {"output_tokens": 300, "input_tokens": 2500, "cache_creation_input_tokens": None},
        {"output_tokens": 450},
    )
    parser = parse([encode(stream_events(deltas=deltas), crlf=False)])
    usage = parser.final_usage
    assert usage is not None
    assert usage.output_tokens == 450  # the last cumulative count, not 760 nor 451
    assert usage.input_tokens == 2500
    assert usage.cache_creation_input_tokens == 1500  # a null never overwrites
    assert usage.cache_read_input_tokens == 3000


def test_fields_that_only_message_delta_carries_are_kept() -> None:
    start = {"input_tokens": 50, "output_tokens": 1}
    delta = {
        "output_tokens": 80,
        "cache_read_input_tokens": 4000,
        "cache_creation_input_tokens": 600,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 600},
    }
    usage = parse([encode(stream_events(start, (delta,)), crlf=True)]).final_usage
    assert usage == TokenUsage(
        input_tokens=50,
        output_tokens=80,
        cache_read_input_tokens=4000,
        cache_creation_input_tokens=600,
        cache_creation_5m_input_tokens=0,
        cache_creation_1h_input_tokens=600,
    )


def test_a_stream_without_message_delta_has_no_final_usage() -> None:
    events = [e for e in stream_events() if e[0] not in ("message_delta", "message_stop")]
    data = encode(events, crlf=False)
    parser = parse([data[: len(data) - 17]])  # cut inside the last event, too
    assert parser.final_usage is None
    assert not parser.has_final
    assert parser.start_usage == TokenUsage.from_api(START_USAGE)
    assert parse([b""]).start_usage is None


def test_a_last_event_without_its_blank_line_still_counts() -> None:
    data = encode(stream_events(), crlf=False).rstrip(b"\n")
    assert parse([data]).final_usage == EXPECTED


# --- Non-streaming replies and parser choice ---------------------------------------------------


def test_json_reply_usage_and_model() -> None:
    body = json.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "model": "claude-haiku-4-5-20251001",
            "content": [{"type": "text", "text": "hi"}],
            "usage": {**START_USAGE, "output_tokens": 700},
        }
    ).encode()
    parser = JSONUsageParser()
    for chunk in random_chunks(body, random.Random(1)):
        parser.feed(chunk)
    assert parser.final_usage is None  # only once the body is whole
    parser.finish()
    assert parser.model == "claude-haiku-4-5-20251001"
    assert parser.final_usage == TokenUsage.from_api({**START_USAGE, "output_tokens": 700})


def test_unreadable_or_oversized_json_has_no_usage() -> None:
    broken = JSONUsageParser()
    broken.feed(b'{"usage": {"input_tokens": 1')
    broken.finish()
    assert broken.final_usage is None
    big = JSONUsageParser(limit=10)
    big.feed(b'{"usage": {"input_tokens": 1, "output_tokens": 2}}')
    big.finish()
    assert big.final_usage is None


def test_parser_for_picks_by_media_type_and_refuses_encodings() -> None:
    assert isinstance(parser_for("text/event-stream; charset=utf-8"), SSEUsageParser)
    assert isinstance(parser_for("application/json"), JSONUsageParser)
    assert isinstance(parser_for("text/event-stream", "gzip"), OpaqueParser)
    assert isinstance(parser_for("text/event-stream", "identity"), SSEUsageParser)
    assert isinstance(parser_for(None), OpaqueParser)


def test_request_facts() -> None:
    body = {
        "model": "claude-opus-5-5",
        "max_tokens": 32000,
        "stream": True,
        "speed": "fast",
        "messages": [
            {"role": "user", "content": [{"type": "image", "source": {}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "content": [{"type": "image", "source": {}}]},
                    {"type": "document", "source": {}},
                ],
            },
        ],
    }
    raw = json.dumps(body).encode()
    facts = RequestFacts.parse(raw)
    assert facts == RequestFacts(
        model="claude-opus-5-5",
        max_tokens=32000,
        stream=True,
        fast=True,
        body_bytes=len(raw),
        image_blocks=2,
        has_document=True,
    )
    assert RequestFacts.parse(b"not json") == RequestFacts(body_bytes=8)


# --- Prices ------------------------------------------------------------------------------------


def published(model: str) -> dict[str, Decimal]:
    """The per-MTok prices genai-prices publishes for a model today (tiers: the base price)."""
    info = get_snapshot().find_provider_model(model, None, "anthropic", None)[1]
    prices: ModelPrice = info.get_prices(datetime.now(UTC))
    out = {}
    for key in ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"):
        value = getattr(prices, key)
        out[key] = value.base if isinstance(value, TieredPrices) else value
    one_hour = prices.cache_write_1h_mtok
    out["cache_write_1h_mtok"] = one_hour.base if isinstance(one_hour, TieredPrices) else one_hour
    return out


def test_the_bundled_prices_are_the_published_ones() -> None:
    # Checked against anthropic.com/pricing, so the tests below compute from real numbers.
    assert published("claude-sonnet-4-5") == {
        "input_mtok": Decimal(3),
        "output_mtok": Decimal(15),
        "cache_read_mtok": Decimal("0.3"),
        "cache_write_mtok": Decimal("3.75"),
        "cache_write_1h_mtok": Decimal(6),
    }
    assert published("claude-haiku-4-5") == {
        "input_mtok": Decimal(1),
        "output_mtok": Decimal(5),
        "cache_read_mtok": Decimal("0.1"),
        "cache_write_mtok": Decimal("1.25"),
        "cache_write_1h_mtok": Decimal(2),
    }


@pytest.mark.parametrize(
    "model",
    ["claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-haiku-4-5", "claude-opus-5-5"],
)
def test_price_of_every_usage_field(model: str) -> None:
    p = published(model)
    expected = (
        2100 * p["input_mtok"]
        + 3000 * p["cache_read_mtok"]
        + 500 * p["cache_write_mtok"]
        + 1000 * p["cache_write_1h_mtok"]
        + 700 * p["output_mtok"]
    ) / MTOK + Decimal(2) * Decimal(10) / Decimal(1000)  # web search: 10 USD per 1,000
    priced = price(EXPECTED, model)
    assert priced.cost_usd == expected
    assert not priced.unknown_model


def test_sonnet_4_5_in_dollars() -> None:
    usage = TokenUsage(input_tokens=100_000, output_tokens=10_000)
    assert price(usage, "claude-sonnet-4-5").cost_usd == Decimal("0.45")  # 0.30 + 0.15


def test_cache_writes_5m_versus_1h() -> None:
    def write(five: int | None, one: int | None) -> Decimal:
        usage = TokenUsage(
            cache_creation_input_tokens=100_000,
            cache_creation_5m_input_tokens=five,
            cache_creation_1h_input_tokens=one,
        )
        return price(usage, "claude-sonnet-4-5").cost_usd

    assert write(None, None) == Decimal("0.375")  # no breakdown: all of it at the 5m rate
    assert write(100_000, 0) == Decimal("0.375")
    assert write(0, 100_000) == Decimal("0.6")
    assert write(40_000, 60_000) == Decimal("0.51")  # 0.15 + 0.36


def test_an_inconsistent_cache_breakdown_never_underprices() -> None:
    usage = TokenUsage(
        cache_creation_input_tokens=10_000,
        cache_creation_5m_input_tokens=40_000,
        cache_creation_1h_input_tokens=60_000,
    )
    assert usage.cache_write_tokens == 100_000
    assert price(usage, "claude-sonnet-4-5").cost_usd == Decimal("0.51")


def test_fast_mode_is_priced_higher() -> None:
    usage = TokenUsage(input_tokens=1000, output_tokens=1000)
    standard = price(usage, "claude-opus-5-5").cost_usd
    assert price(usage, "claude-opus-5-5", fast=True).cost_usd == 2 * standard
    fast_reply = TokenUsage(input_tokens=1000, output_tokens=1000, speed="fast")
    assert price(fast_reply, "claude-opus-5-5").cost_usd == 2 * standard


def test_unknown_model_is_charged_the_highest_known_price(
    caplog: pytest.LogCaptureFixture,
) -> None:
    usage = TokenUsage(
        input_tokens=1000,
        output_tokens=1000,
        cache_read_input_tokens=1000,
        cache_creation_input_tokens=2000,
        cache_creation_5m_input_tokens=1000,
        cache_creation_1h_input_tokens=1000,
    )
    with caplog.at_level(logging.WARNING, logger="agentsession_gateway.metering"):
        unknown = price(usage, "claude-imaginary-9-9")
    assert unknown.unknown_model
    assert "claude-imaginary-9-9" in caplog.text
    for model in get_snapshot().find_provider(None, "anthropic", None).models:
        known = price(usage, model.id)
        assert not known.unknown_model, model.id
        assert unknown.cost_usd >= known.cost_usd, model.id
        assert unknown.cost_usd >= price(usage, model.id, fast=True).cost_usd, model.id
    # Never raises, whatever the name.
    assert price(usage, "").unknown_model
    assert price(usage, "gpt-4o").cost_usd == unknown.cost_usd
    charge = charge_for("claude-imaginary-9-9", usage)
    assert charge.unknown_model
    assert charge.cost_usd == unknown.cost_usd


# --- Fail-closed charges -----------------------------------------------------------------------


def facts(**overrides: Any) -> RequestFacts:
    values: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "stream": True,
        "body_bytes": 20_000,
    }
    values.update(overrides)
    return RequestFacts(**values)


def started_only() -> SSEUsageParser:
    events = [e for e in stream_events() if e[0] not in ("message_delta", "message_stop")]
    return parse([encode(events, crlf=False)])


def test_cut_stream_is_charged_its_known_input_and_max_tokens() -> None:
    charge = settle(facts(), started_only(), 200)
    assert charge is not None
    assert charge.fail_closed
    assert charge.model == "claude-sonnet-4-5-20250929"  # the model the response named
    assert charge.usage == replace_output(TokenUsage.from_api(START_USAGE), 4096)
    expected = (
        2000 * Decimal(3)
        + 3000 * Decimal("0.3")
        + 500 * Decimal("3.75")
        + 1000 * Decimal(6)
        + 4096 * Decimal(15)
    ) / MTOK
    assert charge.cost_usd == expected


def replace_output(usage: TokenUsage, output: int) -> TokenUsage:
    return TokenUsage(**{**usage.__dict__, "output_tokens": output})


def test_cut_before_message_start_is_bounded_by_the_body() -> None:
    charge = settle(facts(), SSEUsageParser(), 200)
    assert charge is not None
    assert charge.fail_closed
    bound = 20_000 + PROMPT_OVERHEAD_TOKENS
    # All of it priced at the one-hour cache-write rate, the dearest input rate.
    assert charge.usage.cache_creation_1h_input_tokens == bound
    assert charge.cost_usd == (bound * Decimal(6) + 4096 * Decimal(15)) / MTOK
    # No response at all (request sent): the same bound.
    assert settle(facts(), None, None) == charge


def test_body_bound_counts_images_documents_and_the_context_window() -> None:
    def bound(**overrides: Any) -> int:
        charge = settle(facts(**overrides), None, None)
        assert charge is not None
        return charge.usage.cache_write_tokens

    assert bound(image_blocks=3) == 20_000 + PROMPT_OVERHEAD_TOKENS + 3 * IMAGE_TOKENS_BOUND
    assert bound(has_document=True) == 200_000  # sonnet 4.5's whole context window
    assert bound(body_bytes=5_000_000) == 200_000
    assert bound(model="claude-imaginary", has_document=True) == 1_000_000


def test_cut_stream_without_max_tokens_and_with_more_output_seen() -> None:
    charge = settle(facts(max_tokens=None), SSEUsageParser(), 200)
    assert charge is not None
    assert charge.usage.output_tokens == FALLBACK_MAX_TOKENS
    start = {"input_tokens": 10, "output_tokens": 9000}
    events = [("message_start", {"type": "message_start", "message": {"usage": start}})]
    charge = settle(facts(max_tokens=100), parse([encode(events, crlf=False)]), 200)
    assert charge is not None
    assert charge.usage.output_tokens == 9000


def test_errors_cost_nothing_unless_they_carry_usage() -> None:
    assert settle(facts(), JSONUsageParser(), 529) is None
    assert settle(facts(), SSEUsageParser(), 400) is None
    complete = parse([encode(stream_events(), crlf=False)])
    charge = settle(facts(), complete, 500)
    assert charge is not None
    assert not charge.fail_closed
    assert charge.usage == EXPECTED
    ok = settle(facts(), complete, 200)
    assert ok is not None
    assert not ok.fail_closed
    assert ok.cost_usd == price(EXPECTED, "claude-sonnet-4-5").cost_usd


# --- The meter ---------------------------------------------------------------------------------


def a_charge(cost: str, model: str = "claude-sonnet-4-5", *, fail_closed: bool = False) -> Charge:
    usage = TokenUsage(input_tokens=100, output_tokens=10, cache_read_input_tokens=5)
    return Charge(model=model, usage=usage, cost_usd=Decimal(cost), fail_closed=fail_closed)


def test_meter_admits_until_the_budget_is_spent() -> None:
    meter = Meter(budget=Decimal("1.00"))
    assert meter.admit() is True
    meter.record(a_charge("0.60"))
    assert meter.admit() is True
    meter.record(None)  # an upstream error: counted, free
    meter.record(a_charge("0.39"))
    assert meter.admit() is True
    assert meter.remaining == Decimal("0.01")
    meter.record(a_charge("0.30"))  # the overshoot: this request was admitted before the cap
    assert meter.admit() is False
    assert meter.exhausted
    assert meter.remaining == 0
    meter.refuse()
    meter.refuse()
    report = meter.report("budget_exhausted")
    assert report.spent_usd == Decimal("1.29")
    assert report.requests == 4
    assert report.refused == 2
    assert report.ended == "budget_exhausted"
    assert Meter(budget=Decimal(0)).admit() is False


def test_requests_in_flight_reserve_their_bound_and_hold_back_what_would_not_fit() -> None:
    meter = Meter(budget=Decimal("1.00"))
    meter.reserve(Decimal("0.70"))  # one request in flight
    assert meter.admit() is True  # 0.70 reserved < 1.00: a second one may go too
    meter.reserve(Decimal("0.70"))
    assert meter.admit() is None  # 1.40 at worst: wait for one of them to end
    assert meter.report("running").in_flight_usd == Decimal("1.40")
    meter.record(a_charge("0.10"))  # the first ended, far below its bound
    meter.release(Decimal("0.70"))
    assert meter.admit() is True  # 0.10 spent + 0.70 reserved
    meter.record(a_charge("0.95"))  # the second cost more than the rest of the budget
    meter.release(Decimal("0.70"))
    assert meter.admit() is False
    report = meter.report("stopped")
    assert (report.spent_usd, report.in_flight_usd) == (Decimal("1.05"), Decimal(0))


def test_a_request_is_reserved_at_its_fail_closed_bound() -> None:
    facts = RequestFacts(model="claude-sonnet-4-5", max_tokens=1000, body_bytes=4000)
    bound = request_bound(facts)
    charged = settle(facts, None, None)  # sent, no response: charged fail-closed
    assert charged is not None
    assert bound == charged.cost_usd > 0


def test_meter_report_per_model_and_fail_closed_part() -> None:
    meter = Meter(budget=Decimal(10))
    meter.record(a_charge("0.25"))
    meter.record(a_charge("0.50", fail_closed=True))
    meter.record(a_charge("1.00", model="claude-opus-5-5"))
    report = meter.report("running")
    assert report.spent_usd == Decimal("1.75")
    assert report.fail_closed_usd == Decimal("0.50")
    sonnet = report.models["claude-sonnet-4-5"]
    assert (sonnet.requests, sonnet.input_tokens, sonnet.output_tokens) == (2, 200, 20)
    assert sonnet.cache_read_input_tokens == 10
    assert sonnet.cost_usd == Decimal("0.75")
    assert report.models["claude-opus-5-5"].cost_usd == Decimal("1.00")


def test_a_restored_meter_charges_the_requests_that_were_in_flight_once() -> None:
    meter = Meter(budget=Decimal(2))
    meter.record(a_charge("0.25"))
    meter.reserve(Decimal("0.5"))  # forwarded, then the gateway died before its answer
    saved = GatewayReport.model_validate(json.loads(json.dumps(meter.report("running").to_wire())))
    assert saved.in_flight_usd == Decimal("0.5")
    restored = Meter.restore(saved)
    report = restored.report("running")
    assert (report.spent_usd, report.fail_closed_usd, report.in_flight_usd) == (
        Decimal("0.75"),
        Decimal("0.5"),
        Decimal(0),
    )
    assert report.requests == 1  # its count is unknown: only the one that settled
    # What the restarted gateway saves first holds nothing in flight: a second restart charges
    # nothing again.
    assert Meter.restore(report).report("running") == report


def test_meter_restores_from_its_persisted_report() -> None:
    meter = Meter(budget=Decimal(2))
    meter.record(a_charge("0.75"))
    meter.record(a_charge("0.5", fail_closed=True))
    meter.refuse()
    # Through JSON, as the gateway's state file keeps it.
    saved = GatewayReport.model_validate(json.loads(json.dumps(meter.report("running").to_wire())))
    restored = Meter.restore(saved)
    assert restored.report("running") == meter.report("running")
    restored.record(a_charge("0.75"))
    assert restored.admit() is False
    report = restored.report("stopped")
    assert (report.spent_usd, report.requests, report.refused) == (Decimal("2.00"), 3, 1)
    assert report.models["claude-sonnet-4-5"].requests == 3
    assert Meter.restore(saved, budget=Decimal(5)).budget == Decimal(5)
