"""Pure pieces of the runner: result mapping, summary bounds, reconciliation diff, redaction."""

from __future__ import annotations

import json
from typing import Any

import pytest
from claude_agent_sdk import ResultMessage

from agentsession_contract.redaction import redact
from agentsession_contract.run import SUMMARY_MAX_BYTES, Reason, RunSummary
from agentsession_runner.cli import ConfigError, load_config
from agentsession_runner.run import reason_for_result, summary_from_result
from agentsession_runner.transcripts import StoredEntries, missing_entries


def result(**overrides: Any) -> ResultMessage:
    fields: dict[str, Any] = {
        "subtype": "success",
        "duration_ms": 10,
        "duration_api_ms": 5,
        "is_error": False,
        "num_turns": 1,
        "session_id": "s",
    }
    fields.update(overrides)
    return ResultMessage(**fields)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({}, Reason.COMPLETED),
        ({"subtype": "error_max_turns", "is_error": True}, Reason.MAX_TURNS_REACHED),
        ({"subtype": "error_max_budget_usd", "is_error": True}, Reason.BUDGET_EXCEEDED),
        ({"is_error": True, "api_error_status": 529}, Reason.API_ERROR),
        # No HTTP answer (the gateway restarting): the CLI reports no status.
        ({"is_error": True, "terminal_reason": "api_error"}, Reason.API_ERROR),
        ({"subtype": "error_during_execution", "is_error": True}, Reason.EXECUTION_ERROR),
        ({"is_error": True}, Reason.EXECUTION_ERROR),
    ],
)
def test_reason_for_result(overrides: dict[str, Any], reason: Reason) -> None:
    assert reason_for_result(result(**overrides)) is reason


def test_summary_is_bounded_even_for_huge_results() -> None:
    huge = result(
        result="x" * 100_000,
        errors=["e" * 3000] * 50,
        structured_output={"blob": "y" * 100_000},
        usage={"input_tokens": 1, "output_tokens": 2},
    )
    summary = summary_from_result(huge, Reason.COMPLETED).model_copy(
        update={"result_ref": "s3://b/p/ns/sessions/s/result.json"}
    )
    message = summary.to_termination_message()
    assert len(message.encode()) <= SUMMARY_MAX_BYTES
    decoded = json.loads(message)
    assert decoded["reason"] == "Completed"
    assert decoded["resultRef"] == "s3://b/p/ns/sessions/s/result.json"
    assert "structuredOutput" not in decoded  # too large: only in the full result document
    assert len(decoded["resultPreview"]) <= 1024


def test_summary_keeps_small_structured_output() -> None:
    summary = summary_from_result(result(structured_output={"answer": 42}), Reason.COMPLETED)
    assert json.loads(summary.to_termination_message())["structuredOutput"] == {"answer": 42}


def test_missing_entries_uses_uuid_identity_and_content_for_the_rest() -> None:
    local = [
        {"type": "user", "uuid": "a"},
        {"type": "title", "title": "t"},
        {"type": "assistant", "uuid": "b"},
        {"type": "title", "title": "t"},
        {"type": "assistant", "uuid": "c"},
    ]
    stored = [{"type": "user", "uuid": "a"}, {"type": "title", "title": "t"}]
    known = StoredEntries.of(stored)
    assert missing_entries(local, known) == [
        {"type": "assistant", "uuid": "b"},
        {"type": "title", "title": "t"},
        {"type": "assistant", "uuid": "c"},
    ]
    assert missing_entries(local, known) == missing_entries(local, known), "known is not consumed"
    assert missing_entries(local, StoredEntries.of(local)) == []


def test_redact_hides_keys_and_tokens() -> None:
    text = 'key sk-ant-api03-abcdefghijklmnop and Bearer abc.def.ghijkl and "api_key": "hunter22"'
    cleaned = redact(text)
    assert "sk-ant-api03" not in cleaned
    assert "abc.def.ghijkl" not in cleaned
    assert "hunter22" not in cleaned
    assert cleaned.count("[REDACTED]") == 3


def test_redact_hides_aws_keys_by_shape_and_by_name() -> None:
    text = (
        "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE sts ASIAJEXAMPLEXXXXXXXX "
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY "
        '"aws_session_token": "FwoGZXIvYXdzEBYaDExampleToken" ok AKIA-not-a-key'
    )
    cleaned = redact(text)
    for secret in ("AKIAIOSFODNN7EXAMPLE", "ASIAJEXAMPLEXXXXXXXX", "wJalrXUtnFEMI", "FwoGZXIv"):
        assert secret not in cleaned, cleaned
    assert "AKIA-not-a-key" in cleaned


def test_structured_output_is_redacted_inside_lists_and_keys() -> None:
    from agentsession_contract.redaction import redact_values

    value = {"found": ["sk-ant-api03-abcdefghijklmnop", 3, None], "sk-ant-keyname123": True}
    cleaned = redact_values(value)
    assert "sk-ant" not in json.dumps(cleaned)
    assert cleaned["found"][1:] == [3, None]


def test_load_config_names_the_bad_field() -> None:
    env = {"AGENTSESSION_RUN_CONFIG": json.dumps({"prompt": "x", "maxTurns": "many"})}
    with pytest.raises(ConfigError) as error:
        load_config(None, env)
    assert "maxTurns" in str(error.value)
    assert "maxBudgetUsd" in str(error.value)


def test_run_summary_round_trips_with_camel_case() -> None:
    summary = RunSummary(reason=Reason.API_ERROR, api_error_status=529, session_id="s")
    assert json.loads(summary.to_termination_message()) == {
        "reason": "APIError",
        "apiErrorStatus": 529,
        "sessionId": "s",
    }
