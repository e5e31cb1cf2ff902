"""A session gateway process SIGKILLed while a Messages API request is in flight, then restarted
on the same state (as the kubelet restarts a native sidecar): the request is charged its
fail-closed bound, once, whatever restarts follow."""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from agentsession_gateway.metering import RequestFacts, request_bound
from tests.support import scripted_api as sa
from tests.support.cluster import wait_for
from tests.support.gateway_process import GatewayProcess
from tests.support.runner_harness import base_config
from tests.support.s3server import MotoServer, S3Bucket

pytestmark = [pytest.mark.s3]


@pytest.fixture
def api() -> Iterator[sa.ScriptedAPI]:
    with sa.ScriptedAPI() as server:
        yield server


def send(gateway: GatewayProcess, body: bytes, errors: list[BaseException]) -> None:
    """POST /v1/messages as the CLI does, reading the stream until it ends or is cut."""
    endpoint = gateway.endpoint
    connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=60)
    try:
        connection.request(
            "POST",
            "/v1/messages",
            body=body,
            headers={"x-api-key": endpoint.token, "content-type": "application/json"},
        )
        connection.getresponse().read()
    except (OSError, http.client.HTTPException) as exc:  # the gateway died under it: expected
        errors.append(exc)
    finally:
        connection.close()


def test_a_request_in_flight_when_the_gateway_dies_is_charged_its_bound_once(
    api: sa.ScriptedAPI, s3_server: MotoServer, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    tag = f"TASK-{uuid.uuid4().hex[:8]}"
    # Long enough that the kill lands mid-stream, before the usage of message_delta.
    api.route(tag, sa.slow_text(" ".join(["word"] * 200), chunk_delay_s=0.05))
    config = {
        **base_config(s3_bucket.url("agents"), tmp_path / "ws"),
        "sessionId": str(uuid.uuid4()),
    }
    gateway = GatewayProcess(
        config, tmp_path / "gateway", upstream_url=api.base_url, env=s3_server.env()
    )
    body = json.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 4096,
            "stream": True,
            "messages": [{"role": "user", "content": f"{tag}: say many words"}],
        }
    ).encode()
    bound = request_bound(RequestFacts.parse(body))
    assert bound > 0
    errors: list[BaseException] = []
    gateway.start()
    try:
        client = threading.Thread(target=send, args=(gateway, body, errors), daemon=True)
        client.start()
        wait_for(lambda: api.requests_for(tag), timeout=30, what="the request upstream")
        gateway.kill()
        client.join(timeout=30)
        assert errors, "the stream should have been cut by the kill"

        gateway.start()  # the sidecar's restart: same state directory
        report = gateway.report()
        assert Decimal(report["spentUsd"]) == bound
        assert Decimal(report["failClosedUsd"]) == bound
        assert Decimal(report.get("inFlightUsd", 0)) == 0
        assert report["requests"] == 0

        gateway.kill()  # and again, with nothing in flight: nothing is charged twice
        gateway.start()
        assert Decimal(gateway.report()["spentUsd"]) == bound
    finally:
        gateway.stop()
    assert len(api.requests_for(tag)) == 1
