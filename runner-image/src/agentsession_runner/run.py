"""One runner attempt: hydrate from the store, run `query()` under limits, persist, summarize.

Called by `agentsession_runner.cli`. Returns an exit code and a `RunSummary`; the CLI writes the
summary where the operator reads it (the pod's termination message).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import tempfile
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from claude_agent_sdk import (
    AgentDefinition as SdkAgentDefinition,
)
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKError,
    ResultMessage,
    SystemMessage,
    ToolUseBlock,
    query,
)
from claude_agent_sdk.types import McpServerConfig, SessionKey

from agentsession_contract.gateway import (
    MCP_PATH,
    TOKEN_HEADER,
    GatewayEndpoint,
)
from agentsession_contract.redaction import redact, redact_values
from agentsession_contract.run import (
    RESULT_PREVIEW_MAX_CHARS,
    ExitCode,
    McpServer,
    Reason,
    RunConfig,
    RunSummary,
    WorkspaceSummary,
    structured_output_fits,
)
from agentsession_contract.store import StoreError, TranscriptStore, open_store
from agentsession_contract.store.gateway_client import GatewayBackend, wait_for_endpoint
from agentsession_contract.workspace import snapshot as workspace_snapshot
from agentsession_runner.logs import JsonLogger
from agentsession_runner.outputs import OutputsResult, push_sources, upload_artifacts
from agentsession_runner.pinned_store import PinnedProjectStore
from agentsession_runner.transcripts import TranscriptTap, reconcile

# Environment the CLI must see for tenant isolation; RunConfig cannot override it.
ISOLATION_ENV = {
    "CLAUDE_CODE_DISABLE_AUTO_MEMORY": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}
PERSIST_ATTEMPTS = 6
PERSIST_BACKOFF_S = (0.5, 1, 2, 4, 8)
ERRORS_MAX_ITEMS = 10
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
GATEWAY_DIR_ENV = "AGENTSESSION_GATEWAY_DIR"
GATEWAY_WAIT_SECONDS = 60.0
WORKSPACE_CACHE_FILE = "workspace-cache.json"
"""In the state dir: what the last restore or snapshot saw of each file (the init step writes it
there too, in a pod: both mount the same /tmp volume)."""

T = TypeVar("T")


@dataclass
class RunOutcome:
    exit_code: ExitCode
    summary: RunSummary


@dataclass
class _Progress:
    """What the run loop has seen so far, for per-turn logs and the deadline summary."""

    session_id: str | None = None
    turns: int = 0
    seen_message_ids: set[str] = field(default_factory=set)


def reason_for_result(result: ResultMessage) -> Reason:
    """Map the SDK's result to our terminal reason (the operator's retry policy reads it)."""
    if result.subtype == "error_max_turns":
        return Reason.MAX_TURNS_REACHED
    if result.subtype == "error_max_budget_usd":
        return Reason.BUDGET_EXCEEDED
    # A request that got no HTTP answer at all (connection refused or reset: the gateway
    # restarting, a network error) has no status but is an API error all the same.
    if result.api_error_status is not None or result.terminal_reason == "api_error":
        return Reason.API_ERROR
    if result.is_error or result.subtype != "success":
        return Reason.EXECUTION_ERROR
    return Reason.COMPLETED


def bounded_structured_output(value: Any) -> Any:
    """The structured output if it is within STRUCTURED_OUTPUT_MAX_BYTES; the full value is in
    resultRef either way."""
    if value is None:
        return None
    return value if structured_output_fits(value) else None


def summary_from_result(result: ResultMessage, reason: Reason) -> RunSummary:
    preview = result.result
    if preview is not None and len(preview) > RESULT_PREVIEW_MAX_CHARS:
        preview = preview[: RESULT_PREVIEW_MAX_CHARS - 1] + "…"
    usage = {k: v for k, v in (result.usage or {}).items() if isinstance(v, int)}
    model_usage = {
        model: {k: v for k, v in dict(numbers).items() if isinstance(v, int | float)}
        for model, numbers in (result.model_usage or {}).items()
    }
    return RunSummary(
        reason=reason,
        session_id=result.session_id,
        subtype=result.subtype,
        is_error=result.is_error,
        num_turns=result.num_turns,
        total_cost_usd=result.total_cost_usd,
        duration_ms=result.duration_ms,
        api_error_status=result.api_error_status,
        stop_reason=result.stop_reason,
        terminal_reason=result.terminal_reason,
        usage=usage or None,
        model_usage=model_usage or None,
        result_preview=redact(preview) if preview is not None else None,
        structured_output=bounded_structured_output(redact_values(result.structured_output)),
        errors=[redact(e) for e in (result.errors or [])][:ERRORS_MAX_ITEMS] or None,
        permission_denials=len(result.permission_denials or []),
    )


@dataclass(frozen=True)
class ResumePlan:
    """How this attempt starts its conversation, decided against what the store holds."""

    resume: str | None = None
    fork: bool = False
    resume_at: str | None = None
    session_id: str | None = None
    retry: bool = False

    @classmethod
    def from_config(cls, config: RunConfig) -> ResumePlan:
        creates_session = config.resume_session_id is None or config.fork_session
        return cls(
            resume=config.resume_session_id,
            fork=config.fork_session,
            resume_at=config.resume_at,
            session_id=config.session_id if creates_session else None,
        )


def gateway_env(gateway: GatewayEndpoint | None) -> dict[str, str]:
    """The CLI's API endpoint and key: the gateway and its per-pod token when there is one (it
    holds the real key); otherwise whatever ANTHROPIC_* the runner itself was given."""
    if gateway is None:
        return {}
    return {
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{gateway.port}",
        "ANTHROPIC_API_KEY": gateway.token,
    }


def mcp_server_spec(
    name: str, server: McpServer, gateway: GatewayEndpoint | None
) -> dict[str, Any]:
    """The SDK's config for one MCP server: through the gateway when it needs Secret headers
    (the gateway adds them), straight to the server otherwise."""
    headers = dict(server.headers or {})
    url = server.url
    if server.headers_from:
        if gateway is None:
            raise ValueError(f"mcpServers.{name}.headersFrom needs the session gateway")
        parts = urlsplit(server.url)
        rest = urlunsplit(("", "", parts.path or "/", parts.query, ""))
        url = f"http://127.0.0.1:{gateway.port}{MCP_PATH}{name}{rest}"
        headers[TOKEN_HEADER] = gateway.token
    spec: dict[str, Any] = {"type": server.type, "url": url}
    if headers:
        spec["headers"] = headers
    return spec


def build_options(
    config: RunConfig,
    plan: ResumePlan,
    store: PinnedProjectStore,
    config_dir: Path,
    stderr: Callable[[str], None],
    gateway: GatewayEndpoint | None = None,
) -> ClaudeAgentOptions:
    """Translate the run config into SDK options (all isolation settings applied here)."""
    system_prompt: Any = config.system_prompt
    if config.system_prompt_preset is not None:
        system_prompt = {"type": "preset", "preset": config.system_prompt_preset.preset}
        if config.system_prompt_preset.append:
            system_prompt["append"] = config.system_prompt_preset.append
    agents = (
        {
            name: SdkAgentDefinition(
                description=a.description, prompt=a.prompt, tools=a.tools, model=a.model
            )
            for name, a in config.agents.items()
        }
        if config.agents
        else None
    )
    mcp_servers: dict[str, McpServerConfig] = {
        name: mcp_server_spec(name, server, gateway)  # type: ignore[misc]
        for name, server in (config.mcp_servers or {}).items()
    }
    output_format = (
        {"type": "json_schema", "schema": config.output_format.schema_}
        if config.output_format is not None
        else None
    )
    return ClaudeAgentOptions(
        cwd=config.workspace,
        env={"CLAUDE_CONFIG_DIR": str(config_dir), **gateway_env(gateway), **ISOLATION_ENV},
        setting_sources=[],
        session_store=store,
        # Eager: a runner killed mid-turn loses at most the lines in flight, not the whole query.
        session_store_flush="eager",
        resume=plan.resume,
        fork_session=plan.fork,
        resume_session_at=plan.resume_at,
        session_id=plan.session_id,
        max_turns=config.max_turns,
        max_budget_usd=config.max_budget_usd,
        model=config.model,
        fallback_model=config.fallback_model,
        system_prompt=system_prompt,
        allowed_tools=list(config.allowed_tools),
        disallowed_tools=list(config.disallowed_tools),
        permission_mode=config.permission_mode,
        agents=agents,
        mcp_servers=mcp_servers,
        output_format=output_format,
        stderr=stderr,
        # The SDK's 1 MiB default fails a session on one large message (a long answer or tool
        # output); a pod has memory for far more.
        max_buffer_size=MAX_MESSAGE_BYTES,
    )


async def _with_retries(action: Callable[[], Awaitable[T]], what: str, log: JsonLogger) -> T:
    """Run a store action with bounded backoff; the last failure propagates."""
    for attempt in range(PERSIST_ATTEMPTS):
        try:
            return await action()
        except StoreError as exc:
            if attempt == PERSIST_ATTEMPTS - 1:
                raise
            delay = PERSIST_BACKOFF_S[min(attempt, len(PERSIST_BACKOFF_S) - 1)]
            log.warning("store_retry", action=what, attempt=attempt + 1, error=str(exc))
            await asyncio.sleep(delay)  # backoff between store attempts, not synchronisation
    raise AssertionError("unreachable")


def log_phase(log: JsonLogger, phase: str, started: float, **fields: Any) -> float:
    """Log one `phase` event: how long `phase` took since `started` (time.monotonic()), in ms.
    Returns the time it ended, where the next phase starts."""
    ended = time.monotonic()
    log.info("phase", phase=phase, ms=round((ended - started) * 1000, 1), **fields)
    return ended


class _Run:
    """State of one attempt; `execute()` is the whole lifecycle."""

    def __init__(
        self,
        config: RunConfig,
        store: PinnedProjectStore,
        state_dir: Path,
        log: JsonLogger,
        gateway: GatewayEndpoint | None = None,
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.log = log
        self.progress = _Progress(session_id=config.session_id or config.resume_session_id)
        self.plan = ResumePlan.from_config(config)
        config_dir_env = os.environ.get("CLAUDE_CONFIG_DIR")
        self.config_dir = Path(config_dir_env) if config_dir_env else state_dir / "claude-config"
        self.sdk_temp_dir = state_dir / "sdk-tmp"
        self.tap = TranscriptTap(self.config_dir, self.sdk_temp_dir, state_dir / "tap")
        self.store = store
        self.workspace_cache = state_dir / WORKSPACE_CACHE_FILE
        self.own_stored = True
        """Whether the store may hold this session already (a retry); the preflight knows."""
        self.restored = False
        self.stop_signal: str | None = None
        self._query_scope: asyncio.Timeout | None = None

    def request_stop(self, signal_name: str) -> None:
        """SIGTERM (pod deleted, evicted, node drained): end the query now and persist what ran.

        The kubelet waits the pod's grace period before SIGKILL; dying at once on SIGTERM would
        lose the transcript lines the CLI had not mirrored yet, so the runner stops the CLI
        (which flushes its transcript), reconciles the store and exits retryable.
        """
        if self.stop_signal is not None:
            return
        self.stop_signal = signal_name
        self.log.warning("termination_requested", signal=signal_name, turns=self.progress.turns)
        if self._query_scope is not None and not self._query_scope.expired():
            self._query_scope.reschedule(asyncio.get_running_loop().time())

    def _cli_stderr(self, line: str) -> None:
        self.log.info("cli_stderr", line=line[:2000])

    def _observe(self, message: Any) -> None:
        self.tap.capture()
        if isinstance(message, SystemMessage) and message.subtype == "init":
            self.progress.session_id = message.data.get("session_id", self.progress.session_id)
            self.log.info(
                "session_started",
                sessionId=self.progress.session_id,
                model=message.data.get("model"),
                resumed=self.plan.resume,
                fork=self.plan.fork or None,
                retry=self.plan.retry or None,
            )
        elif isinstance(message, AssistantMessage):
            message_id = message.message_id or message.uuid or ""
            if (
                message.parent_tool_use_id is None
                and message_id not in self.progress.seen_message_ids
            ):
                self.progress.seen_message_ids.add(message_id)
                self.progress.turns += 1
            tools = [b.name for b in message.content if isinstance(b, ToolUseBlock)]
            self.log.info(
                "turn",
                turn=self.progress.turns,
                tools=tools or None,
                subagent=message.parent_tool_use_id is not None or None,
                error=message.error,
            )
        elif isinstance(message, ResultMessage):
            self.log.info(
                "result",
                subtype=message.subtype,
                isError=message.is_error,
                numTurns=message.num_turns,
                totalCostUsd=message.total_cost_usd,
                apiErrorStatus=message.api_error_status,
                terminalReason=message.terminal_reason,
            )
        elif isinstance(message, SystemMessage):
            self.log.info("system", subtype=message.subtype)
        else:
            self.log.info(type(message).__name__.removesuffix("Message").lower() or "message")

    async def _preflight(self) -> RunOutcome | None:
        """Fail fast and clearly: unreachable store (retryable) or a missing resume source.

        Also decides how the conversation starts: a session id the store already holds means an
        earlier attempt started it, so this attempt resumes it rather than starting again. The
        sessions it asks about are loaded, not only listed: the SDK's resume takes the loaded
        transcript (`PinnedProjectStore.preload`), so the check costs no extra round trip.
        """
        config = self.config
        own_id = config.session_id
        own_session = own_id if own_id is not None and own_id != config.resume_session_id else None
        source = config.resume_session_id
        try:
            # Both at once: a fork's first attempt needs both answers anyway.
            answers = await asyncio.gather(
                self._preload_with_retries(own_session, subkeys=False),
                self._preload_with_retries(source, subkeys=True),
                return_exceptions=True,
            )
            for answer in answers:
                if isinstance(answer, BaseException):
                    raise answer
            own_found, found = answers
            self.own_stored = bool(own_found) or own_session is None
            if own_found:
                if source is not None:
                    self.store.drop_preloaded(source)
                self.plan = ResumePlan(resume=own_session, retry=True)
                self.log.info("resuming_earlier_attempt", sessionId=own_session)
                return None
            self.plan = ResumePlan.from_config(config)
            if source is None:
                if own_session is None:
                    await _with_retries(self.store.check, "preflight", self.log)
                return None
        except StoreError as exc:
            return self._failure(ExitCode.RETRYABLE, Reason.EXECUTION_ERROR, f"store: {exc}")
        if not found:
            return self._failure(
                ExitCode.INVALID_CONFIG,
                Reason.INVALID_SPEC,
                f"session {config.resume_session_id} was not found in the store for "
                f"namespace {config.namespace}",
            )
        return None

    async def _preload_with_retries(self, session_id: str | None, *, subkeys: bool) -> bool:
        """Is the session in the store (None: no session to look for)? Loads it for the SDK's
        resume, which asks for it right after (with `subkeys`, its subagent list too)."""
        if session_id is None:
            return False
        return await _with_retries(
            lambda: self.store.preload(session_id, subkeys=subkeys), "preflight", self.log
        )

    def _failure(self, code: ExitCode, reason: Reason, message: str) -> RunOutcome:
        self.log.error("run_failed", reason=reason.value, message=message, exitCode=int(code))
        return RunOutcome(
            code,
            RunSummary(reason=reason, message=redact(message), session_id=self.progress.session_id),
        )

    async def _query(self) -> tuple[ResultMessage | None, bool]:
        """Run the query to its end; returns the result (if any) and whether it was cut short:
        the deadline passed, or a stop was requested (then `stop_signal` is set)."""
        options = build_options(
            self.config, self.plan, self.store, self.config_dir, self._cli_stderr, self.gateway
        )
        result: ResultMessage | None = None
        # Phases: SDK start (hydrating a resumed transcript, spawning the CLI) until the first
        # message, then the query until its result, then the CLI's exit and the SDK's last flush.
        started = time.monotonic()
        loaded_before = self.store.load_seconds
        first_message: float | None = None
        result_at: float | None = None
        # query() is an async generator; closing it is how the CLI subprocess gets stopped.
        stream = cast(AsyncGenerator[Any, None], query(prompt=self.config.prompt, options=options))
        try:
            async with asyncio.timeout(self.config.timeout_seconds) as scope:
                self._query_scope = scope
                if self.stop_signal is not None:
                    scope.reschedule(asyncio.get_running_loop().time())
                async for message in stream:
                    if first_message is None:
                        first_message = self._log_start_phases(started, loaded_before)
                    self._observe(message)
                    if isinstance(message, ResultMessage):
                        result = message
                        result_at = log_phase(self.log, "query", first_message)
                if result_at is not None:
                    log_phase(self.log, "cli_exit", result_at)
        except TimeoutError:
            await stream.aclose()  # stops the CLI; what it wrote locally is reconciled below
            return result, True
        except ClaudeSDKError:
            # After an error result the SDK raises; the result we already hold is the outcome.
            if result is None:
                raise
        finally:
            self._query_scope = None
        return result, False

    def _log_start_phases(self, started: float, loaded_before: float) -> float:
        """At the first message: log hydration (the SDK's store loads for a resume) and the rest
        of the start (SDK setup, CLI spawn and init); returns now."""
        now = time.monotonic()
        hydrate_s = self.store.load_seconds - loaded_before
        if self.plan.resume is not None:
            self.log.info("phase", phase="hydrate", ms=round(hydrate_s * 1000, 1))
        start_ms = round((now - started - hydrate_s) * 1000, 1)
        self.log.info("phase", phase="cli_start", ms=start_ms)
        return now

    async def execute(self) -> RunOutcome:
        started = time.monotonic()
        for directory in (self.config_dir, self.sdk_temp_dir, Path(self.config.workspace)):
            directory.mkdir(parents=True, exist_ok=True)
        # The SDK materializes resumed transcripts under tempfile's directory; keep it ours.
        tempfile.tempdir = str(self.sdk_temp_dir)

        failed = await self._preflight()
        started = log_phase(self.log, "preflight", started)
        if failed is not None:
            return failed
        failed = await self._restore_workspace()
        if failed is not None:
            return failed
        try:
            result, deadline_hit = await self._query()
        except (ClaudeSDKError, RuntimeError, OSError) as exc:
            self.tap.capture()
            if self.stop_signal is not None:
                return await self._stopped()
            outcome = self._failure(
                ExitCode.RETRYABLE,
                Reason.EXECUTION_ERROR,
                f"claude CLI ended before a result: {type(exc).__name__}: {exc}",
            )
            await self._persist_transcripts_best_effort()
            return await self._with_snapshot(outcome)
        self.tap.capture()
        if result is None and self.stop_signal is not None:
            return await self._stopped()

        if result is not None:
            summary = summary_from_result(result, reason_for_result(result))
        elif deadline_hit:
            summary = RunSummary(
                reason=Reason.DEADLINE_EXCEEDED,
                message=f"timeoutSeconds={self.config.timeout_seconds} elapsed before a result",
                session_id=self.progress.session_id,
                is_error=True,
                num_turns=self.progress.turns,
                duration_ms=int((time.monotonic() - started) * 1000),
            )
        else:
            await self._persist_transcripts_best_effort()
            return await self._with_snapshot(
                self._failure(
                    ExitCode.RETRYABLE, Reason.EXECUTION_ERROR, "the CLI ended without a result"
                )
            )

        try:
            summary = await self._persist(summary, result)
        except StoreError as exc:
            outcome = self._failure(
                ExitCode.RETRYABLE,
                Reason.EXECUTION_ERROR,
                f"the session ran but its transcript could not be persisted: {exc}",
            )
            return await self._with_snapshot(
                RunOutcome(
                    outcome.exit_code,
                    summary.model_copy(update={"message": outcome.summary.message}),
                )
            )
        finished = await self._with_snapshot(RunOutcome(ExitCode.OK, summary))
        summary = finished.summary
        await self._outputs()
        self.log.info(
            "run_finished",
            reason=summary.reason.value,
            resultRef=summary.result_ref,
            transcriptRef=summary.transcript_ref,
        )
        return RunOutcome(ExitCode.OK, summary)

    async def _stopped(self) -> RunOutcome:
        """The outcome of an attempt stopped by a signal before its result: retryable, saved."""
        await self._persist_transcripts_best_effort()
        outcome = self._failure(
            ExitCode.RETRYABLE,
            Reason.EXECUTION_ERROR,
            f"the runner was stopped by {self.stop_signal} after {self.progress.turns} turn(s), "
            "before a result; the transcript is saved, so a new attempt resumes the session",
        )
        return await self._with_snapshot(outcome)

    async def _restore_workspace(self) -> RunOutcome | None:
        """Before the agent starts: the session's last snapshot, else its resume source's (a
        follow-up session's first attempt). In a pod with sources the init step did it."""
        config = self.config
        if config.snapshot is None or config.sources:
            return None
        # A first attempt's own session has no snapshot yet: only its resume source may.
        candidates = [config.session_id] if self.own_stored else []
        candidates.append(config.resume_session_id)
        if not any(candidates):
            return None
        started = time.monotonic()
        root = Path(config.workspace)
        try:
            restored = await asyncio.to_thread(
                workspace_snapshot.restore_latest,
                root,
                self.store.inner.backend,
                candidates,
                cache_file=self.workspace_cache,
            )
        except (StoreError, workspace_snapshot.SnapshotError) as exc:
            return self._failure(
                ExitCode.RETRYABLE,
                Reason.EXECUTION_ERROR,
                f"the workspace snapshot could not be restored: {exc}",
            )
        if restored is not None:
            self.restored = True
            for warning in restored.warnings:
                self.log.warning("workspace_restore_warning", warning=warning)
            log_phase(
                self.log,
                "workspace_restore",
                started,
                files=restored.files,
                bytes=restored.bytes,
                manifest=restored.manifest_key,
            )
        return None

    async def _snapshot(self) -> WorkspaceSummary | None:
        """Snapshot the workspace into the session's area (never fails the attempt: a failure
        is reported in the summary and the previous snapshot stays)."""
        config = self.config
        session_id = self.progress.session_id or config.session_id
        if config.snapshot is None or session_id is None:
            return None
        root = Path(config.workspace)
        if not self.own_stored and not self.restored and not config.sources and _empty(root):
            return None  # nothing was ever in it, nothing to compare with: no store request
        started = time.monotonic()
        try:
            result = await asyncio.to_thread(
                workspace_snapshot.take_snapshot,
                Path(config.workspace),
                self.store.inner.backend,
                session_id,
                max_bytes=config.snapshot.max_bytes,
                exclude=list(config.snapshot.exclude),
                cache_file=self.workspace_cache,
            )
        except (StoreError, workspace_snapshot.SnapshotError, OSError) as exc:
            self.log.error("workspace_snapshot_failed", error=str(exc))
            return WorkspaceSummary(
                taken=False, message=redact(f"the workspace snapshot failed: {exc}")[:1024]
            )
        for warning in result.warnings:
            self.log.warning("workspace_snapshot_warning", warning=warning)
        log_phase(
            self.log,
            "workspace_snapshot",
            started,
            files=result.files,
            bytes=result.bytes,
            uploadedBytes=result.uploaded_bytes,
            taken=result.taken,
        )
        return WorkspaceSummary(
            taken=result.taken,
            files=result.files,
            bytes=result.bytes,
            uploaded_bytes=result.uploaded_bytes if result.taken else None,
            message=workspace_snapshot.summary_message([redact(w) for w in result.warnings]),
        )

    async def _outputs(self) -> None:
        """spec.outputs once the run has its outcome (after the snapshot, so a failed push
        loses nothing): artifacts, then git pushes. Never fails the attempt; the status comes
        from the gateway's report."""
        config = self.config
        session_id = self.progress.session_id or config.session_id
        if config.outputs is None or session_id is None:
            return
        started = time.monotonic()
        result = OutputsResult()
        backend = self.store.inner.backend
        root = Path(config.workspace)
        try:
            await asyncio.to_thread(
                upload_artifacts, root, backend, session_id, config.outputs, result
            )
        except (StoreError, OSError) as exc:
            result.warnings.append(f"artifacts: {exc}")
        if config.outputs.git:
            if isinstance(backend, GatewayBackend):
                await asyncio.to_thread(
                    push_sources, root, config, backend, self.workspace_cache.parent, result
                )
            else:
                result.warnings.append("git pushes need the session gateway (its credentials)")
        for warning in result.warnings:
            self.log.warning("outputs_warning", warning=redact(warning))
        log_phase(
            self.log, "outputs", started, artifacts=result.artifacts, pushes=result.pushes or None
        )

    async def _with_snapshot(self, outcome: RunOutcome) -> RunOutcome:
        summary = await self._snapshot()
        if summary is None:
            return outcome
        return RunOutcome(
            outcome.exit_code, outcome.summary.model_copy(update={"workspace": summary})
        )

    @property
    def _read_only_sessions(self) -> frozenset[str]:
        """Sessions whose transcripts the CLI may leave on disk but this attempt never writes:
        a fork's source (the CLI copies it into the new session; the gateway grants only reads)."""
        if self.plan.fork and self.plan.resume is not None:
            return frozenset({self.plan.resume})
        return frozenset()

    async def _reconcile(self) -> dict[str, int]:
        return await reconcile(self.store, self.tap, self._read_only_sessions)

    async def _persist_transcripts_best_effort(self) -> None:
        try:
            await _with_retries(self._reconcile, "reconcile", self.log)
        except StoreError as exc:
            self.log.error("reconcile_failed", error=str(exc))

    async def _persist(self, summary: RunSummary, result: ResultMessage | None) -> RunSummary:
        """Make the store complete, compact it, write the full result; return refs.

        The result document does not depend on the transcript, so it is written while the
        transcript is reconciled and compacted.
        """
        session_id = summary.session_id or self.progress.session_id
        if session_id is None:
            await self._persist_transcripts()
            return summary
        document = {
            "namespace": self.config.namespace,
            "sessionName": self.config.session_name,
            "summary": summary.to_wire(),
            "result": dataclasses.asdict(result) if result is not None else None,
        }
        payload = json.dumps(document, default=str, indent=2).encode()
        transcripts, result_ref = await asyncio.gather(
            self._persist_transcripts(),
            _with_retries(
                lambda: self.store.put_result(session_id, payload), "put_result", self.log
            ),
            return_exceptions=True,
        )
        if isinstance(transcripts, BaseException):
            raise transcripts
        if isinstance(result_ref, BaseException):
            raise result_ref
        # What the result write added after the transcript was done (usually nothing).
        log_phase(self.log, "result_write", transcripts)
        transcript_ref = self.store.uri({"project_key": "", "session_id": session_id})
        return summary.model_copy(
            update={
                "session_id": session_id,
                "result_ref": result_ref,
                "transcript_ref": transcript_ref,
            }
        )

    async def _persist_transcripts(self) -> float:
        """Reconcile, then compact, every transcript the attempt writes; returns when it ended
        (time.monotonic())."""
        started = time.monotonic()
        uploaded = await _with_retries(self._reconcile, "reconcile", self.log)
        if any(uploaded.values()):
            self.log.warning("reconciled_missing_lines", uploaded=uploaded)
        started = log_phase(self.log, "reconcile", started)
        read_only = self._read_only_sessions
        keys = [key for key, _ in self.tap.transcripts() if key["session_id"] not in read_only]
        for key in keys:
            await _with_retries(lambda key=key: self.store.compact(key), "compact", self.log)  # type: ignore[misc]
        return log_phase(self.log, "compact", started, transcripts=len(keys))


def _empty(directory: Path) -> bool:
    try:
        with os.scandir(directory) as entries:
            return next(entries, None) is None
    except OSError:
        return True


def find_gateway(
    environ: Mapping[str, str], timeout: float = GATEWAY_WAIT_SECONDS
) -> GatewayEndpoint | None:
    """The gateway's endpoint when the runner runs in a pod with one (AGENTSESSION_GATEWAY_DIR
    is set); waits for the file, which the gateway writes once it listens."""
    directory = environ.get(GATEWAY_DIR_ENV)
    if not directory:
        return None
    # A native sidecar is Started before this container runs: the file is normally there.
    return wait_for_endpoint(Path(directory), timeout)


def open_run_store(
    config: RunConfig, gateway: GatewayEndpoint | None, log: JsonLogger
) -> PinnedProjectStore:
    """The transcript store: through the gateway in a pod, else the file store of the config."""

    def mirror_failed(key: SessionKey, lines: int, error: Exception) -> None:
        # The reconcile after the query uploads these lines (the local transcript has them).
        label = key["session_id"] + ("/" + key["subpath"] if "subpath" in key else "")
        log.warning("mirror_failed", transcript=label, lines=lines, error=str(error))

    inner = (
        TranscriptStore(GatewayBackend(gateway))
        if gateway is not None
        else open_store(config.store, config.namespace, config.namespace_uid)
    )
    return PinnedProjectStore(inner, on_mirror_failure=mirror_failed)


async def run_session(config: RunConfig, state_dir: Path, log: JsonLogger) -> RunOutcome:
    """Run one attempt of `config`, keeping scratch state (config dir, tap) under `state_dir`."""
    started = time.monotonic()
    try:
        gateway = await asyncio.to_thread(find_gateway, os.environ)
    except StoreError as exc:
        outcome = RunOutcome(
            ExitCode.RETRYABLE, RunSummary(reason=Reason.EXECUTION_ERROR, message=str(exc))
        )
        log.error("gateway_unavailable", message=str(exc), exitCode=int(outcome.exit_code))
        return outcome
    try:
        store = open_run_store(config, gateway, log)
    except ValueError as exc:  # an unusable store URL or namespace: the config cannot run
        message = f"invalid store {config.store!r}: {exc}"
        log.error("invalid_config", message=message, exitCode=int(ExitCode.INVALID_CONFIG))
        return RunOutcome(
            ExitCode.INVALID_CONFIG, RunSummary(reason=Reason.INVALID_SPEC, message=message)
        )
    log_phase(log, "gateway_wait", started, gateway=gateway is not None)
    needs_gateway = sorted(n for n, s in (config.mcp_servers or {}).items() if s.headers_from)
    if gateway is None and needs_gateway:  # only a gateway holds Secret header values
        message = f"mcpServers.{needs_gateway[0]}.headersFrom needs the session gateway"
        log.error("invalid_config", message=message, exitCode=int(ExitCode.INVALID_CONFIG))
        return RunOutcome(
            ExitCode.INVALID_CONFIG, RunSummary(reason=Reason.INVALID_SPEC, message=message)
        )
    run = _Run(config, store, state_dir, log, gateway)
    loop = asyncio.get_running_loop()
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    for sig in stop_signals:
        loop.add_signal_handler(sig, run.request_stop, sig.name)
    try:
        return await run.execute()
    finally:
        for sig in stop_signals:
            loop.remove_signal_handler(sig)
        # Lines still in the mirror and summary folds behind the last appends (the reconcile
        # and compaction wait for them; a run that ended before those did not), before exit.
        await store.flush()
