"""Proves the gateway adds MCP headersFrom Secrets the agent never holds (`make test`, cli)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer

from agentsession_contract.gateway import ENDPOINT_FILE, MCP_PATH, TOKEN_HEADER
from agentsession_contract.run import mcp_header_env
from tests.support import scripted_api as sa
from tests.support.cluster import wait_for
from tests.support.gateway_process import GatewayProcess
from tests.support.runner_harness import TEST_API_KEY, base_config, run_agent_runner

pytestmark = pytest.mark.cli

SERVER = "marker"
HEADER = "Authorization"
SECRET = "mcp-secret-4f1c9a7e-only-the-gateway-holds-this"
HEADER_VALUE = f"Bearer {SECRET}"
MARKER = "whoami-says-7d2e5b"
TOOL = f"mcp__{SERVER}__whoami"
Transport = Literal["http", "sse"]
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}


@dataclass
class SeenRequest:
    """One HTTP request that reached the MCP server (refused or not)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)


class GuardedMcpServer:
    """An MCP server (mcp's MCPServer, one `whoami` tool) on loopback behind an ASGI check that
    answers 401 to any request without `HEADER: HEADER_VALUE`; records every request."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.seen: list[SeenRequest] = []
        self._lock = threading.Lock()
        mcp = MCPServer("marker", log_level="WARNING")

        @mcp.tool()
        def whoami() -> str:
            """Say which server this is."""
            return MARKER

        inner = mcp.streamable_http_app() if transport == "http" else mcp.sse_app()

        async def guarded(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)  # lifespan: starts the session manager
                return
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            seen = SeenRequest(scope["method"], scope["path"], headers)
            with self._lock:
                self.seen.append(seen)
            if headers.get(HEADER.lower()) != HEADER_VALUE:
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"missing credential"})
                return

            async def recording_receive() -> Any:
                message = await receive()
                seen.body.extend(message.get("body", b""))
                return message

            await inner(scope, recording_receive, send)

        config = uvicorn.Config(
            guarded,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()))

    def __enter__(self) -> GuardedMcpServer:
        self._thread.start()
        wait_for(lambda: self._server.started, timeout=20, what="the MCP server", interval=0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=20)

    @property
    def port(self) -> int:
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    @property
    def path(self) -> str:
        """Where the transport listens: the streamable HTTP endpoint or the SSE stream."""
        return "/mcp" if self.transport == "http" else "/sse"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self.seen)


@pytest.fixture
def api() -> Iterator[sa.ScriptedAPI]:
    with sa.ScriptedAPI(required_key=TEST_API_KEY) as server:
        yield server


def mcp_config(tmp_path: Path, server_url: str, transport: Transport, **overrides: Any) -> Any:
    """A run config with one MCP server whose Authorization header comes from a Secret."""
    return base_config(
        (tmp_path / "store").as_uri(),
        tmp_path / "ws",
        sessionId=str(uuid.uuid4()),
        mcpServers={
            SERVER: {
                "type": transport,
                "url": server_url,
                "headersFrom": {HEADER: {"name": "marker-mcp", "key": "token"}},
            }
        },
        **overrides,
    )


def secret_env() -> dict[str, str]:
    """What the operator injects into the gateway container only (a secretKeyRef env var)."""
    return {mcp_header_env(SERVER, HEADER): HEADER_VALUE}


def process_tree(root: int) -> dict[int, tuple[list[str], bytes]]:
    """argv and raw environment of `root` and every descendant (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, ppid in parents.items() if ppid == pid and p not in tree]
        tree.update(children)
        frontier.extend(children)
    found = {}
    for pid in tree:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        found[pid] = ([a.decode(errors="replace") for a in argv if a], environ)
    return found


def cli_mcp_config(tree: dict[int, tuple[list[str], bytes]]) -> dict[str, Any]:
    """The `--mcp-config` the SDK passed to the claude CLI."""
    for argv, _ in tree.values():
        if "--mcp-config" in argv:
            config: dict[str, Any] = json.loads(argv[argv.index("--mcp-config") + 1])
            return config
    raise AssertionError(f"no CLI with --mcp-config among {[a[:3] for a, _ in tree.values()]}")


def gateway_post(
    gateway: GatewayProcess, path: str, body: dict[str, Any], token: str | None
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.endpoint.port, timeout=30)
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    if token is not None:
        headers[TOKEN_HEADER] = token
    try:
        connection.request("POST", path, json.dumps(body), headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_cli_calls_the_mcp_tool_through_the_gateway_without_holding_the_secret(
    api: sa.ScriptedAPI, tmp_path: Path, transport: Transport
) -> None:
    api.script(sa.tool_use(TOOL, {}), sa.text("The server said who it is."))
    with GuardedMcpServer(transport) as server:
        config = mcp_config(tmp_path, server.url, transport, allowedTools=[TOOL])
        gateway = GatewayProcess(
            config, tmp_path / "gateway", upstream_url=api.base_url, env=secret_env()
        )
        runner_pid: list[int] = []
        trees: list[dict[int, tuple[list[str], bytes]]] = []

        def snapshot(request: sa.RecordedRequest) -> None:
            # The CLI is waiting for this answer: its process tree is alive and complete.
            if request.path.split("?")[0] == "/v1/messages" and not trees:
                trees.append(process_tree(runner_pid[0]))

        api.on_request = snapshot
        with gateway:
            agent_env = gateway.agent_env()
            endpoint = gateway.endpoint
            result = run_agent_runner(
                config,
                workdir=tmp_path / "run",
                base_url=None,
                env=agent_env,
                on_start=lambda process: runner_pid.append(process.pid),
            )
            # The CLI may leave an MCP stream open and the server says nothing for 15 s (its
            # keep-alive): the gateway still stops at once on SIGTERM, as the pod's end needs.
            stopped = gateway.stop(timeout=5)
        seen = server.requests()
        assert stopped == 0, gateway.logs()[-3000:]

    assert result.exit_code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.summary is not None
    assert result.summary["reason"] == "Completed", result.summary
    # The tool ran on the real server: its answer is in what the model was sent next.
    requests = api.model_requests()
    assert len(requests) == 2
    assert MARKER in requests[1].text_content()
    assert MARKER not in requests[0].text_content()
    # Every request the server got carried the Secret's value (the gateway added it) and none
    # carried the pod token (the gateway keeps it to itself).
    assert seen
    assert [r.headers.get(HEADER.lower()) for r in seen] == [HEADER_VALUE] * len(seen)
    assert all(TOKEN_HEADER not in r.headers for r in seen)
    # Over SSE the server's `endpoint` event was rewritten: the CLI's POSTs came back through
    # the gateway too (they carry the header), to the message path the server announced.
    expected = (
        {("POST", "/mcp")} if transport == "http" else {("GET", "/sse"), ("POST", "/messages/")}
    )
    assert {(r.method, r.path) for r in seen} >= expected
    assert {r.path for r in seen} == {path for _, path in expected}
    bodies = b"".join(bytes(r.body) for r in seen)
    assert b'"tools/call"' in bodies
    assert b'"whoami"' in bodies
    # The CLI was pointed at the gateway, with the pod token, not at the server.
    assert len(trees) == 1
    (tree,) = trees
    assert cli_mcp_config(tree)["mcpServers"] == {
        SERVER: {
            "type": transport,
            "url": f"http://127.0.0.1:{endpoint.port}{MCP_PATH}{SERVER}{server.path}",
            "headers": {TOKEN_HEADER: endpoint.token},
        }
    }
    # The Secret's value is nowhere in the agent's side: its environment (the runner's, the
    # CLI's and any child's, argv included), its output, its summary, or any file it wrote.
    assert agent_env == {"AGENTSESSION_GATEWAY_DIR": str(gateway.shared_dir)}
    assert len(tree) >= 2  # the runner and at least the CLI
    for argv, environ in tree.values():
        assert SECRET not in " ".join(argv)
        assert SECRET.encode() not in environ
    assert SECRET not in result.stdout + result.stderr + json.dumps(result.summary)
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    written += [p for p in (tmp_path / "ws").rglob("*") if p.is_file()]
    assert written
    assert [p for p in written if SECRET.encode() in p.read_bytes()] == []
    # Nor did the gateway log it.
    assert SECRET not in gateway.logs()


def test_gateway_without_the_secret_header_refuses_to_start(
    api: sa.ScriptedAPI, tmp_path: Path
) -> None:
    with GuardedMcpServer("http") as server:
        config = mcp_config(tmp_path, server.url, "http")
        # The variable of another server's header does not count: it is keyed by both names.
        gateway = GatewayProcess(
            config,
            tmp_path / "gateway",
            upstream_url=api.base_url,
            env={mcp_header_env("other", HEADER): HEADER_VALUE},
        )
        gateway.start(wait=False)
        try:
            assert gateway.process is not None
            assert gateway.process.wait(timeout=30) == 3, gateway.logs()
        finally:
            gateway.stop()
        seen = server.requests()
    lines = [json.loads(line) for line in gateway.logs().splitlines() if line.startswith("{")]
    refusals = [line for line in lines if line["message"] == "Gateway cannot start"]
    assert [line["error"] for line in refusals] == [
        f"the gateway lacks mcpServers.{SERVER}.headersFrom.{HEADER}"
    ]
    assert "Traceback" not in gateway.logs()
    assert not (gateway.shared_dir / ENDPOINT_FILE).exists()
    assert seen == []


def test_mcp_proxy_refuses_requests_without_the_pod_token(
    api: sa.ScriptedAPI, tmp_path: Path
) -> None:
    with GuardedMcpServer("http") as server:
        config = mcp_config(tmp_path, server.url, "http")
        path = f"{MCP_PATH}{SERVER}/mcp"
        with GatewayProcess(
            config, tmp_path / "gateway", upstream_url=api.base_url, env=secret_env()
        ) as gateway:
            token = gateway.endpoint.token
            missing = gateway_post(gateway, path, INITIALIZE, token=None)
            wrong = gateway_post(gateway, path, INITIALIZE, token=token[:-1] + "x")
            refused = server.requests()
            unknown = gateway_post(gateway, f"{MCP_PATH}nope/mcp", INITIALIZE, token=token)
            allowed = gateway_post(gateway, path, INITIALIZE, token=token)
        seen = server.requests()

    for status, body in (missing, wrong):
        assert status == 401
        assert json.loads(body) == {"error": "missing or wrong gateway token"}
    assert refused == []  # neither reached the server
    assert unknown[0] == 404
    # With the token the same request goes through, with the Secret's header and not the token.
    assert allowed[0] == 200, allowed
    assert b'"serverInfo"' in allowed[1]
    assert len(seen) == 1
    assert seen[0].path == "/mcp"
    assert seen[0].headers[HEADER.lower()] == HEADER_VALUE
    assert TOKEN_HEADER not in seen[0].headers
    assert SECRET not in gateway.logs()
