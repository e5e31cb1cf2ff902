"""The gateway's Messages API proxy in front of a scripted upstream, with the real `claude` CLI.

Tests marked `cli` run the CLI from the claude-agent-sdk wheel (`query()`) with its base URL at
the proxy and the per-pod token as its API key; the others speak HTTP to the proxy directly. The
proxy and the upstream each run on a loop thread of their own (tests.support.gateway_harness).
Expected costs are computed here from Anthropic's published per-MTok prices (checked against
genai-prices' data in tests/unit/test_metering.py), not from the gateway's own code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import ClaudeAgentOptions, ResultError, ResultMessage, query

from tests.support import scripted_api as sa
from tests.support.gateway_harness import (
    POD_TOKEN,
    REAL_KEY,
    MeteredReply,
    ProxyServer,
    ScriptedUpstream,
    encode_events,
    events,
    usage_reply,
)

MTOK = Decimal(1_000_000)
# claude-sonnet-4-5, USD per million tokens (anthropic.com/pricing).
INPUT, OUTPUT, CACHE_READ, CACHE_5M, CACHE_1H = (
    Decimal(3),
    Decimal(15),
    Decimal("0.3"),
    Decimal("3.75"),
    Decimal(6),
)
MODEL = "claude-sonnet-4-5"


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as server:
        yield server


@pytest.fixture
def gateway(upstream: ScriptedUpstream) -> Iterator[ProxyServer]:
    with ProxyServer(upstream.base_url) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def _no_host_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


def run_cli(
    base_url: str,
    token: str,
    tmp_path: Path,
    prompt: str = "Say hello.",
    **options: Any,
) -> ResultMessage:
    """One CLI session through the proxy; returns its ResultMessage."""
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    env = {
        "HOME": str(tmp_path),
        "CLAUDE_CONFIG_DIR": str(tmp_path / "config"),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": token,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_DISABLE_AUTO_MEMORY": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    settings: dict[str, Any] = {
        "model": MODEL,
        "max_turns": 5,
        # The CLI's own cap stays out of the way: the gateway's is under test.
        "max_budget_usd": 100.0,
    }
    settings.update(options)

    async def session() -> ResultMessage:
        result: ResultMessage | None = None
        try:
            async for message in query(
                prompt=prompt,
                options=ClaudeAgentOptions(
                    cwd=str(workspace), env=env, setting_sources=[], **settings
                ),
            ):
                if isinstance(message, ResultMessage):
                    result = message
        except ResultError:
            pass  # raised after an error result: the result is what we keep
        assert result is not None, "the CLI gave no result"
        return result

    return asyncio.run(session())


def post(
    proxy: ProxyServer,
    body: dict[str, Any],
    *,
    path: str = "/v1/messages?beta=true",
    headers: dict[str, str] | None = None,
    token: str | None = POD_TOKEN,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", int(proxy.base_url.rsplit(":", 1)[1]))
    sent = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    if token is not None:
        sent["x-api-key"] = token
    sent.update(headers or {})
    try:
        connection.request("POST", path, json.dumps(body), sent)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def request_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 2048,
        "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
    }
    body.update(overrides)
    return body


def no_token_upstream(upstream: ScriptedUpstream) -> None:
    """Every request upstream carried the real key, and the pod token appears nowhere."""
    assert upstream.credentials
    for _, key, authorization in upstream.credentials:
        assert key == REAL_KEY
        assert authorization is None
    for recorded in upstream.api.requests:
        assert POD_TOKEN not in json.dumps(recorded.headers)
        assert POD_TOKEN not in json.dumps(recorded.body)


# --- The real CLI ------------------------------------------------------------------------------


@pytest.mark.cli
def test_cli_session_is_metered_at_the_scripted_usage(
    upstream: ScriptedUpstream, gateway: ProxyServer, tmp_path: Path
) -> None:
    upstream.api.script(
        usage_reply(
            {
                "input_tokens": 1200,
                "cache_creation_input_tokens": 3000,
                "cache_read_input_tokens": 0,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 1000,
                    "ephemeral_1h_input_tokens": 2000,
                },
                "output_tokens": 1,
            },
            {"output_tokens": 150},
            tool=sa.bash("echo metered"),
        ),
        usage_reply(
            {"input_tokens": 300, "cache_read_input_tokens": 4000, "output_tokens": 1},
            {"output_tokens": 40},
            text="Done.",
        ),
    )
    result = run_cli(gateway.base_url, POD_TOKEN, tmp_path, allowed_tools=["Bash"])
    assert result.is_error is False, result
    assert result.num_turns == 2
    first = (1200 * INPUT + 1000 * CACHE_5M + 2000 * CACHE_1H + 150 * OUTPUT) / MTOK
    second = (300 * INPUT + 4000 * CACHE_READ + 40 * OUTPUT) / MTOK
    report = gateway.wait_for(lambda r: r.requests == 2)
    assert report.spent_usd == first + second == Decimal("0.0243")
    assert report.fail_closed_usd == 0
    assert report.refused == 0
    spend = report.models[MODEL]
    assert (spend.requests, spend.input_tokens, spend.output_tokens) == (2, 1500, 190)
    assert (spend.cache_read_input_tokens, spend.cache_creation_input_tokens) == (4000, 3000)
    # The CLI, pricing the same usage itself (in floats), agrees.
    assert result.total_cost_usd == pytest.approx(float(report.spent_usd), abs=1e-12)
    # The real key went upstream, never the token; the CLI's own headers went through.
    no_token_upstream(upstream)
    requests = upstream.api.model_requests()
    assert len(requests) == 2
    for recorded in requests:
        assert recorded.path == "/v1/messages?beta=true"
        assert recorded.headers["anthropic-version"]
        assert recorded.headers["anthropic-beta"]
        assert recorded.headers["x-claude-code-session-id"] == result.session_id
        assert recorded.headers["accept-encoding"] == "identity"
    # The gateway saved its report after the charges (on_charge), ending at the final one.
    gateway.wait_saved(1)
    deadline = time.monotonic() + 10
    while gateway.saved[-1] != report:
        assert time.monotonic() < deadline, gateway.saved
        time.sleep(0.02)  # polling interval, bounded by the deadline


@pytest.mark.cli
def test_wrong_token_gets_401_and_reaches_nothing_upstream(
    upstream: ScriptedUpstream, gateway: ProxyServer, tmp_path: Path
) -> None:
    result = run_cli(gateway.base_url, "sk-ant-not-the-pod-token", tmp_path)
    assert result.is_error is True
    assert result.api_error_status == 401
    assert upstream.credentials == []
    assert gateway.report().requests == 0


@pytest.mark.cli
def test_spent_budget_stops_a_tool_loop_with_one_refusal(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    upstream.api.default = sa.Reply(
        blocks=sa.bash("echo again").blocks,
        stop_reason="tool_use",
        input_tokens=100_000,
        output_tokens=1_000,
    )
    per_request = (100_000 * INPUT + 1_000 * OUTPUT) / MTOK  # 0.315
    budget = Decimal("1.00")
    with ProxyServer(upstream.base_url, budget) as gateway:
        result = run_cli(
            gateway.base_url, POD_TOKEN, tmp_path, allowed_tools=["Bash"], max_turns=30
        )
        report = gateway.wait_for(lambda r: r.refused >= 1)
    assert result.is_error is True
    assert result.api_error_status == 429
    assert "budget" in (result.result or "")
    # 0.315, 0.630, 0.945 stay under the cap, the 4th crosses it, the 5th is refused.
    assert report.refused == 1
    assert report.requests == 4
    assert len(upstream.api.model_requests()) == 4  # the refused one never left the gateway
    assert report.spent_usd == 4 * per_request
    assert budget <= report.spent_usd <= budget + per_request  # overshoot: one request at most


@pytest.mark.cli
def test_stream_cut_before_message_delta_is_charged_the_fail_closed_bound(
    upstream: ScriptedUpstream, gateway: ProxyServer, tmp_path: Path
) -> None:
    upstream.api.script(
        MeteredReply(
            blocks=sa.text("this reply is cut short").blocks,
            start_usage={"input_tokens": 1000, "cache_read_input_tokens": 500, "output_tokens": 1},
            cut="before_delta",
        )
    )
    result = run_cli(gateway.base_url, POD_TOKEN, tmp_path)
    requests = upstream.api.model_requests()
    report = gateway.wait_for(lambda r: r.requests == len(requests))
    # The CLI retried the broken stream once (its own choice) and got the default answer.
    assert len(requests) == 2
    assert result.result == "(scripted default reply)"
    max_tokens = requests[0].body["max_tokens"]
    assert max_tokens > 0
    bound = (1000 * INPUT + 500 * CACHE_READ + max_tokens * OUTPUT) / MTOK
    retry = (10 * INPUT + 5 * OUTPUT) / MTOK
    assert report.fail_closed_usd == bound
    assert report.spent_usd == bound + retry


# --- HTTP, no CLI ------------------------------------------------------------------------------


def test_token_is_checked_as_x_api_key_or_bearer(
    upstream: ScriptedUpstream, gateway: ProxyServer
) -> None:
    for token in (None, "", "wrong", POD_TOKEN + "x", POD_TOKEN[:-1]):
        status, _, body = post(gateway, request_body(), token=token)
        assert status == 401
        assert json.loads(body)["error"]["type"] == "authentication_error"
    status, _, _ = post(gateway, request_body(), token=None, headers={"authorization": "Bearer x"})
    assert status == 401
    assert upstream.credentials == []
    assert gateway.report().requests == 0

    status, _, _ = post(
        gateway, request_body(), token=None, headers={"authorization": f"Bearer {POD_TOKEN}"}
    )
    assert status == 200
    status, _, _ = post(gateway, request_body())
    assert status == 200
    no_token_upstream(upstream)
    assert gateway.wait_for(lambda r: r.requests == 2).spent_usd > 0


def test_headers_end_to_end_kept_hop_by_hop_dropped(
    upstream: ScriptedUpstream, gateway: ProxyServer
) -> None:
    status, headers, _ = post(
        gateway,
        request_body(),
        headers={
            "anthropic-beta": "a-2025-01-01,b-2025-02-02",
            "x-claude-code-session-id": "5d1c8f3e-0000-4000-8000-000000000000",
            "x-custom-end-to-end": "kept",
            "connection": "keep-alive, x-private-hop",
            "x-private-hop": "dropped",
            "accept-encoding": "gzip, br",
        },
    )
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    (recorded,) = upstream.api.model_requests()
    assert recorded.headers["anthropic-beta"] == "a-2025-01-01,b-2025-02-02"
    assert recorded.headers["x-claude-code-session-id"] == "5d1c8f3e-0000-4000-8000-000000000000"
    assert recorded.headers["x-custom-end-to-end"] == "kept"
    assert recorded.headers["anthropic-version"] == "2023-06-01"
    assert "x-private-hop" not in recorded.headers
    assert recorded.headers["accept-encoding"] == "identity"


def test_the_stream_passes_byte_for_byte(upstream: ScriptedUpstream, gateway: ProxyServer) -> None:
    reply = usage_reply(
        {"input_tokens": 7, "output_tokens": 1}, {"output_tokens": 3}, text="one two three"
    )
    upstream.api.script(reply, dataclasses.replace(reply, crlf=True))
    for crlf in (False, True):
        status, _, body = post(gateway, request_body())
        assert status == 200
        expected = b"".join(encode_events(events(reply, MODEL), crlf=crlf))

        def without_ids(data: bytes) -> bytes:
            return re.sub(rb"msg_\d+", b"msg_", data)

        assert without_ids(body) == without_ids(expected)
    report = gateway.wait_for(lambda r: r.requests == 2)
    assert report.spent_usd == 2 * (7 * INPUT + 3 * OUTPUT) / MTOK


def test_spent_budget_is_refused_in_the_shape_the_cli_treats_as_final(
    upstream: ScriptedUpstream,
) -> None:
    with ProxyServer(upstream.base_url, Decimal(0)) as gateway:
        status, headers, body = post(gateway, request_body())
        report = gateway.report()
        gateway.wait_saved(1)
    assert status == 429
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": "billing_error", "message": json.loads(body)["error"]["message"]},
    }
    assert headers["x-should-retry"] == "false"
    assert int(headers["retry-after"]) > 0
    assert upstream.credentials == []
    assert (report.refused, report.requests, report.spent_usd) == (1, 0, Decimal(0))


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "json"])
def test_requests_sent_at_once_overshoot_the_budget_by_one_request_at_most(
    upstream: ScriptedUpstream, stream: bool
) -> None:
    """An agent firing many requests at once (not the CLI's one at a time): each reserves its
    worst case while in flight, so those that would not fit wait, and are refused once spent."""
    per_request = 100_000 * INPUT / MTOK + 5 * OUTPUT / MTOK
    upstream.api.default = usage_reply({"input_tokens": 100_000}, {"output_tokens": 5})
    # A body as large as the input it is charged for (a token is at least one byte).
    body = request_body(stream=stream, max_tokens=16)
    body["messages"] = [{"role": "user", "content": "x" * 100_000}]
    budget = Decimal("0.5")
    with ProxyServer(upstream.base_url, budget) as gateway:
        with ThreadPoolExecutor(6) as pool:
            statuses = sorted(pool.map(lambda _: post(gateway, body)[0], range(6)))
        report = gateway.wait_for(lambda r: r.refused == 4)
    assert statuses == [200, 200, 429, 429, 429, 429]
    assert report.spent_usd == 2 * per_request
    assert report.spent_usd - per_request < budget <= report.spent_usd
    assert report.in_flight_usd == 0


def test_count_tokens_is_forwarded_unmetered_even_when_spent(
    upstream: ScriptedUpstream,
) -> None:
    with ProxyServer(upstream.base_url, Decimal(0)) as gateway:
        path = "/v1/messages/count_tokens?beta=true"
        status, _, body = post(gateway, request_body(stream=False), path=path)
        assert status == 200
        assert json.loads(body) == {"input_tokens": 10}
        status, _, _ = post(gateway, request_body(), path=path, token="wrong")
        assert status == 401
        report = gateway.report()
    assert upstream.count_tokens_calls == 1
    assert upstream.credentials == [(path, REAL_KEY, None)]
    assert (report.requests, report.refused, report.spent_usd) == (0, 0, Decimal(0))


def test_upstream_errors_pass_through_and_cost_nothing(
    upstream: ScriptedUpstream, gateway: ProxyServer
) -> None:
    upstream.api.script(sa.http_error(529), sa.http_error(400))
    status, headers, body = post(gateway, request_body())
    assert status == 529
    assert headers["retry-after"] == "0"
    assert json.loads(body)["error"]["type"] == "overloaded_error"
    status, _, body = post(gateway, request_body())
    assert status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    report = gateway.wait_for(lambda r: r.requests == 2)
    assert report.spent_usd == 0
    assert report.models == {}


def test_non_streaming_reply_is_metered_at_its_model(
    upstream: ScriptedUpstream, gateway: ProxyServer
) -> None:
    upstream.api.script(
        usage_reply(
            {"input_tokens": 2000, "cache_read_input_tokens": 1000},
            {"output_tokens": 100},
            response_model="claude-haiku-4-5-20251001",
        )
    )
    status, headers, body = post(gateway, request_body(stream=False))
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["usage"]["output_tokens"] == 100
    report = gateway.wait_for(lambda r: r.requests == 1)
    # Haiku 4.5: 1 USD input, 0.1 cache read, 5 output per MTok; the reply's model, not the ask.
    assert report.spent_usd == (2000 * 1 + 1000 * Decimal("0.1") + 100 * 5) / MTOK
    assert list(report.models) == ["claude-haiku-4-5-20251001"]


def test_stream_cut_before_message_start_is_bounded_by_the_request(
    upstream: ScriptedUpstream, gateway: ProxyServer
) -> None:
    upstream.api.script(MeteredReply(blocks=sa.text("never seen").blocks, cut="before_start"))
    body = request_body(max_tokens=1000)
    with pytest.raises(http.client.IncompleteRead):
        post(gateway, body)
    report = gateway.wait_for(lambda r: r.requests == 1)
    body_bytes = len(json.dumps(body).encode())
    # Body bytes + 4,096 tokens of overhead, at the one-hour cache-write rate; max_tokens out.
    expected = ((body_bytes + 4096) * CACHE_1H + 1000 * OUTPUT) / MTOK
    assert report.fail_closed_usd == report.spent_usd == expected


def test_client_gone_mid_stream_is_charged_the_bound(
    upstream: ScriptedUpstream, gateway: ProxyServer
) -> None:
    upstream.api.script(
        MeteredReply(
            blocks=sa.text(" ".join(["slow"] * 200)).blocks,
            start_usage={"input_tokens": 5000, "output_tokens": 1},
            chunk_delay_s=0.05,
        )
    )
    raw = json.dumps(request_body(max_tokens=300)).encode()
    port = int(gateway.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(
            b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\n"
            + f"x-api-key: {POD_TOKEN}\r\ncontent-type: application/json\r\n".encode()
            + f"content-length: {len(raw)}\r\n\r\n".encode()
            + raw
        )
        received = b""
        while b"message_start" not in received:
            chunk = client.recv(65536)
            assert chunk, "the proxy closed before message_start"
            received += chunk
    report = gateway.wait_for(lambda r: r.requests == 1)
    assert report.fail_closed_usd == report.spent_usd == (5000 * INPUT + 300 * OUTPUT) / MTOK


def test_unreachable_upstream_is_a_502_that_costs_nothing() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with ProxyServer(f"http://127.0.0.1:{closed_port}") as gateway:
        status, _, body = post(gateway, request_body())
        report = gateway.report()
    assert status == 502
    assert json.loads(body)["error"]["type"] == "api_error"
    assert (report.requests, report.spent_usd) == (0, Decimal(0))
