"""`agentsession-gateway`: the session gateway process, a native sidecar in every runner pod.

Started by the kubelet before the agent's container (the operator's pod spec), it reads the run
config the operator projected into the pod, listens on an ephemeral loopback port, writes its
endpoint (port and a fresh per-pod token) into the volume it shares read-only with the agent, and
serves the Messages API proxy (metered, capped: agentsession_gateway.proxy), the transcript store
(agentsession_gateway.store_service) and the MCP proxy. After every metered request it saves its
report (agentsession_contract.gateway.GatewayReport) to its private state volume (a restarted
gateway continues from it, on the same port and token), to its termination message file and to
the store, where the operator finds it even if the pod is lost with its node. On SIGTERM (the
agent has ended, or the pod is being deleted) it writes the final report and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from agentsession_contract import logs as json_logs
from agentsession_contract.gateway import (
    CONFIG_DIR,
    CONFIG_FILE,
    ENDPOINT_FILE,
    REPORT_DIR,
    SHARED_DIR,
    GatewayEnd,
    GatewayEndpoint,
    GatewayReport,
)
from agentsession_contract.process import exit_now
from agentsession_contract.run import RunConfig, decode_run_config, mcp_header_env
from agentsession_contract.store.backend import Backend
from agentsession_contract.store.keys import (
    LOGICAL_PROJECT,
    S3Location,
    parse_store_url,
    store_scope,
)
from agentsession_gateway.mcp import McpProxy, McpRoute
from agentsession_gateway.metering import Meter
from agentsession_gateway.outputs import Outputs, WorkspaceService
from agentsession_gateway.proxy import MessagesProxy
from agentsession_gateway.store_service import StoreGrant, StoreService

log = logging.getLogger("agentsession_gateway")

DEFAULT_UPSTREAM = "https://api.anthropic.com"
DEFAULT_STATE_DIR = "/var/lib/agentsession-gateway"
DEFAULT_REPORT_FILE = "/dev/termination-log"
STATE_FILE = "state.json"
MAX_BODY_BYTES = 64 * 1024 * 1024
"""Request bodies the gateway accepts: long conversations and transcript parts, with room."""


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway's environment (set by the operator's pod spec)."""

    config_file: Path
    shared_dir: Path
    state_dir: Path
    report_file: Path
    attempt_id: str
    upstream_url: str
    upstream_headers: dict[str, str]

    @classmethod
    def from_env(cls, environ: dict[str, str], config_file: str | None) -> GatewaySettings:
        key = environ.get("ANTHROPIC_API_KEY")
        token = environ.get("ANTHROPIC_AUTH_TOKEN")
        if key:
            headers = {"x-api-key": key}
        elif token:
            headers = {"authorization": f"Bearer {token}"}
        else:
            raise ValueError("set ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN for the gateway")
        return cls(
            config_file=Path(config_file or Path(CONFIG_DIR) / CONFIG_FILE),
            shared_dir=Path(environ.get("AGENTSESSION_GATEWAY_DIR", SHARED_DIR)),
            state_dir=Path(environ.get("AGENTSESSION_GATEWAY_STATE_DIR", DEFAULT_STATE_DIR)),
            report_file=Path(environ.get("AGENTSESSION_GATEWAY_REPORT_FILE", DEFAULT_REPORT_FILE)),
            attempt_id=environ.get("AGENTSESSION_ATTEMPT_ID", "local"),
            upstream_url=environ.get("AGENTSESSION_UPSTREAM_URL") or DEFAULT_UPSTREAM,
            upstream_headers=headers,
        )


def open_backend(config: RunConfig) -> Backend:
    """The store's Backend for the session's namespace: S3 (credentials from boto3's standard
    environment) or, for local runs, a directory."""
    # Everything of the session lies below its namespace's scope, UID included: keys the agent
    # sends are relative to it and may not climb out (segments are checked before any I/O).
    scope = store_scope(config.namespace, config.namespace_uid)
    location = parse_store_url(config.store)
    if isinstance(location, S3Location):
        from agentsession_gateway.s3 import S3Backend, make_s3_client

        client = make_s3_client(max_pool_connections=16)
        return S3Backend(location.bucket, f"{location.prefix}{scope}", client)
    from agentsession_contract.store.filesystem import FilesystemBackend

    return FilesystemBackend(Path(location.path) / scope)


def _write_atomically(path: Path, data: str, mode: int = 0o640) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(data)
    tmp.chmod(mode)
    tmp.replace(path)


class _RewrittenFile:
    """A small JSON file rewritten in place by one `pwrite`, the text padded with spaces to the
    previous length (JSON ignores them): a process killed at any point leaves one whole
    version, for a syscall instead of a create and a rename (~0.2 ms each on a pod's volume;
    the state is saved before every Messages API request goes upstream)."""

    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        self.mode = mode
        self._fd: int | None = None
        self._length = 0

    def write(self, text: str) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, self.mode)
            self._length = os.fstat(self._fd).st_size
        data = text.encode().ljust(self._length)
        os.pwrite(self._fd, data, 0)
        self._length = len(data)


class Gateway:
    """One attempt's gateway: state, reports, the HTTP app."""

    def __init__(self, config: RunConfig, settings: GatewaySettings, backend: Backend) -> None:
        if config.session_id is None:
            raise ValueError("the run config names no sessionId")
        self.config = config
        self.settings = settings
        self.backend = backend
        self.session_id = config.session_id
        state = self._load_state()
        self._state_file = _RewrittenFile(settings.state_dir / STATE_FILE, 0o600)
        self._report_file = _RewrittenFile(settings.report_file, 0o644)
        self.port = int(state.get("port", 0))
        self.token = str(state.get("token") or secrets.token_urlsafe(32))
        previous = state.get("report")
        restored = GatewayReport.model_validate(previous) if previous else None
        self.meter = (
            Meter.restore(restored) if restored else Meter(budget=_decimal(config.max_budget_usd))
        )
        self.outputs = Outputs(config.outputs, restored.outputs if restored else None)
        self.store = StoreService(
            backend,
            StoreGrant.for_session(
                LOGICAL_PROJECT,
                self.session_id,
                config.resume_session_id,
                frozenset(s.from_session_id for s in config.sources if s.from_session_id),
            ),
            self.token,
            self.outputs if config.outputs else None,
        )
        self.workspace = WorkspaceService(config, self.outputs, self.token, os.environ)
        self.messages = MessagesProxy(
            self.meter,
            settings.upstream_url,
            settings.upstream_headers,
            self.token,
            on_charge=self.persist,
            on_reserve=self.save_state,
        )
        self.mcp = McpProxy(self._mcp_routes(), self.token)
        self._upload: asyncio.Task[None] | None = None
        self._upload_again = False

    # ---- state and reports -----------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads((self.settings.state_dir / STATE_FILE).read_text())
            return loaded
        except (OSError, ValueError):
            return {}

    def report(self, ended: GatewayEnd = "running") -> GatewayReport:
        report = self.meter.report(ended)
        outputs = self.outputs.report()
        return report if outputs is None else report.model_copy(update={"outputs": outputs})

    @property
    def report_key(self) -> str:
        """Where in the store the report is kept (the agent's grant cannot write there)."""
        return f"{LOGICAL_PROJECT}/{self.session_id}/{REPORT_DIR}/{self.settings.attempt_id}.json"

    async def persist(self, ended: GatewayEnd = "running", *, upload: bool = True) -> None:
        """Save the report: state file (restarts), termination message (the pod's status), and
        the store (a lost pod), the last in the background, latest wins (`flush_upload` writes
        the final one itself, so stopping passes `upload=False`)."""
        self.save_state(ended)
        if upload:
            self._schedule_upload()

    def save_state(self, ended: GatewayEnd = "running") -> None:
        """The report to the state file and the termination message, synchronously (page-cache
        writes: a killed process loses nothing written, so no fsync)."""
        report = self.report(ended)
        state = {"port": self.port, "token": self.token, "report": report.to_wire()}
        self._state_file.write(json.dumps(state))
        with contextlib.suppress(OSError):
            self._report_file.write(report.to_termination_message())

    def _schedule_upload(self) -> None:
        if self._upload is not None and not self._upload.done():
            self._upload_again = True
            return
        self._upload = asyncio.get_running_loop().create_task(self._upload_report())

    async def _upload_report(self) -> None:
        while True:
            self._upload_again = False
            body = json.dumps(self.report().to_wire()).encode()
            try:
                await asyncio.to_thread(self.backend.write, self.report_key, body)
            except Exception as exc:  # the store is best effort here: the pod status is first
                log.warning("Saving the report to the store failed", extra={"error": str(exc)})
            if not self._upload_again:
                return

    async def flush_upload(self, ended: GatewayEnd) -> None:
        if self._upload is not None:
            await self._upload
        body = json.dumps(self.report(ended).to_wire()).encode()
        try:
            await asyncio.to_thread(self.backend.write, self.report_key, body)
        except Exception as exc:
            log.warning("Saving the final report to the store failed", extra={"error": str(exc)})

    # ---- serving ----------------------------------------------------------------------------

    def _mcp_routes(self) -> dict[str, McpRoute]:
        routes = {}
        for name, server in (self.config.mcp_servers or {}).items():
            if not server.headers_from:
                continue
            headers = {}
            for header in server.headers_from:
                value = os.environ.get(mcp_header_env(name, header))
                if value is None:
                    raise ValueError(f"the gateway lacks mcpServers.{name}.headersFrom.{header}")
                headers[header] = value
            routes[name] = McpRoute(url=server.url, headers=headers)
        return routes

    async def _report_handler(self, request: web.Request) -> web.Response:
        if not self.messages.authorized(request):
            return web.json_response({"error": "missing or wrong gateway token"}, status=401)
        return web.json_response(self.report().to_wire())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.add_routes(
            [
                *self.messages.routes(),
                *self.store.routes(),
                *self.workspace.routes(),
                *self.mcp.routes(),
                web.get("/v1/report", self._report_handler),
            ]
        )
        return app

    async def serve(self, stop: asyncio.Event) -> GatewayEnd:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        server = site._server  # aiohttp keeps the listening socket there
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        await self.persist()
        endpoint = GatewayEndpoint(port=self.port, token=self.token, store_uri=self.backend.uri(""))
        _write_atomically(
            self.settings.shared_dir / ENDPOINT_FILE, json.dumps(endpoint.to_wire()), 0o640
        )
        log.info(
            "Gateway listening",
            extra={
                "port": self.port,
                "budgetUsd": str(self.meter.budget),
                "session": self.config.session_name,
                "namespace": self.config.namespace,
            },
        )
        try:
            await stop.wait()
        finally:
            ended: GatewayEnd = "budget_exhausted" if self.meter.refused else "stopped"
            await self.persist(ended, upload=False)
            await self.flush_upload(ended)
            # MCP streams are long-lived (a server may send nothing for minutes): cut them first,
            # or the server's shutdown waits for them and the pod's end with it.
            await self.mcp.close()
            await runner.cleanup()
            await self.messages.close()
            await self.store.close()
        log.info("Gateway stopped", extra={"report": self.report(ended).to_wire()})
        return ended


def _decimal(value: float) -> Any:
    from decimal import Decimal

    return Decimal(str(value))


async def _run(config: RunConfig, settings: GatewaySettings) -> int:
    backend = open_backend(config)
    try:
        gateway = Gateway(config, settings, backend)
    except ValueError as exc:  # e.g. a headersFrom value missing from the environment
        backend.close()
        log.error("Gateway cannot start", extra={"error": str(exc)})
        return 3
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.serve(stop)
    finally:
        backend.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentsession-gateway", description=__doc__)
    parser.add_argument("--config", help=f"run config file (default {CONFIG_DIR}/{CONFIG_FILE})")
    args = parser.parse_args(argv)
    json_logs.configure()
    try:
        settings = GatewaySettings.from_env(dict(os.environ), args.config)
        config = RunConfig.model_validate(decode_run_config(settings.config_file.read_text()))
    except (OSError, ValueError) as exc:
        log.error("Gateway cannot start", extra={"error": str(exc)})
        return 3
    return asyncio.run(_run(config, settings))


def entry() -> None:
    """The `agentsession-gateway` console script: `main`, then exit without teardown."""
    exit_now(main())


if __name__ == "__main__":
    entry()
