"""Operator settings come from AGENTSESSION_* variables; bad ones stop it with the name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from agentsession_operator.settings import OperatorSettings

OPERATOR = str(Path(sys.executable).parent / "agentsession-operator")


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSESSION_STORE_URL", "s3://bucket/agents")
    monkeypatch.setenv("AGENTSESSION_IMAGE_ALLOWLIST", "registry.example/a:1, registry.example/b/*")
    monkeypatch.setenv("AGENTSESSION_WATCH_NAMESPACES", "team-a,team-b")
    monkeypatch.setenv("AGENTSESSION_DEFAULT_MAX_TURNS", "7")
    settings = OperatorSettings()  # type: ignore[call-arg]
    assert settings.store_url == "s3://bucket/agents"
    assert settings.watch_namespaces == ["team-a", "team-b"]
    assert settings.default_max_turns == 7
    assert settings.image_allowed("registry.example/a:1")
    assert settings.image_allowed("registry.example/b/runner:9")
    assert not settings.image_allowed("registry.example/a:2")
    assert settings.image_allowed(settings.runner_image)


def test_defaults_must_fit_the_maximums() -> None:
    with pytest.raises(ValidationError, match="AGENTSESSION_DEFAULT_MAX_TURNS"):
        OperatorSettings(store_url="s3://b/p", default_max_turns=50, max_max_turns=10)


def test_operator_refuses_to_start_without_a_store() -> None:
    result = subprocess.run(
        [OPERATOR], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "AGENTSESSION_STORE_URL" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        (
            {
                "leader_election_lease_duration_seconds": 5,
                "leader_election_renew_deadline_seconds": 5,
            },
            "AGENTSESSION_LEADER_ELECTION_RENEW_DEADLINE_SECONDS must be shorter",
        ),
        (
            {
                "leader_election_renew_deadline_seconds": 2,
                "leader_election_retry_period_seconds": 2,
            },
            "AGENTSESSION_LEADER_ELECTION_RETRY_PERIOD_SECONDS times 1.2",
        ),
    ],
)
def test_leader_election_timings_must_let_the_leader_stop_first(
    overrides: dict[str, float], variable: str
) -> None:
    with pytest.raises(ValidationError, match=variable):
        OperatorSettings(store_url="s3://b/p", **overrides)  # type: ignore[arg-type]


def test_default_leader_election_timings_are_valid_and_off() -> None:
    settings = OperatorSettings(store_url="s3://b/p")
    assert settings.leader_election is False
    assert (
        settings.leader_election_lease_duration_seconds,
        settings.leader_election_renew_deadline_seconds,
        settings.leader_election_retry_period_seconds,
    ) == (10, 7.0, 1.0)


def test_operator_names_a_bad_leader_election_timing() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "AGENTSESSION_STORE_URL": "s3://b/p",
        "AGENTSESSION_LEADER_ELECTION_RENEW_DEADLINE_SECONDS": "30",
    }
    result = subprocess.run([OPERATOR], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "AGENTSESSION_LEADER_ELECTION_RENEW_DEADLINE_SECONDS must be shorter" in result.stderr
