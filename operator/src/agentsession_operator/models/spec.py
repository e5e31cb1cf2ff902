"""AgentSession.spec: what a user asks for. The source of the CRD's spec schema (via models.crd),
parsed by the operator's reconcile code; sub-models shared with the runner are the contract's."""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Annotated, ClassVar, Final

from pydantic import Field, StrictBool, StringConstraints
from pydantic.alias_generators import to_camel

from agentsession_contract.run import (
    HEADER_NAME_PATTERN,
    MODEL_ID_PATTERN,
    AgentDefinition,
    McpServer,
    OutputFormat,
    PermissionMode,
    SystemPromptPreset,
    WireModel,
)

from .markers import (
    DNS_SUBDOMAIN_MAX_LENGTH,
    DNS_SUBDOMAIN_PATTERN,
    LIST_SET,
    MAP_ATOMIC,
    UUID_PATTERN,
    ConfigKey,
    ObjectName,
    Quantity,
    Rule,
    RuledModel,
    immutable_field_rules,
    list_map,
    quantity_value,
)
from .workspace import OutputsSpec, WorkspaceSource, WorkspaceSpec

# Upper bounds: limits are never unlimited, and a typo (maxBudgetUsd: 50000) should fail at apply
# time rather than spend. The operator's configurable defaults must lie within them.
PROMPT_MAX_LENGTH: Final = 100_000
MAX_TURNS_LIMIT: Final = 1000
MAX_BUDGET_USD_LIMIT: Final = 1000.0
TIMEOUT_SECONDS_LIMIT: Final = 7 * 24 * 3600
BACKOFF_LIMIT_MAX: Final = 20
TTL_SECONDS_AFTER_FINISHED_MAX: Final = 365 * 24 * 3600
"""A year: the planner adds it to the completion time (a datetime), which must not overflow."""
DEFAULT_BACKOFF_LIMIT: Final = 3
DEFAULT_API_KEY_SECRET_KEY: Final = "ANTHROPIC_API_KEY"  # noqa: S105 - a key name, not a key
TOOLS_MAX_ITEMS: Final = 128
AGENTS_MAX: Final = 32
MCP_SERVERS_MAX: Final = 32
ENV_MAX_ITEMS: Final = 64
ENV_NAME_MAX_LENGTH: Final = 128
MODEL_MAX_LENGTH: Final = 256
MODEL_PATTERN: Final = MODEL_ID_PATTERN
"""Aliases (`sonnet`, `opus[1m]`), API ids (`claude-opus-4-1-20250805`), Vertex (`...@20250805`)
and Bedrock ids and ARNs (`us.anthropic.claude-...-v1:0`, `arn:aws:bedrock:...:.../...`)."""
MAP_KEY_PATTERN: Final = r"^[A-Za-z0-9]([A-Za-z0-9_-]{0,62}[A-Za-z0-9])?$"
"""Subagent and MCP server names: they become tool names (`mcp__<server>__<tool>`) and Task tool
subagent types, which the Messages API restricts to letters, digits, `_` and `-`."""
MAP_KEY_MAX_LENGTH: Final = 64

TEXT_TOTAL_MAX_LENGTH: Final = 200_000
"""Characters of prompt text in one spec: the run config (compressed) must fit a pod annotation."""
OPERATOR_SECRET_PREFIX: Final = "agentsession-"  # noqa: S105 - a name prefix, not a secret
"""Secrets the operator creates in tenant namespaces (short-lived store credentials)."""
CREDENTIAL_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "x-auth-token"}
)
CREDENTIAL_VALUE_RE: Final = "(?i)^(bearer|basic|token|digest)\\\\s"


def _text_total(spec: AgentSessionSpec) -> int:
    total = len(spec.prompt) + len(spec.system_prompt or "")
    if spec.system_prompt_preset is not None:
        total += len(spec.system_prompt_preset.append or "")
    for agent in (spec.agents or {}).values():
        total += len(agent.prompt) + len(agent.description)
    for source in _sources(spec):
        total += sum(len(f.content) for f in source.inline.files) if source.inline else 0
    return total


def _sources(spec: AgentSessionSpec) -> list[WorkspaceSource]:
    return list(spec.workspace.sources or []) if spec.workspace else []


def _reads_our_secret(spec: AgentSessionSpec, name: str) -> bool:
    api_key_secret = spec.api_key_secret_ref.name if spec.api_key_secret_ref else None
    return name.startswith(OPERATOR_SECRET_PREFIX) or name == api_key_secret


def _sources_read_our_secrets(spec: AgentSessionSpec) -> bool:
    for source in _sources(spec):
        names = [source.secret.name] if source.secret else []
        if source.git and source.git.credentials_secret_ref:
            names.append(source.git.credentials_secret_ref.name)
        if any(_reads_our_secret(spec, name) for name in names):
            return True
    return False


def _pushes_known_git_sources(spec: AgentSessionSpec) -> bool:
    git_sources = {s.name for s in _sources(spec) if s.git is not None}
    outputs = spec.outputs.git if spec.outputs and spec.outputs.git else []
    return all(output.source in git_sources for output in outputs)


def _credential_headers(spec: AgentSessionSpec) -> list[str]:
    found = []
    for name, server in (spec.mcp_servers or {}).items():
        for header, value in (server.headers or {}).items():
            if header.lower() in CREDENTIAL_HEADERS or re.match(
                r"(?i)^(bearer|basic|token|digest)\s", value
            ):
                found.append(f"{name}.{header}")
    return found


def _keys_match(name: str, spec: AgentSessionSpec) -> bool:
    return all(
        len(key) <= MAP_KEY_MAX_LENGTH and re.fullmatch(MAP_KEY_PATTERN, key)
        for key in getattr(spec, name) or {}
    )


def _env_reads_our_secrets(spec: AgentSessionSpec) -> bool:
    for var in spec.env or []:
        ref = var.value_from.secret_key_ref if var.value_from else None
        if ref is not None and _reads_our_secret(spec, ref.name):
            return True
    return False


# Environment variables a session may not set: the operator and runner own them, because they
# carry credentials, isolation (config dir, HOME), telemetry, egress (proxies), TLS trust (CA
# bundles, verification switches), or could load foreign code into the runner or CLI process
# (loader, interpreter and shell start-up variables). Names are case-sensitive, so the lower-case
# proxy spellings, which curl and friends honour, are listed too.
RESERVED_ENV_NAMES: Final = frozenset(
    {
        "HOME",
        "PATH",
        "TMPDIR",
        "CLAUDECODE",
        # Code loading: Node, shells (BASH_ENV, ENV), glibc; the dynamic loader (LD_*), Python
        # (PYTHON*) and the Bun runtime of the CLI (BUN_*) are among the prefixes.
        "NODE_OPTIONS",
        "NODE_PATH",
        "BASH_ENV",
        "ENV",
        # glibc: gconv modules are shared objects loaded from this path (iconv), and tunables
        # change the allocator and loader of every process.
        "GCONV_PATH",
        "GLIBC_TUNABLES",
        # TLS trust: a foreign CA or switched-off verification would let a proxy read the
        # agent's traffic.
        "NODE_TLS_REJECT_UNAUTHORIZED",
        "NODE_EXTRA_CA_CERTS",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "OPENSSL_CONF",
        "GIT_SSL_NO_VERIFY",
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        # TLS libraries (OpenSSL, Node, Bun, Python's ssl) write session keys here: whoever reads
        # the file decrypts the traffic.
        "SSLKEYLOGFILE",
        # Egress goes through the session gateway's proxy.
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "NODE_USE_ENV_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
    }
)
RESERVED_ENV_PREFIXES: Final = (
    "AGENTSESSION_",
    "ANTHROPIC_",
    "CLAUDE_",
    "AWS_",
    "OTEL_",
    "LD_",
    "PYTHON",
    # The bundled `claude` CLI is a Bun executable: BUN_OPTIONS adds runtime flags (--preload
    # runs a file before the CLI), BUN_CONFIG_FILE names a bunfig.toml that can do the same.
    "BUN_",
)


def is_reserved_env_name(name: str) -> bool:
    """Whether a session's env may not set `name` (the API server applies the same rule)."""
    return name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES)


def _cel_string_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


_RESERVED_ENV_MESSAGE = (
    "is reserved for the operator and runner (credentials, isolation, telemetry, proxies, TLS "
    "trust and code loading): "
    + ", ".join(sorted(RESERVED_ENV_NAMES))
    + ", and every name starting with "
    + ", ".join(RESERVED_ENV_PREFIXES)
)

# An unescaped `$(`: an odd run of `$` before `(`. Kubernetes expands `$(NAME)` in a literal env
# value against the container's other variables (the runner's isolation variables among them) and
# turns `$$` into `$`, so `$$(NAME)` stays the literal text `$(NAME)`.
ENV_EXPANSION_RE: Final = r"(^|[^$])(\$\$)*\$\("
ENV_EXPANSION_CEL: Final = ENV_EXPANSION_RE.replace("\\", "\\\\")
ENV_EXPANSION_MESSAGE: Final = (
    "spec.env[].value must not contain a $(NAME) reference: Kubernetes would expand it against "
    "the runner container's own variables; write $$( for a literal $("
)
ENV_VALUE_MAX_LENGTH: Final = 32_768

ToolName = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class KeySelector(WireModel):
    """One key of a Secret or ConfigMap in the session's namespace."""

    name: ObjectName = Field(description="Name of the Secret or ConfigMap.")
    key: ConfigKey = Field(description="The key to read.")


class ApiKeySecretRef(WireModel):
    """Where the session's Anthropic API key lives. A key is never written into the spec."""

    name: ObjectName = Field(description="Name of a Secret in the session's namespace.")
    key: ConfigKey = Field(
        default=DEFAULT_API_KEY_SECRET_KEY,
        description="The Secret key holding the API key.",
    )


class EnvVarSource(RuledModel):
    """Where an environment variable's value comes from."""

    cel_rules = (
        Rule(
            cel="has(self.secretKeyRef) != has(self.configMapKeyRef)",
            message="set exactly one of secretKeyRef or configMapKeyRef",
            holds=lambda s: (s.secret_key_ref is None) != (s.config_map_key_ref is None),
        ),
    )

    secret_key_ref: KeySelector | None = Field(
        default=None,
        description=(
            "A key of a Secret in the session's namespace. Like a Job, an AgentSession can read "
            "any Secret in its namespace: grant `create` on agentsessions accordingly."
        ),
        json_schema_extra=MAP_ATOMIC,
    )
    config_map_key_ref: KeySelector | None = Field(
        default=None,
        description="A key of a ConfigMap in the session's namespace.",
        json_schema_extra=MAP_ATOMIC,
    )


class EnvVar(RuledModel):
    """An environment variable for the agent (its tools and MCP clients see it too)."""

    cel_rules = (
        Rule(
            cel=(
                f"!(self.name in {_cel_string_list(sorted(RESERVED_ENV_NAMES))}) && "
                f"!{_cel_string_list(RESERVED_ENV_PREFIXES)}.exists(p, self.name.startsWith(p))"
            ),
            message="name " + _RESERVED_ENV_MESSAGE,
            message_expression=f"self.name + ' {_RESERVED_ENV_MESSAGE}'",
            field_path=".name",
            reason="FieldValueForbidden",
            holds=lambda s: not is_reserved_env_name(s.name),
        ),
        Rule(
            cel="!has(self.value) || !has(self.valueFrom)",
            message="value and valueFrom are mutually exclusive",
            field_path=".valueFrom",
            reason="FieldValueForbidden",
            holds=lambda s: s.value is None or s.value_from is None,
        ),
        Rule(
            cel=f"!has(self.value) || !self.value.matches('{ENV_EXPANSION_CEL}')",
            message=ENV_EXPANSION_MESSAGE,
            field_path=".value",
            reason="FieldValueForbidden",
            holds=lambda s: s.value is None or not re.search(ENV_EXPANSION_RE, s.value),
        ),
    )

    name: str = Field(
        min_length=1,
        max_length=ENV_NAME_MAX_LENGTH,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description=(
            "Variable name (a C identifier). Names the operator owns are refused: "
            + ", ".join(sorted(RESERVED_ENV_NAMES))
            + ", and names starting with "
            + ", ".join(RESERVED_ENV_PREFIXES)
            + "."
        ),
    )
    value: str | None = Field(
        default=None,
        max_length=ENV_VALUE_MAX_LENGTH,
        description=(
            "A literal value. Do not put credentials here; use valueFrom.secretKeyRef. `$(NAME)` "
            "references are refused (Kubernetes would expand them against the container's own "
            "variables); write `$$(` for a literal `$(`."
        ),
    )
    value_from: EnvVarSource | None = Field(
        default=None, description="Read the value from a Secret or ConfigMap key instead."
    )


class ResourceList(WireModel):
    """Compute resources by name; only those meaningful for a runner pod."""

    cpu: Quantity | None = Field(default=None, description="CPU, e.g. `500m` or `2`.")
    memory: Quantity | None = Field(default=None, description="Memory, e.g. `1Gi`.")
    ephemeral_storage: Quantity | None = Field(
        default=None,
        alias="ephemeral-storage",
        description="Local scratch space (the agent's workspace), e.g. `10Gi`.",
    )


RESOURCE_NAMES: Final = ("cpu", "memory", "ephemeral-storage")


def _quantity(resources: ResourceRequirements, side: str, name: str) -> Decimal | None:
    """The quantity requests[name] or limits[name] as a number; None when absent, NaN when the
    API server's quantity parser would refuse it (the pattern lets through a few such)."""
    sides = resources.requests if side == "requests" else resources.limits
    raw = None if sides is None else sides.to_wire().get(name)
    if raw is None:
        return None
    try:
        return quantity_value(raw)
    except (ValueError, ArithmeticError):
        return Decimal("NaN")


def _non_negative_rule(side: str, name: str) -> Rule:
    """Requests are quantities of at least 0; limits more than 0: the container runtime takes a
    limit of 0 as none (runc leaves the cgroup unlimited), which would lift the operator's
    default limit."""
    field = f"self.{side}.{name.replace('-', '__dash__')}"  # CEL escapes '-' in field names
    quantity = f"string({field})"
    positive = side == "limits"

    def holds(resources: ResourceRequirements) -> bool:
        value = _quantity(resources, side, name)
        if value is None:
            return True
        return not value.is_nan() and (value > 0 if positive else value >= 0)

    check = (
        f"quantity({quantity}).isGreaterThan(quantity('0'))"
        if positive
        else f"!quantity({quantity}).isLessThan(quantity('0'))"
    )
    return Rule(
        cel=f"!has(self.{side}) || !has({field}) || (isQuantity({quantity}) && {check})",
        message=(
            f"spec.resources.{side}.{name} must be a quantity greater than 0 (the container "
            "runtime takes a limit of 0 as no limit)"
            if positive
            else f"spec.resources.{side}.{name} must be a quantity of at least 0"
        ),
        field_path=f".{side}.{name}",
        reason="FieldValueInvalid",
        holds=holds,
    )


def _request_within_limit_rule(name: str) -> Rule:
    escaped = name.replace("-", "__dash__")
    request, limit = f"self.requests.{escaped}", f"self.limits.{escaped}"

    def holds(resources: ResourceRequirements) -> bool:
        wanted, most = _quantity(resources, "requests", name), _quantity(resources, "limits", name)
        if wanted is None or most is None or wanted.is_nan() or most.is_nan():
            return True  # absent, or refused by the non-negative rule
        return wanted <= most

    return Rule(
        cel=(
            f"!has(self.requests) || !has(self.limits) || !has({request}) || !has({limit})"
            f" || !isQuantity(string({request})) || !isQuantity(string({limit}))"
            f" || !quantity(string({request})).isGreaterThan(quantity(string({limit})))"
        ),
        message=f"spec.resources.requests.{name} must not exceed limits.{name}",
        field_path=f".requests.{name}",
        reason="FieldValueInvalid",
        holds=holds,
    )


class ResourceRequirements(RuledModel):
    """Requests and limits for the runner container, as in a Pod."""

    cel_rules = (
        *(
            _non_negative_rule(side, name)
            for side in ("requests", "limits")
            for name in RESOURCE_NAMES
        ),
        *(_request_within_limit_rule(name) for name in RESOURCE_NAMES),
    )

    requests: ResourceList | None = Field(
        default=None, description="Minimum resources the scheduler reserves."
    )
    limits: ResourceList | None = Field(default=None, description="Maximum resources allowed.")


class ResumeSpec(RuledModel):
    """Continue an earlier session's conversation instead of starting a new one."""

    cel_rules = (
        Rule(
            cel="has(self.sessionRef) || has(self.sessionId)",
            message="resume needs a source: set sessionRef or sessionId",
            reason="FieldValueRequired",
            holds=lambda s: s.session_ref is not None or s.session_id is not None,
        ),
        Rule(
            cel="!has(self.sessionRef) || !has(self.sessionId)",
            message="sessionRef and sessionId are mutually exclusive",
            field_path=".sessionId",
            reason="FieldValueForbidden",
            holds=lambda s: s.session_ref is None or s.session_id is None,
        ),
    )

    session_ref: ObjectName | None = Field(
        default=None,
        description=(
            "Name of another AgentSession in this namespace to continue from. The operator waits "
            "until it has finished and resumes its SDK session. Exclusive with sessionId."
        ),
    )
    session_id: str | None = Field(
        default=None,
        pattern=UUID_PATTERN,
        max_length=36,
        description=(
            "An Agent SDK session id (a UUID) whose transcript is in this namespace's store. "
            "Exclusive with sessionRef."
        ),
    )
    fork: bool = Field(
        default=False,
        description=(
            "Continue in a new SDK session id, leaving the source session's transcript as it "
            "was, so several sessions can branch from one."
        ),
    )
    resume_at: str | None = Field(
        default=None,
        pattern=UUID_PATTERN,
        max_length=36,
        description=(
            "Resume from this message uuid of the source transcript instead of its end "
            "(the SDK's resume_session_at); later messages are not replayed."
        ),
    )


class LimitAction(enum.StrEnum):
    """What a session does when it reaches its own maxTurns or maxBudgetUsd."""

    FAIL = "Fail"
    """End the session: phase Failed, reason MaxTurnsReached or BudgetExceeded."""
    PAUSE = "Pause"
    """Stop the runner, keep the transcript and wait in phase Paused; raising the limit that was
    reached (spec.maxTurns, spec.maxBudgetUsd) continues the session."""


MUTABLE_SPEC_FIELDS: Final = frozenset({"suspend", "max_budget_usd", "max_turns"})
"""The spec fields an update may change (Python names); every other field is immutable."""

_RESUME_HINT = ": create a new AgentSession that resumes this one (spec.resume.sessionRef)"


def _only_raised(name: str) -> Rule:
    """A limit an update may raise, never lower, remove or add (absent is the operator's default,
    which the API server cannot compare with)."""
    wire = to_camel(name)

    def holds_after(old: AgentSessionSpec, new: AgentSessionSpec) -> bool:
        before, after = getattr(old, name), getattr(new, name)
        if before is None or after is None:
            return before is None and after is None
        return bool(after >= before)

    return Rule(
        cel=(
            f"has(self.{wire}) == has(oldSelf.{wire})"
            f" && (!has(self.{wire}) || self.{wire} >= oldSelf.{wire})"
        ),
        message=(
            f"spec.{wire} may only be raised: it cannot be lowered or removed, nor added after "
            "creation (omitted, it is the operator's default)"
        ),
        field_path=f".{wire}",
        holds=None,
        holds_after=holds_after,
    )


class AgentSessionSpec(RuledModel):
    """The desired session. Immutable once created except for `suspend`, and `maxTurns` and
    `maxBudgetUsd`, which may only be raised: to continue a finished session, create a new
    AgentSession that resumes it (spec.resume.sessionRef)."""

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        # The immutability rules, one per field, are added below the class (generated from its
        # fields, so a field added later is immutable unless MUTABLE_SPEC_FIELDS names it).
        _only_raised("max_turns"),
        _only_raised("max_budget_usd"),
        Rule(
            cel=(
                f"self.onLimitReached != '{LimitAction.PAUSE.value}'"
                " || (has(self.maxTurns) && has(self.maxBudgetUsd))"
            ),
            message=(
                "onLimitReached Pause needs maxTurns and maxBudgetUsd set: a paused session "
                "continues when a limit in its spec is raised, and an omitted limit (the "
                "operator's default) cannot be"
            ),
            field_path=".onLimitReached",
            reason="FieldValueRequired",
            holds=lambda s: (
                s.on_limit_reached != LimitAction.PAUSE
                or (s.max_turns is not None and s.max_budget_usd is not None)
            ),
        ),
        Rule(
            cel="!has(self.systemPrompt) || !has(self.systemPromptPreset)",
            message="systemPrompt and systemPromptPreset are mutually exclusive",
            field_path=".systemPromptPreset",
            reason="FieldValueForbidden",
            holds=lambda s: s.system_prompt is None or s.system_prompt_preset is None,
        ),
        Rule(
            cel="!has(self.model) || !has(self.fallbackModel) || self.fallbackModel != self.model",
            message="fallbackModel must differ from model",
            field_path=".fallbackModel",
            holds=lambda s: s.model is None or s.fallback_model != s.model,
        ),
        Rule(
            cel=(
                "size(self.prompt)"
                " + (has(self.systemPrompt) ? size(self.systemPrompt) : 0)"
                " + (has(self.systemPromptPreset) && has(self.systemPromptPreset.append)"
                " ? size(self.systemPromptPreset.append) : 0)"
                " + (has(self.agents) ? self.agents.map(k, size(self.agents[k].prompt)"
                " + size(self.agents[k].description)).sum() : 0)"
                " + (has(self.workspace) && has(self.workspace.sources)"
                " ? self.workspace.sources.map(s, has(s.inline)"
                " ? s.inline.files.map(f, size(f.content)).sum() : 0).sum() : 0)"
                f" <= {TEXT_TOTAL_MAX_LENGTH}"
            ),
            message=(
                "prompt, systemPrompt, systemPromptPreset.append, agents[*].prompt and "
                ".description and workspace.sources[*].inline.files[*].content together exceed "
                f"{TEXT_TOTAL_MAX_LENGTH} characters (the run config travels in the runner pod)"
            ),
            field_path=".prompt",
            reason="FieldValueInvalid",
            holds=lambda s: _text_total(s) <= TEXT_TOTAL_MAX_LENGTH,
        ),
        *(
            Rule(
                cel=(
                    f"!has(self.{wire}) || self.{wire}.all(k,"
                    f" size(k) <= {MAP_KEY_MAX_LENGTH} && k.matches('{MAP_KEY_PATTERN}'))"
                ),
                message=(
                    f"spec.{wire} keys must be 1..{MAP_KEY_MAX_LENGTH} letters, digits, '_' and "
                    f"'-', starting and ending with a letter or digit ({what})"
                ),
                field_path=f".{wire}",
                reason="FieldValueInvalid",
                holds=functools.partial(_keys_match, name),
            )
            for name, wire, what in (
                ("agents", "agents", "subagent names become the Task tool's subagent types"),
                ("mcp_servers", "mcpServers", "server names become tool names mcp__<name>__<tool>"),
            )
        ),
        Rule(
            cel=(
                "!has(self.mcpServers) || self.mcpServers.all(n,"
                " (!has(self.mcpServers[n].headers)"
                f" || self.mcpServers[n].headers.all(h, h.matches('{HEADER_NAME_PATTERN}')))"
                " && (!has(self.mcpServers[n].headersFrom)"
                f" || self.mcpServers[n].headersFrom.all(h, h.matches('{HEADER_NAME_PATTERN}'))))"
            ),
            message=f"mcpServers[*].headers and headersFrom names must match {HEADER_NAME_PATTERN}",
            field_path=".mcpServers",
            reason="FieldValueInvalid",
            holds=lambda s: all(
                re.fullmatch(HEADER_NAME_PATTERN, header)
                for server in (s.mcp_servers or {}).values()
                for header in [*(server.headers or {}), *(server.headers_from or {})]
            ),
        ),
        Rule(
            cel=(
                "!has(self.mcpServers) || self.mcpServers.all(n, !has(self.mcpServers[n].headers)"
                " || self.mcpServers[n].headers.all(h,"
                f" !(h.lowerAscii() in {_cel_string_list(sorted(CREDENTIAL_HEADERS))})"
                f" && !self.mcpServers[n].headers[h].matches('{CREDENTIAL_VALUE_RE}')))"
            ),
            message=(
                "mcpServers[*].headers must not carry credentials (Authorization, X-Api-Key, "
                "Cookie, `Bearer ...` values): they would be stored in the resource and visible to "
                "the agent; put them in a Secret and use headersFrom"
            ),
            field_path=".mcpServers",
            reason="FieldValueForbidden",
            holds=lambda s: not _credential_headers(s),
        ),
        Rule(
            cel=(
                "!has(self.env) || !self.env.exists(e, has(e.valueFrom)"
                " && has(e.valueFrom.secretKeyRef)"
                f" && (e.valueFrom.secretKeyRef.name.startsWith('{OPERATOR_SECRET_PREFIX}')"
                " || (has(self.apiKeySecretRef)"
                " && e.valueFrom.secretKeyRef.name == self.apiKeySecretRef.name)))"
            ),
            message=(
                "env must not read the API key Secret (apiKeySecretRef) or the operator's own "
                f"Secrets ({OPERATOR_SECRET_PREFIX}*): the agent's container holds no credential "
                "of ours; its session gateway uses them"
            ),
            field_path=".env",
            reason="FieldValueForbidden",
            holds=lambda s: not _env_reads_our_secrets(s),
        ),
        Rule(
            cel=(
                "!has(self.workspace) || !has(self.workspace.sources)"
                " || !self.workspace.sources.exists(s,"
                " (has(s.secret) && (s.secret.name.startsWith('" + OPERATOR_SECRET_PREFIX + "')"
                " || (has(self.apiKeySecretRef) && s.secret.name == self.apiKeySecretRef.name)))"
                " || (has(s.git) && has(s.git.credentialsSecretRef)"
                " && (s.git.credentialsSecretRef.name.startsWith('" + OPERATOR_SECRET_PREFIX + "')"
                " || (has(self.apiKeySecretRef)"
                " && s.git.credentialsSecretRef.name == self.apiKeySecretRef.name))))"
            ),
            message=(
                "workspace.sources must not read the API key Secret (apiKeySecretRef) or the "
                f"operator's own Secrets ({OPERATOR_SECRET_PREFIX}*) as files or git credentials"
            ),
            field_path=".workspace.sources",
            reason="FieldValueForbidden",
            holds=lambda s: not _sources_read_our_secrets(s),
        ),
        Rule(
            cel=(
                "!has(self.outputs) || !has(self.outputs.git) || self.outputs.git.all(g,"
                " has(self.workspace) && has(self.workspace.sources)"
                " && self.workspace.sources.exists(s, s.name == g.source && has(s.git)))"
            ),
            message="outputs.git[].source must name a git source of workspace.sources",
            field_path=".outputs.git",
            reason="FieldValueInvalid",
            holds=_pushes_known_git_sources,
        ),
    )

    prompt: str = Field(
        min_length=1,
        max_length=PROMPT_MAX_LENGTH,
        description="The user prompt the agent works on.",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=MODEL_MAX_LENGTH,
        pattern=MODEL_PATTERN,
        description=(
            "Model alias (`sonnet`, `opus`, `haiku`) or full model id (`claude-sonnet-4-5`, a "
            "Vertex `...@date` or Bedrock `...-v1:0` id or ARN): letters, digits and `-._:@/[]`. "
            "Omitted: the operator's default model."
        ),
    )
    fallback_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=MODEL_MAX_LENGTH,
        pattern=MODEL_PATTERN,
        description=(
            "Model to switch to when the main model is overloaded (same form as model). Must "
            "differ from model."
        ),
    )
    system_prompt: str | None = Field(
        default=None,
        max_length=PROMPT_MAX_LENGTH,
        description=(
            "A complete system prompt replacing Claude Code's. Exclusive with "
            "systemPromptPreset (a field cannot hold either a string or an object in a "
            "structural schema, so the SDK's two forms are two fields)."
        ),
    )
    system_prompt_preset: SystemPromptPreset | None = Field(
        default=None,
        description=(
            "Claude Code's own system prompt, with optional text appended. Exclusive with "
            "systemPrompt. Neither set: the SDK's minimal default system prompt."
        ),
    )
    max_turns: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TURNS_LIMIT,
        description=(
            "Most agent turns (model round trips) before the session stops with reason "
            "MaxTurnsReached. Omitted: the operator's default; never unlimited. An update may "
            "raise it (never lower, remove or add it), e.g. to continue a Paused session."
        ),
    )
    max_budget_usd: float | None = Field(
        default=None,
        gt=0,
        le=MAX_BUDGET_USD_LIMIT,
        description=(
            "Most USD the session may spend, as the SDK prices it, before it stops with reason "
            "BudgetExceeded. Omitted: the operator's default; never unlimited. An update may "
            "raise it (never lower, remove or add it), e.g. to continue a Paused session."
        ),
    )
    on_limit_reached: LimitAction = Field(
        default=LimitAction.FAIL,
        description=(
            "What happens when the session reaches maxTurns or maxBudgetUsd: `Fail` (the "
            "default) ends it with reason MaxTurnsReached or BudgetExceeded; `Pause` stops its "
            "runner pod and keeps it in phase Paused with its transcript, until an update raises "
            "the limit that was reached. Pause needs both limits set in the spec."
        ),
        json_schema_extra={"maxLength": 8},  # bounds what the CEL rules read
    )
    # Strict: the API server refuses "true" (a string), so the model does too.
    suspend: StrictBool = Field(
        default=False,
        description=(
            "Suspend the session, as on a Job: while true no runner pod runs (a running one is "
            "stopped), the phase is Suspended and the session holds no budget reservation or "
            "concurrency slot; setting it back to false continues the session from its "
            "transcript. May be changed at any time."
        ),
    )
    timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=TIMEOUT_SECONDS_LIMIT,
        description=(
            "Wall-clock limit for each attempt (the runner pod's activeDeadlineSeconds); the "
            "session fails with reason DeadlineExceeded. Omitted: the operator's default."
        ),
    )
    allowed_tools: list[ToolName] | None = Field(
        default=None,
        max_length=TOOLS_MAX_ITEMS,
        description=(
            "Tools the agent may use without asking, e.g. `Read`, `Bash(git:*)`, "
            "`mcp__github__create_issue`."
        ),
        json_schema_extra=LIST_SET,
    )
    disallowed_tools: list[ToolName] | None = Field(
        default=None,
        max_length=TOOLS_MAX_ITEMS,
        description="Tools the agent may never use; wins over allowedTools.",
        json_schema_extra=LIST_SET,
    )
    permission_mode: PermissionMode | None = Field(
        default=None,
        description=(
            "How tool use outside allowedTools is decided (nobody is there to ask): `default`, "
            "`acceptEdits`, `plan`, `bypassPermissions` or `dontAsk`. Omitted: the SDK's `default`."
        ),
    )
    agents: dict[str, AgentDefinition] | None = Field(
        default=None,
        max_length=AGENTS_MAX,
        description="Subagents by name, which the main agent may delegate to.",
    )
    mcp_servers: dict[str, McpServer] | None = Field(
        default=None,
        max_length=MCP_SERVERS_MAX,
        description=(
            "Remote MCP servers by name (their tools are named `mcp__<name>__<tool>`). Only "
            "`http` and `sse` transports: a pod runs no local stdio servers."
        ),
    )
    output_format: OutputFormat | None = Field(
        default=None,
        description=(
            "Ask for a final structured output conforming to a JSON schema; it is reported in "
            "status.structuredOutput."
        ),
    )
    resume: ResumeSpec | None = Field(
        default=None,
        description="Continue an earlier session (by AgentSession name or SDK session id).",
    )
    api_key_secret_ref: ApiKeySecretRef | None = Field(
        default=None,
        description=(
            "The Secret holding the Anthropic API key. Omitted: the operator's default Secret. "
            "There is no field for a literal key: `kubectl` rejects an `apiKey` field as unknown "
            "(strict field validation); clients that only warn have it pruned from the object."
        ),
        json_schema_extra=MAP_ATOMIC,
    )
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=ENV_MAX_ITEMS,
        description=(
            "Extra environment variables for the agent and its tools. Names the operator owns "
            "are refused (see env.name)."
        ),
        json_schema_extra=list_map("name"),
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description="CPU, memory and ephemeral-storage for the runner container.",
    )
    runtime_class_name: str | None = Field(
        default=None,
        max_length=DNS_SUBDOMAIN_MAX_LENGTH,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description=(
            "RuntimeClass for the runner pod, e.g. `gvisor` or `kata` for stronger isolation."
        ),
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        # A reference as distribution/reference parses it: [host[:port]/]path[:tag][@digest].
        pattern=(
            r"^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
            r"(:[0-9]+)?/)?[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*"
            r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
        ),
        description=(
            "Runner image override. The operator accepts only images its allowlist names; "
            "omitted: the operator's runner image."
        ),
    )
    backoff_limit: int = Field(
        default=DEFAULT_BACKOFF_LIMIT,
        ge=0,
        le=BACKOFF_LIMIT_MAX,
        description=(
            "Retries after a failed attempt (pod lost, store unreachable) before the session "
            "fails with reason BackoffLimitExceeded; a retry resumes the transcript. Agent-level "
            "outcomes (max turns, budget, API errors) are final and never retried."
        ),
    )
    workspace: WorkspaceSpec | None = Field(
        default=None,
        description=(
            "What /workspace starts with (git repositories, ConfigMaps, Secrets, inline files, "
            "another session's workspace) and how it is kept across attempts and follow-up "
            "sessions (snapshots in the store). See docs/workspaces.md."
        ),
    )
    outputs: OutputsSpec | None = Field(
        default=None,
        description=(
            "Artifacts to keep in the store and git sources to push when the session's run ends."
        ),
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=TTL_SECONDS_AFTER_FINISHED_MAX,
        description=(
            "Delete the AgentSession this long after it finished (the transcript stays in the "
            "store); at most a year (31536000). Omitted: the operator's default, if it has one."
        ),
    )


AgentSessionSpec.cel_rules = (
    *immutable_field_rules(
        AgentSessionSpec, mutable=MUTABLE_SPEC_FIELDS, path="spec", hint=_RESUME_HINT
    ),
    *AgentSessionSpec.cel_rules,
)
