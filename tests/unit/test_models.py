"""The AgentSession pydantic models: wire names, defaults, round trips and their CEL twins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pydantic
import pytest

from agentsession_contract.run import OutputFormat, Reason, RunConfig, SystemPromptPreset
from agentsession_operator.models import (
    RESERVED_ENV_NAMES,
    AdmissionReason,
    AgentSession,
    AgentSessionSpec,
    AgentSessionStatus,
    Condition,
    ConditionType,
    EnvVar,
    EnvVarSource,
    KeySelector,
    LimitAction,
    Phase,
    ResumeSpec,
    is_reserved_env_name,
    transition_violations,
)
from agentsession_operator.models.markers import quantity_value
from agentsession_operator.models.spec import (
    MUTABLE_SPEC_FIELDS,
    ResourceList,
    ResourceRequirements,
)

UUID = "3f2c1e9a-6b7d-4c52-9a1e-0d8f4b6a2c71"


def cel_failures(error: pydantic.ValidationError) -> list[tuple[tuple[Any, ...], str, str]]:
    return [
        (tuple(d["loc"]), d["ctx"]["field_path"], d["ctx"]["message"])
        for d in error.errors()
        if d["type"] == "cel_rule"
    ]


# --- wire names and defaults -------------------------------------------------------------------


def test_spec_speaks_camel_case_on_the_wire() -> None:
    spec = AgentSessionSpec(
        prompt="hi",
        max_turns=3,
        max_budget_usd=0.5,
        fallback_model="haiku",
        system_prompt_preset=SystemPromptPreset(append="Be brief."),
        allowed_tools=["Read"],
        output_format=OutputFormat.model_validate({"schema": {"type": "object"}}),
        resume=ResumeSpec(session_ref="earlier", resume_at=UUID),
        resources=ResourceRequirements(limits=ResourceList(ephemeral_storage="1Gi", cpu=2)),
        ttl_seconds_after_finished=60,
    )
    assert spec.to_wire() == {
        "prompt": "hi",
        "maxTurns": 3,
        "maxBudgetUsd": 0.5,
        "fallbackModel": "haiku",
        "systemPromptPreset": {"preset": "claude_code", "append": "Be brief."},
        "allowedTools": ["Read"],
        "outputFormat": {"type": "json_schema", "schema": {"type": "object"}},
        "resume": {"sessionRef": "earlier", "resumeAt": UUID, "fork": False},
        "resources": {"limits": {"cpu": 2, "ephemeral-storage": "1Gi"}},
        "backoffLimit": 3,
        "onLimitReached": "Fail",
        "suspend": False,
        "ttlSecondsAfterFinished": 60,
    }


def test_spec_parses_from_wire_names_and_python_names() -> None:
    wire = AgentSessionSpec.model_validate(
        {"prompt": "hi", "maxTurns": 2, "apiKeySecretRef": {"name": "k"}}
    )
    python = AgentSessionSpec(prompt="hi", max_turns=2, api_key_secret_ref={"name": "k"})
    assert wire == python
    assert wire.api_key_secret_ref is not None
    assert wire.api_key_secret_ref.key == "ANTHROPIC_API_KEY"


def test_limits_are_left_to_the_operator_when_omitted() -> None:
    spec = AgentSessionSpec(prompt="hi")
    assert spec.max_turns is None
    assert spec.max_budget_usd is None
    assert spec.timeout_seconds is None
    assert spec.ttl_seconds_after_finished is None
    assert spec.model is None
    assert spec.backoff_limit == 3
    assert spec.on_limit_reached is LimitAction.FAIL
    assert spec.suspend is False
    assert spec.to_wire() == {
        "prompt": "hi",
        "backoffLimit": 3,
        "onLimitReached": "Fail",
        "suspend": False,
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", ""),
        ("max_turns", 0),
        ("max_turns", 1001),
        ("max_budget_usd", 0),
        ("max_budget_usd", -1),
        ("max_budget_usd", 1000.01),
        ("timeout_seconds", 0),
        ("backoff_limit", -1),
        ("backoff_limit", 21),
        ("ttl_seconds_after_finished", -1),
        ("permission_mode", "yolo"),
        ("runtime_class_name", "Not_A_Name"),
        ("image", "no spaces:allowed"),
    ],
)
def test_spec_bounds(field: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"prompt": "hi", field: value}
    with pytest.raises(pydantic.ValidationError):
        AgentSessionSpec(**kwargs)


@pytest.mark.parametrize(
    "image",
    [
        "runner",
        "ghcr.io/acme/agent-runner:1.2.3",
        "registry.example.com:5000/platform/runner-infra:v1",
        "docker.io/library/python:3.12-slim",
        "ghcr.io/acme/runner@sha256:" + "a" * 64,
        "localhost:5000/runner:latest@sha256:" + "0" * 64,
    ],
)
def test_plausible_images_are_accepted(image: str) -> None:
    assert AgentSessionSpec(prompt="hi", image=image).image == image


def test_quantities_are_int_or_string() -> None:
    resources = ResourceList.model_validate({"cpu": "500m", "memory": 1073741824})
    assert resources.to_wire() == {"cpu": "500m", "memory": 1073741824}
    with pytest.raises(pydantic.ValidationError):
        ResourceList.model_validate({"cpu": "half"})
    with pytest.raises(pydantic.ValidationError):
        ResourceList.model_validate({"nvidia.com/gpu": 1})


def test_models_are_frozen() -> None:
    spec = AgentSessionSpec(prompt="hi")
    with pytest.raises(pydantic.ValidationError):
        spec.prompt = "changed"  # type: ignore[misc]


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="apiKey"):
        AgentSessionSpec.model_validate({"prompt": "hi", "apiKey": "sk-ant-not-a-key"})


# --- the CEL twins -----------------------------------------------------------------------------


def test_system_prompt_and_preset_are_exclusive() -> None:
    with pytest.raises(pydantic.ValidationError) as error:
        AgentSessionSpec(prompt="hi", system_prompt="x", system_prompt_preset=SystemPromptPreset())
    assert cel_failures(error.value) == [
        ((), ".systemPromptPreset", "systemPrompt and systemPromptPreset are mutually exclusive")
    ]


def test_fallback_model_differs_from_model() -> None:
    AgentSessionSpec(prompt="hi", fallback_model="sonnet")
    AgentSessionSpec(prompt="hi", model="opus", fallback_model="sonnet")
    with pytest.raises(pydantic.ValidationError, match="fallbackModel must differ"):
        AgentSessionSpec(prompt="hi", model="sonnet", fallback_model="sonnet")


def test_resume_needs_exactly_one_source() -> None:
    assert ResumeSpec(session_ref="a").fork is False
    assert ResumeSpec(session_id=UUID, fork=True, resume_at=UUID).session_id == UUID
    with pytest.raises(pydantic.ValidationError, match="resume needs a source"):
        ResumeSpec(fork=True)
    with pytest.raises(pydantic.ValidationError, match="mutually exclusive"):
        ResumeSpec(session_ref="a", session_id=UUID)
    with pytest.raises(pydantic.ValidationError):
        ResumeSpec(session_id="not-a-uuid")


def test_a_session_cannot_resume_itself() -> None:
    body = {
        "metadata": {"name": "loop"},
        "spec": {"prompt": "hi", "resume": {"sessionRef": "loop"}},
    }
    with pytest.raises(pydantic.ValidationError) as error:
        AgentSession.from_body(body)
    assert cel_failures(error.value) == [
        ((), ".spec.resume.sessionRef", "a session cannot resume itself")
    ]
    body["metadata"] = {"name": "next"}
    assert AgentSession.from_body(body).spec.resume == ResumeSpec(session_ref="loop")


@pytest.mark.parametrize(
    ("name", "reserved"),
    [
        ("HOME", True),
        ("PATH", True),
        ("TMPDIR", True),
        ("ANTHROPIC_API_KEY", True),
        ("ANTHROPIC_BASE_URL", True),
        ("ANTHROPIC_AUTH_TOKEN", True),
        ("CLAUDE_CONFIG_DIR", True),
        ("CLAUDE_CODE_USE_BEDROCK", True),
        ("CLAUDECODE", True),
        ("AGENTSESSION_RUN_CONFIG", True),
        ("AWS_ACCESS_KEY_ID", True),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", True),
        ("LD_PRELOAD", True),
        ("PYTHONPATH", True),
        ("NODE_OPTIONS", True),
        ("HTTPS_PROXY", True),
        ("https_proxy", True),
        ("GH_TOKEN", False),
        ("EDITOR", False),
        ("home", False),
        ("MY_HOME", False),
        ("AWS", False),
        ("CLAUDE", False),
    ],
)
def test_reserved_env_names(name: str, reserved: bool) -> None:
    assert is_reserved_env_name(name) is reserved
    if reserved:
        with pytest.raises(pydantic.ValidationError) as error:
            EnvVar(name=name, value="x")
        ((_loc, field_path, message),) = cel_failures(error.value)
        assert field_path == ".name"
        assert message.startswith("name is reserved")
    else:
        assert EnvVar(name=name, value="x").name == name


def test_every_reserved_name_is_in_the_message() -> None:
    rule = EnvVar.cel_rules[0]
    for name in RESERVED_ENV_NAMES:
        assert name in rule.message
        assert f"'{name}'" in rule.cel


def test_env_value_sources() -> None:
    ref = KeySelector(name="tokens", key="gh")
    assert EnvVar(name="A").value is None  # an empty value, as in a Pod
    assert EnvVar(name="A", value_from=EnvVarSource(secret_key_ref=ref)).to_wire() == {
        "name": "A",
        "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "gh"}},
    }
    with pytest.raises(pydantic.ValidationError, match="mutually exclusive"):
        EnvVar(name="A", value="x", value_from=EnvVarSource(secret_key_ref=ref))
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        EnvVarSource()
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        EnvVarSource(secret_key_ref=ref, config_map_key_ref=ref)


def test_rule_errors_locate_the_field_like_the_api_server() -> None:
    body = {"spec": {"prompt": "hi", "env": [{"name": "OK"}, {"name": "HOME", "value": "/"}]}}
    with pytest.raises(pydantic.ValidationError) as error:
        AgentSession.from_body(body)
    ((loc, field_path, _),) = cel_failures(error.value)
    assert (loc, field_path) == (("spec", "env", 1), ".name")


# --- updates: the transition rules' twins ------------------------------------------------------


def update_errors(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The transition rules an update of the spec `before` to `after` breaks, as messages."""
    old, new = AgentSessionSpec.model_validate(before), AgentSessionSpec.model_validate(after)
    return [rule.message for _loc, rule in transition_violations(old, new)]


def test_only_suspend_and_the_limits_are_mutable() -> None:
    assert {"suspend", "max_turns", "max_budget_usd"} == MUTABLE_SPEC_FIELDS
    transition = [r for r in AgentSessionSpec.cel_rules if r.is_transition]
    fields = {r.field_path for r in transition}
    wire = {f".{info.alias}" for info in AgentSessionSpec.model_fields.values()}
    assert fields == wire - {".suspend"}
    assert len(transition) == len(fields)


@pytest.mark.parametrize(
    ("before", "after"),
    [({}, {"suspend": True}), ({"suspend": True}, {"suspend": False}), ({}, {})],
)
def test_suspend_may_change_any_time(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert update_errors({"prompt": "hi", **before}, {"prompt": "hi", **after}) == []


@pytest.mark.parametrize(
    ("field", "before", "after", "allowed"),
    [
        ("maxBudgetUsd", 1, 5, True),
        ("maxBudgetUsd", 0.25, 0.25, True),
        ("maxBudgetUsd", 1, 1.0, True),
        ("maxBudgetUsd", 1, 0.5, False),
        ("maxBudgetUsd", 1, None, False),  # removed: the operator's default might be lower
        ("maxBudgetUsd", None, 5, False),  # added: the same
        ("maxBudgetUsd", None, None, True),
        ("maxTurns", 10, 11, True),
        ("maxTurns", 10, 9, False),
        ("maxTurns", 10, None, False),
        ("maxTurns", None, 10, False),
    ],
)
def test_limits_may_only_be_raised(field: str, before: Any, after: Any, allowed: bool) -> None:
    old = {"prompt": "hi"} | ({field: before} if before is not None else {})
    new = {"prompt": "hi"} | ({field: after} if after is not None else {})
    errors = update_errors(old, new)
    if allowed:
        assert errors == []
    else:
        (message,) = errors
        assert message.startswith(f"spec.{field} may only be raised")


# A value for every immutable optional field: setting it where it was absent, or the reverse,
# is a change.
OPTIONAL_SAMPLES: dict[str, Any] = {
    "model": "opus",
    "fallbackModel": "haiku",
    "systemPrompt": "Be brief.",
    "systemPromptPreset": {"append": "Be brief."},
    "timeoutSeconds": 60,
    "allowedTools": ["Read"],
    "disallowedTools": ["Bash"],
    "permissionMode": "plan",
    "agents": {"r": {"description": "reviews", "prompt": "You review."}},
    "mcpServers": {"docs": {"type": "http", "url": "https://mcp.example.com"}},
    "outputFormat": {"schema": {"type": "object"}},
    "resume": {"sessionRef": "earlier"},
    "apiKeySecretRef": {"name": "team-key"},
    "env": [{"name": "EDITOR", "value": "vi"}],
    "resources": {"limits": {"cpu": 1}},
    "runtimeClassName": "gvisor",
    "image": "runner:1",
    "ttlSecondsAfterFinished": 60,
    "workspace": {"snapshot": {"exclude": ["*.log"]}},
    "outputs": {"artifacts": [{"name": "report", "path": "report.md"}]},
}
LIMITS = {"maxTurns": 10, "maxBudgetUsd": 1}
# Fields that are always there (required, or defaulted by the API server): a changed value.
VALUE_CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "prompt": ({"prompt": "hi"}, {"prompt": "hello"}),
    "backoffLimit": ({"prompt": "hi"}, {"prompt": "hi", "backoffLimit": 4}),
    "onLimitReached": (
        {"prompt": "hi", **LIMITS},
        {"prompt": "hi", **LIMITS, "onLimitReached": "Pause"},
    ),
}


def test_the_samples_cover_every_immutable_field() -> None:
    immutable = {
        info.alias
        for name, info in AgentSessionSpec.model_fields.items()
        if name not in MUTABLE_SPEC_FIELDS
    }
    assert set(OPTIONAL_SAMPLES) | set(VALUE_CHANGES) == immutable


@pytest.mark.parametrize("field", list(OPTIONAL_SAMPLES))
def test_an_optional_field_may_be_neither_added_removed_nor_changed(field: str) -> None:
    without = {"prompt": "hi"}
    with_it = {"prompt": "hi", field: OPTIONAL_SAMPLES[field]}
    message = f"spec.{field} is immutable: create a new AgentSession that resumes this one"
    for before, after in ((without, with_it), (with_it, without)):
        (error,) = update_errors(before, after)
        assert error.startswith(message)
    assert update_errors(with_it, with_it) == []


@pytest.mark.parametrize("field", list(VALUE_CHANGES))
def test_a_required_or_defaulted_field_may_not_change(field: str) -> None:
    before, after = VALUE_CHANGES[field]
    (error,) = update_errors(before, after)
    assert error.startswith(f"spec.{field} is immutable")


def test_unordered_lists_compare_as_cel_does() -> None:
    # listType set and map compare regardless of order in CEL, so reordering is no change.
    tools = {"prompt": "hi", "allowedTools": ["Read", "Grep"]}
    assert update_errors(tools, {**tools, "allowedTools": ["Grep", "Read"]}) == []
    env = [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    spec = {"prompt": "hi", "env": env}
    assert update_errors(spec, {**spec, "env": env[::-1]}) == []
    changed = [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]
    (error,) = update_errors(spec, {**spec, "env": changed})
    assert error.startswith("spec.env is immutable")
    # An atomic list keeps its order: a subagent's tools are compared as written.
    agents = {"r": {"description": "d", "prompt": "p", "tools": ["Read", "Grep"]}}
    reordered = {"r": {"description": "d", "prompt": "p", "tools": ["Grep", "Read"]}}
    (error,) = update_errors(
        {"prompt": "hi", "agents": agents}, {"prompt": "hi", "agents": reordered}
    )
    assert error.startswith("spec.agents is immutable")


def test_transition_violations_locate_the_rule_from_the_root() -> None:
    old = AgentSession.from_body(
        {"metadata": {"name": "a"}, "spec": {"prompt": "hi", "maxTurns": 5}}
    )
    new = AgentSession.from_body(
        {"metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"prompt": "hi", "maxTurns": 4}}
    )
    ((loc, rule),) = transition_violations(old, new)
    assert (loc, rule.field_path) == (("spec",), ".maxTurns")
    relabelled = AgentSession.from_body(
        {"metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"prompt": "hi", "maxTurns": 5}}
    )
    assert transition_violations(old, relabelled) == []


def test_pause_needs_both_limits_in_the_spec() -> None:
    AgentSessionSpec(prompt="hi", on_limit_reached=LimitAction.PAUSE, max_turns=5, max_budget_usd=1)
    for limits in ({"max_turns": 5}, {"max_budget_usd": 1.0}, {}):
        with pytest.raises(pydantic.ValidationError) as error:
            AgentSessionSpec(prompt="hi", on_limit_reached=LimitAction.PAUSE, **limits)
        ((_, field_path, message),) = cel_failures(error.value)
        assert field_path == ".onLimitReached"
        assert message.startswith("onLimitReached Pause needs maxTurns and maxBudgetUsd set")
    assert AgentSessionSpec(prompt="hi").on_limit_reached is LimitAction.FAIL


def test_suspend_is_a_strict_boolean() -> None:
    assert AgentSessionSpec.model_validate({"prompt": "hi", "suspend": True}).suspend is True
    for value in ("true", 1, "yes"):
        with pytest.raises(pydantic.ValidationError):
            AgentSessionSpec.model_validate({"prompt": "hi", "suspend": value})


# --- the resource and its status ---------------------------------------------------------------


def live_body() -> dict[str, Any]:
    """An object as a watch delivers it: server-set metadata, defaults applied, a status."""
    return {
        "apiVersion": "agents.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {
            "name": "hello",
            "namespace": "team-a",
            "uid": "6f1d0a52-0f0e-4a39-a0b5-0d2d5b1c9e11",
            "resourceVersion": "4711",
            "generation": 1,
            "creationTimestamp": "2025-05-01T10:00:00Z",
            "labels": {"team": "a"},
            "finalizers": ["agents.dev/cleanup"],
            "managedFields": [{"manager": "kubectl", "operation": "Update"}],
        },
        "spec": {"prompt": "Say hello.", "backoffLimit": 3},
        "status": {
            "phase": "Succeeded",
            "reason": "Completed",
            "observedGeneration": 1,
            "sessionId": UUID,
            "attempts": 1,
            "podName": "hello-1",
            "startTime": "2025-05-01T10:00:01Z",
            "completionTime": "2025-05-01T10:00:09Z",
            "subtype": "success",
            "isError": False,
            "numTurns": 1,
            "totalCostUsd": 0.0031,
            "usage": {"input_tokens": 12, "server_tool_use": {"web_search_requests": 0}},
            "modelUsage": {"claude-sonnet-4-5": {"inputTokens": 12, "costUSD": 0.0031}},
            "durationMs": 8123,
            "stopReason": "end_turn",
            "terminalReason": "completed",
            "resultPreview": "Hello!",
            "structuredOutput": [1, "two", {"three": 3}],
            "errors": [],
            "permissionDenials": 0,
            "resultRef": "s3://bucket/team-a/hello/result.json",
            "transcriptRef": "s3://bucket/team-a/hello/transcript.jsonl",
            "conditions": [
                {
                    "type": "Succeeded",
                    "status": "True",
                    "reason": "Completed",
                    "message": "",
                    "lastTransitionTime": "2025-05-01T10:00:09Z",
                    "observedGeneration": 1,
                },
                {
                    "type": "Running",
                    "status": "False",
                    "reason": "Completed",
                    "message": "",
                    "lastTransitionTime": "2025-05-01T10:00:09Z",
                },
            ],
        },
    }


def test_from_body_parses_a_live_object() -> None:
    session = AgentSession.from_body(live_body())
    assert session.metadata.name == "hello"
    assert session.metadata.namespace == "team-a"
    assert session.metadata.generation == 1
    assert session.metadata.creation_timestamp == datetime(2025, 5, 1, 10, 0, tzinfo=UTC)
    assert session.spec.prompt == "Say hello."
    assert session.status is not None
    assert session.status.phase is Phase.SUCCEEDED
    assert session.status.reason is Reason.COMPLETED
    assert session.status.conditions is not None
    assert session.status.conditions[0].type == ConditionType.SUCCEEDED


def test_status_round_trips() -> None:
    body = live_body()
    session = AgentSession.from_body(body)
    assert session.status is not None
    assert session.status.to_wire() == body["status"]
    assert AgentSessionStatus.model_validate(session.status.to_wire()) == session.status


def test_metadata_keeps_only_what_the_operator_reads() -> None:
    wire = AgentSession.from_body(live_body()).to_wire()
    assert "managedFields" not in wire["metadata"]
    assert wire["metadata"]["resourceVersion"] == "4711"


def test_times_serialize_as_kubernetes_writes_them() -> None:
    local = datetime(2025, 5, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    condition = Condition(
        type=ConditionType.RUNNING,
        status="True",
        reason="PodRunning",
        message="",
        last_transition_time=local,
    )
    assert condition.to_wire()["lastTransitionTime"] == "2025-05-01T10:00:00Z"
    with pytest.raises(pydantic.ValidationError):
        Condition(
            type="Running",
            status="True",
            reason="PodRunning",
            message="",
            last_transition_time=datetime(2025, 5, 1),  # naive: ambiguous
        )


def test_status_enums_match_the_contract() -> None:
    assert [p.value for p in Phase] == [
        "Pending",
        "Queued",
        "Running",
        "Suspended",
        "Paused",
        "Succeeded",
        "Failed",
    ]
    assert [c.value for c in ConditionType] == ["Succeeded", "Running", "Admitted"]
    assert [r.value for r in AdmissionReason] == [
        "Admitted",
        "BudgetExhausted",
        "ConcurrencyLimited",
        "ExceedsBudgetLimit",
        "BudgetRequiresMaxBudgetUsd",
        "BudgetInvalid",
    ]
    status = AgentSessionStatus(phase=Phase.FAILED, reason=Reason.BUDGET_EXCEEDED)
    assert status.to_wire() == {"phase": "Failed", "reason": "BudgetExceeded"}


def test_status_bounds_match_what_the_api_server_enforces() -> None:
    with pytest.raises(pydantic.ValidationError):
        AgentSessionStatus(result_preview="x" * 1025)
    with pytest.raises(pydantic.ValidationError):
        AgentSessionStatus(errors=["e"] * 17)
    with pytest.raises(pydantic.ValidationError):
        Condition(
            type="Succeeded",
            status="Maybe",
            reason="X",
            message="",
            last_transition_time=datetime.now(UTC),
        )


def test_spec_fields_carry_over_to_the_runner_config() -> None:
    # The contract's RunConfig reuses the spec's names, so the operator can copy them across.
    spec = AgentSessionSpec.model_validate(
        {
            "prompt": "hi",
            "model": "opus",
            "fallbackModel": "sonnet",
            "systemPromptPreset": {"append": "Be brief."},
            "allowedTools": ["Read"],
            "permissionMode": "plan",
            "agents": {"r": {"description": "reviews", "prompt": "You review."}},
            "mcpServers": {"docs": {"type": "http", "url": "https://mcp.example.com"}},
            "outputFormat": {"schema": {"type": "object"}},
        }
    )
    shared = spec.model_dump(include=set(RunConfig.model_fields), exclude_none=True)
    config = RunConfig(
        **shared,
        max_turns=10,
        max_budget_usd=1.0,
        store="s3://bucket/sessions",
        namespace="team-a",
        session_name="hello",
    )
    assert config.agents == spec.agents
    assert config.mcp_servers == spec.mcp_servers
    assert config.output_format == spec.output_format


# --- admission bounds (issue 12: no spec the API server accepts wedges the operator) -----------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2, "2"),
        ("500m", "0.5"),
        ("1Gi", "1073741824"),
        ("1G", "1000000000"),
        ("1e3", "1000"),
        ("1E-3", "0.001"),
        ("+1.", "1"),
        (".5", "0.5"),
        ("-1", "-1"),
        ("0.0000000001", "0.000000001"),  # rounded up to 1n, as resource.ParseQuantity does
        ("1e999", "1e999"),
    ],
)
def test_quantity_value(value: int | str, expected: str) -> None:
    assert quantity_value(value) == Decimal(expected)


@pytest.mark.parametrize("value", ["1e1.5", "lots", "1Ki2", ""])
def test_quantity_value_refuses_what_the_parser_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        quantity_value(value)


def test_resources_are_non_negative_and_requests_within_limits() -> None:
    ok = ResourceRequirements.model_validate(
        {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 1, "memory": "1024Mi"}}
    )
    assert ok.to_wire()["limits"]["cpu"] == 1
    for body, field_path in [
        ({"requests": {"cpu": "-1"}}, ".requests.cpu"),
        ({"limits": {"ephemeral-storage": -5}}, ".limits.ephemeral-storage"),
        ({"requests": {"memory": "2Gi"}, "limits": {"memory": "2G"}}, ".requests.memory"),
    ]:
        with pytest.raises(pydantic.ValidationError) as error:
            ResourceRequirements.model_validate(body)
        assert [f for _, f, _ in cel_failures(error.value)] == [field_path]


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        ("$(HOME)", True),
        ("x$(HOME)y", True),
        ("$$$(HOME)", True),
        ("$(", True),
        ("$$(HOME)", False),  # escaped: the agent sees the literal $(HOME)
        ("$$$$(HOME)", False),
        ("costs $5 (or so)", False),
        ("$HOME", False),  # shell syntax, not Kubernetes': left to the agent's shell
        ("", False),
    ],
)
def test_env_values_refuse_kubernetes_expansion(value: str, refused: bool) -> None:
    if not refused:
        assert EnvVar(name="A", value=value).value == value
        return
    with pytest.raises(pydantic.ValidationError) as error:
        EnvVar(name="A", value=value)
    ((_loc, field_path, message),) = cel_failures(error.value)
    assert field_path == ".value"
    assert "$$(" in message


@pytest.mark.parametrize(
    "name",
    [
        "NODE_TLS_REJECT_UNAUTHORIZED",
        "NODE_EXTRA_CA_CERTS",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "OPENSSL_CONF",
        "BASH_ENV",
        "ENV",
        "LD_LIBRARY_PATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "GIT_SSL_NO_VERIFY",
        "ALL_PROXY",
        "no_proxy",
    ],
)
def test_tls_trust_and_loader_variables_are_reserved(name: str) -> None:
    assert is_reserved_env_name(name)


@pytest.mark.parametrize(
    ("model", "ok"),
    [
        ("sonnet", True),
        ("opus[1m]", True),
        ("claude-opus-4-1-20250805", True),
        ("claude-opus-4-1@20250805", True),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", True),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-x-v1:0",
            True,
        ),
        ("claude sonnet", False),
        ("--model=x", False),
        ("sonnet\n", False),
        ("$(MODEL)", False),
    ],
)
def test_model_ids(model: str, ok: bool) -> None:
    body = {"prompt": "hi", "model": model, "agents": {"a": {"description": "d", "prompt": "p"}}}
    body["agents"]["a"]["model"] = model  # type: ignore[index]
    if ok:
        spec = AgentSessionSpec.model_validate(body)
        assert spec.model == model
    else:
        with pytest.raises(pydantic.ValidationError) as error:
            AgentSessionSpec.model_validate(body)
        assert {e["loc"] for e in error.value.errors()} == {("model",), ("agents", "a", "model")}


@pytest.mark.parametrize("key", ["github", "test-writer", "a_b-9", "x" * 64])
def test_agent_and_mcp_server_names(key: str) -> None:
    body: dict[str, Any] = {
        "prompt": "hi",
        "agents": {key: {"description": "d", "prompt": "p"}},
        "mcpServers": {key: {"type": "http", "url": "https://mcp.example.com"}},
    }
    assert AgentSessionSpec.model_validate(body).agents is not None
    for bad in ("x" * 65, "-x", "x-", "a.b", "a b", ""):
        body = {"prompt": "hi", "mcpServers": {bad: {"type": "sse", "url": "http://m"}}}
        with pytest.raises(pydantic.ValidationError) as error:
            AgentSessionSpec.model_validate(body)
        assert [f for _, f, _ in cel_failures(error.value)] == [".mcpServers"]


def test_session_names_fit_a_label_value() -> None:
    body = {"metadata": {"name": "s" * 63}, "spec": {"prompt": "hi"}}
    assert AgentSession.from_body(body).metadata.name == "s" * 63
    with pytest.raises(pydantic.ValidationError, match="at most 63 characters"):
        AgentSession.from_body({**body, "metadata": {"name": "s" * 64}})
