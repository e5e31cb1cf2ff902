"""The operator<->runner contract: the run config the operator hands a runner pod, the summary the
runner leaves in its termination message, exit codes and reasons. Imported by both sides."""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import zlib
from typing import Annotated, Any, Literal

from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

# The termination message a kubelet keeps is capped at 4096 bytes; the summary must fit whole.
SUMMARY_MAX_BYTES = 4096
RESULT_PREVIEW_MAX_CHARS = 1024
STRUCTURED_OUTPUT_MAX_BYTES = 2048
"""The one size limit of structured output, end to end: the runner's summary carries it up to this
many bytes (compact JSON, see `structured_output_fits`) and never drops it to fit the 4096-byte
termination message (the other optional fields go first), the operator copies it to
status.structuredOutput up to the same size, and anything larger is only in the result document
(resultRef)."""


class ExitCode(enum.IntEnum):
    """Runner process exit codes; the operator's retry policy keys off these."""

    OK = 0
    """A result was obtained and persisted, whatever its subtype."""
    INVALID_CONFIG = 3
    """The config cannot run as given; retrying will not help."""
    RETRYABLE = 4
    """Infrastructure failed (store unreachable, CLI died before a result); retry by resuming."""


class Reason(enum.StrEnum):
    """Why a session (or one attempt) ended: shared by the runner summary and the CR status."""

    COMPLETED = "Completed"
    MAX_TURNS_REACHED = "MaxTurnsReached"
    BUDGET_EXCEEDED = "BudgetExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    API_ERROR = "APIError"
    EXECUTION_ERROR = "ExecutionError"
    INVALID_SPEC = "InvalidSpec"
    POD_FAILED = "PodFailed"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    SOURCE_FETCH_FAILED = "SourceFetchFailed"
    """A workspace source could not be fetched (set by the operator from the init step)."""


class WireModel(BaseModel):
    """Base for wire types: snake_case in Python, camelCase in JSON/YAML, unknown keys refused."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON-able form, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


PermissionMode = Literal["default", "acceptEdits", "plan", "bypassPermissions", "dontAsk"]


class SystemPromptPreset(WireModel):
    """Claude Code's own system prompt, optionally with text appended."""

    preset: Literal["claude_code"] = Field(
        default="claude_code", description="The preset to use; only `claude_code` exists today."
    )
    append: str | None = Field(
        default=None, description="Instructions appended to the preset system prompt."
    )


MODEL_ID_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9._:@/\[\]]*$"
"""Model aliases and ids as the SDK takes them: `sonnet`, `opus[1m]`, `claude-opus-4-1-20250805`,
Vertex `claude-opus-4-1@20250805`, Bedrock `us.anthropic.claude-opus-4-1-20250805-v1:0` or an ARN
(`arn:aws:bedrock:...:inference-profile/...`); no spaces, quotes or control characters."""
MODEL_ID_MAX_LENGTH = 256


class AgentDefinition(WireModel):
    """A subagent the main agent may delegate to through the Task tool."""

    description: str = Field(
        min_length=1, description="When the main agent should use this subagent."
    )
    prompt: str = Field(min_length=1, description="The subagent's system prompt.")
    tools: list[str] | None = Field(
        default=None,
        description="Tools the subagent may use; omitted means it inherits the main agent's.",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=MODEL_ID_MAX_LENGTH,
        pattern=MODEL_ID_PATTERN,
        description="Model alias (sonnet, opus, haiku, inherit) or a full model id.",
    )


HEADER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{0,127}$"
"""HTTP header names we accept (letters, digits, '-'): the API server checks it with CEL, since a
structural schema cannot constrain map keys."""
MCP_HEADERS_MAX = 32
MCP_HEADER_VALUE_MAX_LENGTH = 2048
"""Longest literal MCP header value: the API server budgets the CEL rule that refuses
credential-shaped values by the worst case, and 32 servers x 32 headers x 4 KiB is over it."""


class SecretKeySelector(WireModel):
    """One key of a Secret in the session's namespace."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="Name of the Secret.",
    )
    key: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="The key to read."
    )


class McpServer(WireModel):
    """A remote MCP server reached over HTTP or SSE (stdio servers are not allowed in pods)."""

    type: Literal["http", "sse"] = Field(description="Transport: `http` or `sse`.")
    url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^https?://",
        description="The server's URL (http:// or https://).",
    )
    headers: (
        dict[str, Annotated[str, StringConstraints(max_length=MCP_HEADER_VALUE_MAX_LENGTH)]] | None
    ) = Field(
        default=None,
        max_length=MCP_HEADERS_MAX,
        description=(
            "Extra HTTP headers, stored in the resource as written: credential-shaped ones "
            "(Authorization, X-Api-Key, Cookie, `Bearer ...`) are refused; use headersFrom."
        ),
    )
    headers_from: dict[str, SecretKeySelector] | None = Field(
        default=None,
        max_length=MCP_HEADERS_MAX,
        description=(
            "Headers whose values come from Secret keys in the session's namespace. The session "
            "gateway adds them to every request it forwards to the server; the agent's container "
            "never sees them."
        ),
    )


class OutputFormat(WireModel):
    """Ask for structured output that conforms to a JSON schema."""

    type: Literal["json_schema"] = Field(
        default="json_schema", description="Only `json_schema` is supported."
    )
    schema_: dict[str, Any] = Field(
        alias="schema",
        description="The JSON schema the final structured output must satisfy.",
    )


# ---- the workspace parts of the run config (resolved from spec.workspace and spec.outputs:
# names rendered, another session's name turned into its SDK session id, Secrets named but never
# their values) ----

SourceKind = Literal["git", "configMap", "secret", "inline", "fromSession"]


class SnapshotConfig(WireModel):
    """Snapshots are on: bounded and with these exclusions."""

    max_bytes: int = Field(ge=0, description="Largest workspace snapshotted.")
    exclude: list[str] = Field(default_factory=list, description=".gitignore-style patterns.")


class GitFetch(WireModel):
    """A git source as the init step fetches it."""

    url: str
    ref: str | None = None
    commit: str | None = Field(
        default=None, description="The commit an earlier attempt resolved `ref` to (retries)."
    )
    depth: int = Field(default=1, ge=0)
    credentials: bool = Field(
        default=False,
        description="The init step and the gateway have the credentials Secret's keys in env.",
    )
    credentials_secret: str | None = Field(
        default=None, description="The credentials Secret's name (for error messages)."
    )


class InlineFileConfig(WireModel):
    path: str
    content: str


class SourceConfig(WireModel):
    """One source of spec.workspace.sources, ready for the init step."""

    name: str
    path: str
    kind: SourceKind
    git: GitFetch | None = None
    files_dir: str | None = Field(
        default=None, description="configMap/secret: where the object's volume is mounted."
    )
    inline: list[InlineFileConfig] | None = None
    from_session_id: str | None = Field(
        default=None, description="fromSession: the other session's SDK session id."
    )
    from_path: str | None = None


class ArtifactConfig(WireModel):
    name: str
    path: str


class GitPushConfig(WireModel):
    """Push a git source's working tree as a commit on `branch` (already rendered)."""

    source: str
    branch: str
    author_name: str
    author_email: str
    message: str


class OutputsConfig(WireModel):
    artifacts: list[ArtifactConfig] = Field(default_factory=list)
    git: list[GitPushConfig] = Field(default_factory=list)


class RunConfig(WireModel):
    """Everything one runner attempt needs. Keys reuse the AgentSession spec's names."""

    prompt: str = Field(min_length=1, description="The user prompt for this turn.")
    model: str | None = Field(default=None, description="Model alias or id.")
    fallback_model: str | None = Field(default=None, description="Model used on overload.")
    system_prompt: str | None = Field(default=None, description="A complete system prompt.")
    system_prompt_preset: SystemPromptPreset | None = Field(
        default=None, description="Claude Code's system prompt plus appended text."
    )
    max_turns: Annotated[int, Field(ge=1, description="Turn limit; never unlimited.")]
    max_budget_usd: Annotated[float, Field(gt=0, description="Spend limit in USD.")]
    timeout_seconds: int | None = Field(
        default=None, ge=1, description="Wall-clock limit for this attempt."
    )
    allowed_tools: list[str] = Field(default_factory=list, description="Tools allowed unasked.")
    disallowed_tools: list[str] = Field(default_factory=list, description="Tools refused.")
    permission_mode: PermissionMode | None = Field(default=None, description="Permission mode.")
    agents: dict[str, AgentDefinition] | None = Field(default=None, description="Subagents.")
    mcp_servers: dict[str, McpServer] | None = Field(default=None, description="MCP servers.")
    output_format: OutputFormat | None = Field(default=None, description="Structured output.")

    store: str = Field(
        min_length=1, description="SessionStore URL: s3://bucket/prefix or file:///dir."
    )
    namespace: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Tenant scope for store keys (the AgentSession's namespace).",
    )
    namespace_uid: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        description=(
            "The namespace's UID: store keys are scoped by it too, so a namespace deleted and "
            "created again under the same name never reaches the old one's transcripts. Unset "
            "only for sessions an operator started before the UID was part of the layout."
        ),
    )
    session_name: str = Field(min_length=1, description="The AgentSession's name, for logs.")
    session_id: str | None = Field(
        default=None,
        pattern=UUID_PATTERN,
        description=(
            "The SDK session id of this run's conversation, pre-assigned by the operator. A fresh "
            "or forked session is created with it; if the store already holds it (a retry), the "
            "run resumes it instead, so every attempt of a session can use the same config."
        ),
    )
    resume_session_id: str | None = Field(
        default=None, description="SDK session id to resume from the store."
    )
    fork_session: bool = Field(default=False, description="Resume into a new session id.")
    resume_at: str | None = Field(
        default=None, description="Message uuid to resume at (SDK resume_session_at)."
    )
    workspace: str = Field(
        default="/workspace", description="Working directory for the agent (cwd)."
    )
    snapshot: SnapshotConfig | None = Field(
        default=None,
        description=(
            "Snapshot the workspace into the store at the end of the attempt and on SIGTERM, and "
            "restore the session's (else its resume source's) last snapshot before it starts."
        ),
    )
    sources: list[SourceConfig] = Field(
        default_factory=list,
        description="Sources the pod's init step fetches (it also restores; the runner does not).",
    )
    outputs: OutputsConfig | None = Field(default=None, description="Artifacts and git pushes.")

    @model_validator(mode="after")
    def _session_id_fits_resume(self) -> RunConfig:
        if (
            self.session_id is not None
            and self.resume_session_id is not None
            and not self.fork_session
            and self.session_id != self.resume_session_id
        ):
            raise ValueError("sessionId must equal resumeSessionId unless forkSession is set")
        return self


class WorkspaceSummary(WireModel):
    """The attempt's last workspace snapshot, as the runner took it."""

    taken: bool = Field(description="Whether a snapshot was written.")
    files: int | None = Field(default=None, ge=0)
    bytes: int | None = Field(default=None, ge=0)
    uploaded_bytes: int | None = Field(default=None, ge=0)
    message: str | None = Field(default=None, max_length=1024, description="Warnings, errors.")


def structured_output_fits(value: Any) -> bool:
    """Whether `value` is within STRUCTURED_OUTPUT_MAX_BYTES as compact JSON: the runner's and the
    operator's one test, so an output that fits one fits the other."""
    encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return len(encoded.encode()) <= STRUCTURED_OUTPUT_MAX_BYTES


# Dropped in this order until the summary fits: first what the operator never takes from the agent
# (it meters usage itself), the workspace snapshot's counts next to last (the snapshot itself is
# in the store), the structured output last. With every other optional field dropped, a
# structured output within STRUCTURED_OUTPUT_MAX_BYTES always fits.
_EXPENDABLE_SUMMARY_FIELDS = (
    "modelUsage",
    "usage",
    "errors",
    "message",
    "resultPreview",
    "workspace",
    "structuredOutput",
)


class RunSummary(WireModel):
    """What the runner reports in its termination message; names match the CR status fields."""

    reason: Reason = Field(description="Why the run ended.")
    message: str | None = Field(default=None, description="Human-readable detail.")
    session_id: str | None = None
    subtype: str | None = None
    is_error: bool | None = None
    num_turns: int | None = None
    total_cost_usd: float | None = None
    duration_ms: int | None = None
    api_error_status: int | None = None
    stop_reason: str | None = None
    terminal_reason: str | None = None
    usage: dict[str, int] | None = None
    model_usage: dict[str, dict[str, float]] | None = None
    result_preview: str | None = None
    structured_output: Any = None
    errors: list[str] | None = None
    permission_denials: int | None = None
    result_ref: str | None = None
    transcript_ref: str | None = None
    workspace: WorkspaceSummary | None = None

    def to_termination_message(self) -> str:
        """Serialize within SUMMARY_MAX_BYTES, dropping the most expendable fields first."""
        data = self.to_wire()
        for drop in _EXPENDABLE_SUMMARY_FIELDS:
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
            if len(text.encode()) <= SUMMARY_MAX_BYTES:
                return text
            data.pop(drop, None)
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        if len(text.encode()) > SUMMARY_MAX_BYTES:  # only a pathological ref could do this
            data = {k: data[k] for k in ("reason", "sessionId", "subtype") if k in data}
            text = json.dumps(data, separators=(",", ":"))
        return text


# The run config travels in a pod annotation (projected into both containers as a file): one
# environment variable cannot hold it (Linux caps a variable at 128 KiB) and the whole pod must
# stay well inside the API server's object size. zlib keeps prompts compact; base64 keeps the
# annotation printable.
RUN_CONFIG_ENCODING = "zlib+base64:"
RUN_CONFIG_MAX_ENCODED_BYTES = 240 * 1024
"""Below the 256 KiB the API server allows for all of a pod's annotations together."""


def encode_run_config(config: RunConfig) -> str:
    """The compact, printable form of `config` (see RUN_CONFIG_ENCODING)."""
    raw = json.dumps(config.to_wire(), separators=(",", ":"), ensure_ascii=False).encode()
    return RUN_CONFIG_ENCODING + base64.b64encode(zlib.compress(raw, 9)).decode()


def decode_run_config(text: str) -> dict[str, Any]:
    """The JSON object `encode_run_config` encoded; plain JSON is accepted too (local runs).

    Raises ValueError with a readable message for anything else."""
    text = text.strip()
    if text.startswith(RUN_CONFIG_ENCODING):
        try:
            raw = zlib.decompress(base64.b64decode(text[len(RUN_CONFIG_ENCODING) :], validate=True))
        except (ValueError, zlib.error) as exc:
            raise ValueError(f"the encoded run config is corrupt: {exc}") from exc
        text = raw.decode()
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the run config must be a JSON object")
    return data


def mcp_header_env(server: str, header: str) -> str:
    """The gateway's environment variable holding one MCP server's header from a Secret."""
    digest = hashlib.sha256(f"{server}\0{header.lower()}".encode()).hexdigest()[:16].upper()
    return f"AGENTSESSION_MCP_HEADER_{digest}"
