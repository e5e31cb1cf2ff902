"""The runner with an S3 store (moto over HTTP), as in a pod: through its session gateway, which
alone holds the API key and the S3 credentials, and reaches S3 through a proxy tests can switch
off.

Covers what only a real network store can show: an unreachable store at start, and an outage in
the middle of a run after which the runner still leaves the store holding every transcript line.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentsession_gateway.s3 import open_store
from tests.support import scripted_api as sa
from tests.support.gateway_process import GatewayProcess
from tests.support.runner_harness import (
    TEST_API_KEY,
    base_config,
    mirrored,
    run_agent_runner,
    tapped_transcript_lines,
)
from tests.support.s3server import MotoServer, S3Bucket
from tests.support.tcp_proxy import ToggleProxy

pytestmark = [pytest.mark.cli, pytest.mark.s3]


@pytest.fixture
def api() -> Iterator[sa.ScriptedAPI]:
    with sa.ScriptedAPI(required_key=TEST_API_KEY) as server:
        yield server


@pytest.fixture
def proxy(s3_server: MotoServer) -> Iterator[ToggleProxy]:
    toggle = ToggleProxy(s3_server.host, s3_server.port)
    yield toggle
    toggle.close()


def gateway_aws_env(s3_server: MotoServer, proxy: ToggleProxy) -> dict[str, str]:
    env = s3_server.env()
    env["AWS_ENDPOINT_URL"] = proxy.url
    return env


def run_through_gateway(
    config: dict[str, Any],
    api: sa.ScriptedAPI,
    s3_server: MotoServer,
    proxy: ToggleProxy,
    tmp_path: Path,
    **kwargs: Any,
) -> tuple[Any, GatewayProcess]:
    """One attempt: the gateway with the credentials, the runner with only the gateway's dir."""
    config = {**config, "sessionId": str(uuid.uuid4())}
    gateway = GatewayProcess(
        config,
        tmp_path / "gateway",
        upstream_url=api.base_url,
        env=gateway_aws_env(s3_server, proxy),
    )
    with gateway:
        result = run_agent_runner(
            config, workdir=tmp_path / "run", base_url=None, env=gateway.agent_env(), **kwargs
        )
    return result, gateway


def stored_lines(bucket: S3Bucket, session_id: str) -> list[dict[str, Any]]:
    store = open_store(bucket.url("agents"), "team-a")
    entries = asyncio.run(store.load({"project_key": "sessions", "session_id": session_id}))
    return [dict(e) for e in entries or []]


def test_session_persists_to_s3_without_leaking_secrets(
    api: sa.ScriptedAPI,
    s3_server: MotoServer,
    s3_bucket: S3Bucket,
    proxy: ToggleProxy,
    tmp_path: Path,
) -> None:
    api.script(sa.text("Stored in S3."))
    result, gateway = run_through_gateway(
        base_config(s3_bucket.url("agents"), tmp_path / "ws"), api, s3_server, proxy, tmp_path
    )
    assert result.exit_code == 0, result.stdout
    assert result.summary is not None
    session_id = result.summary["sessionId"]
    prefix = f"s3://{s3_bucket.name}/agents/team-a/sessions/{session_id}/"
    assert result.summary["transcriptRef"] == prefix
    assert result.summary["resultRef"] == prefix + "result.json"
    assert "Stored in S3." in json.dumps(stored_lines(s3_bucket, session_id))
    # No credential anywhere: logs, summary, object keys or object bodies.
    client = s3_server.client()
    objects = client.list_objects_v2(Bucket=s3_bucket.name)["Contents"]
    bodies = [
        client.get_object(Bucket=s3_bucket.name, Key=o["Key"])["Body"].read() for o in objects
    ]
    client.close()
    assert api.unauthorized == []  # every request carried the real key, added by the gateway
    for secret in (TEST_API_KEY, "testing-secret-never-printed"):
        assert secret not in result.stdout + result.stderr
        assert secret not in gateway.logs()
        assert secret not in json.dumps(result.summary)
        assert all(secret not in o["Key"] for o in objects)
        assert all(secret.encode() not in body for body in bodies)


def test_store_unreachable_at_start_is_retryable(
    api: sa.ScriptedAPI,
    s3_server: MotoServer,
    s3_bucket: S3Bucket,
    proxy: ToggleProxy,
    tmp_path: Path,
) -> None:
    proxy.down()
    result, _ = run_through_gateway(
        base_config(s3_bucket.url("agents"), tmp_path / "ws"), api, s3_server, proxy, tmp_path
    )
    assert result.exit_code == 4, result.stdout
    assert result.summary is not None
    assert result.summary["reason"] == "ExecutionError"
    assert "store" in result.summary["message"]
    assert api.model_requests() == [], "no model call may be made without a working store"


def test_store_outage_mid_run_still_leaves_a_complete_transcript(
    api: sa.ScriptedAPI,
    s3_server: MotoServer,
    s3_bucket: S3Bucket,
    proxy: ToggleProxy,
    tmp_path: Path,
) -> None:
    api.script(sa.bash("echo one"), sa.bash("echo two"), sa.text("Finished despite the outage."))

    def cut_store_on_last_model_call(request: sa.RecordedRequest) -> None:
        if len(api.model_requests()) == 3:
            proxy.down()

    def restore_when_runner_retries(record: dict[str, Any]) -> None:
        # The runner's own reconciliation is retrying: by now the mirror has given up on lines.
        if record.get("event") == "store_retry" and record.get("action") == "reconcile":
            proxy.up()

    api.on_request = cut_store_on_last_model_call
    result, _ = run_through_gateway(
        base_config(s3_bucket.url("agents"), tmp_path / "ws", allowedTools=["Bash"]),
        api,
        s3_server,
        proxy,
        tmp_path,
        on_log=restore_when_runner_retries,
    )
    assert result.exit_code == 0, result.stdout
    assert result.summary is not None
    assert result.summary["reason"] == "Completed"
    assert proxy.refused > 0, "the outage must really have refused connections"
    # The mirror gave up on at least one write during the outage...
    assert result.logs_of("mirror_failed"), result.stdout
    # ...and the runner uploaded what was missing: the store holds every local line.
    reconciled = result.logs_of("reconciled_missing_lines")
    assert reconciled
    assert sum(reconciled[0]["uploaded"].values()) > 0
    local = next(iter(tapped_transcript_lines(result.state_dir).values()))
    stored = stored_lines(s3_bucket, result.summary["sessionId"])
    assert stored == mirrored(local)
    assert "Finished despite the outage." in json.dumps(stored)
