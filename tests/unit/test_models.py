"""The AgentSession pydantic models: wire names, defaults, round trips and their CEL twins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pydantic
import pytest

from agentsession_contract.run import OutputFormat, Reason, RunConfig, SystemPromptPreset
from agentsession_operator.models import (
    RESERVED_ENV_NAMES,
    AgentSession,
    AgentSessionSpec,
    AgentSessionStatus,
    Condition,
    ConditionType,
    EnvVar,
    EnvVarSource,
    KeySelector,
    Phase,
    ResumeSpec,
    is_reserved_env_name,
)
from agentsession_operator.models.spec import ResourceList, ResourceRequirements

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
    assert spec.to_wire() == {"prompt": "hi", "backoffLimit": 3}


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
    assert [p.value for p in Phase] == ["Pending", "Queued", "Running", "Succeeded", "Failed"]
    assert [c.value for c in ConditionType] == ["Succeeded", "Running"]
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
