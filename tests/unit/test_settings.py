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
