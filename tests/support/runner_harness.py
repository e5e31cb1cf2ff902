"""Runs the installed `agent-runner` console script as a real subprocess, the way a pod would.

Used by the runner tests, the runner benchmark and the demo: the child gets a clean environment
(no host credentials), the scripted API's base URL, and its own HOME, workspace and state dirs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEST_API_KEY = "sk-ant-test-0123456789abcdefSECRET"
"""A fake key shaped like a real one, so leak checks can search for it."""

BIN_DIR = Path(sys.executable).parent
AGENT_RUNNER = str(BIN_DIR / "agent-runner")


@dataclass
class RunnerResult:
    exit_code: int
    summary: dict[str, Any] | None
    logs: list[dict[str, Any]]
    stdout: str
    stderr: str
    state_dir: Path
    events: list[str] = field(default_factory=list)

    def logs_of(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.logs if line.get("event") == event]


def runner_env(
    base_url: str | None, home: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {
        "PATH": f"{BIN_DIR}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        # Fail fast on scripted HTTP errors; a test that wants CLI retries sets its own value.
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    if base_url is not None:
        env["ANTHROPIC_BASE_URL"] = base_url
        env["ANTHROPIC_API_KEY"] = TEST_API_KEY
    env.update(extra or {})
    return env


def run_agent_runner(
    config: Mapping[str, Any] | str | None,
    *,
    workdir: Path,
    base_url: str | None,
    env: Mapping[str, str] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[subprocess.Popen[str]], None] | None = None,
    timeout_s: float = 180,
    config_via_env: bool = False,
) -> RunnerResult:
    """Run one attempt; `config` may be a dict, raw text, or None (no config at all)."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    state_dir = workdir / "state"
    home.mkdir(exist_ok=True)
    child_env = runner_env(base_url, home, env)
    argv = [
        AGENT_RUNNER,
        "--result-file",
        str(workdir / "summary.json"),
        "--state-dir",
        str(state_dir),
    ]
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        if config_via_env:
            child_env["AGENTSESSION_RUN_CONFIG"] = text
        else:
            config_file = workdir / "config.json"
            config_file.write_text(text)
            argv += ["--config", str(config_file)]
    process = subprocess.Popen(
        argv,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=workdir,
    )
    if on_start is not None:
        on_start(process)
    stderr_chunks: list[str] = []
    stderr_reader = threading.Thread(
        target=lambda: stderr_chunks.append(process.stderr.read() if process.stderr else ""),
        daemon=True,
    )
    stderr_reader.start()
    timer = threading.Timer(timeout_s, process.kill)
    timer.start()
    stdout_lines: list[str] = []
    logs: list[dict[str, Any]] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            stdout_lines.append(line)
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            logs.append(record)
            if on_log is not None:
                on_log(record)
        exit_code = process.wait()
    finally:
        timer.cancel()
        stderr_reader.join(timeout=10)
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return RunnerResult(
        exit_code=exit_code,
        summary=summary,
        logs=logs,
        stdout="".join(stdout_lines),
        stderr="".join(stderr_chunks),
        state_dir=state_dir,
        events=[str(r.get("event")) for r in logs],
    )


LOCAL_ONLY_TYPES = frozenset({"api-request", "api-request-shape", "api-request-blob"})
"""Request-debug records the CLI keeps local by design; the runner does not upload them."""


def mirrored(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The transcript lines a complete store must hold: all but the CLI's local-only records."""
    return [e for e in lines if e.get("type") not in LOCAL_ONLY_TYPES]


def tapped_transcript_lines(state_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The transcript lines the CLI wrote locally during a run, by file (from the runner's tap)."""
    tap = state_dir / "tap"
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(tap.rglob("*.jsonl")):
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        found[str(path.relative_to(tap))] = lines
    return found


def base_config(store: str, workspace: Path, **overrides: Any) -> dict[str, Any]:
    """A minimal valid run config for the scripted API."""
    config: dict[str, Any] = {
        "prompt": "Say hello.",
        "model": "claude-sonnet-4-5",
        "maxTurns": 5,
        "maxBudgetUsd": 1.0,
        "store": store,
        "namespace": "team-a",
        "sessionName": "test-session",
        "workspace": str(workspace),
    }
    config.update(overrides)
    return config
