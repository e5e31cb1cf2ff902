"""`make demo-runner`: one agent session through the real runner and the real `claude` CLI, locally.

Offline (no ANTHROPIC_API_KEY) the CLI talks to the scripted Messages API from the test suite;
with ANTHROPIC_API_KEY set it talks to the real API. Transcripts go to a file:// store under
`.demo/`, the same layout an S3 store uses. Prints the result summary and where the transcript is.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import scripted_api as sa  # noqa: E402
from tests.support.runner_harness import run_agent_runner  # noqa: E402

DEMO_DIR = REPO / ".demo"
PROMPT = "List the files in the working directory, then tell me how many there are."


def print_log(record: dict[str, Any]) -> None:
    event = record.get("event")
    if event == "turn":
        tools = ", ".join(record.get("tools") or []) or "-"
        print(f"   turn {record['turn']}: tools={tools} cost≈${record['costSoFarUsdEstimate']:.6f}")
    elif event in ("session_started", "result", "run_finished", "run_failed", "invalid_config"):
        shown = {
            k: v for k, v in record.items() if k not in ("ts", "level", "namespace", "session")
        }
        print(f"   {json.dumps(shown)}")


def main() -> int:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    workspace = DEMO_DIR / "workspace"
    workspace.mkdir(parents=True)
    for name in ("README.md", "main.py", "notes.txt"):
        (workspace / name).write_text(f"demo file {name}\n")
    store_url = (DEMO_DIR / "store").as_uri()
    config = {
        "prompt": PROMPT,
        "maxTurns": 5,
        "maxBudgetUsd": 0.25,
        "timeoutSeconds": 300,
        "allowedTools": ["Bash"],
        "store": store_url,
        "namespace": "demo",
        "sessionName": "hello",
        "workspace": str(workspace),
    }
    real_key = os.environ.get("ANTHROPIC_API_KEY")
    api: sa.ScriptedAPI | None = None
    if real_key:
        print(">> ANTHROPIC_API_KEY is set: using the real Anthropic API (costs at most $0.25)")
        base_url = None
        env = {"ANTHROPIC_API_KEY": real_key}
        if os.environ.get("ANTHROPIC_BASE_URL"):
            env["ANTHROPIC_BASE_URL"] = os.environ["ANTHROPIC_BASE_URL"]
    else:
        print(">> No ANTHROPIC_API_KEY: using the scripted Messages API on loopback (offline)")
        api = sa.ScriptedAPI().start()
        api.script(
            sa.bash("ls -1"), sa.text("There are 3 files: README.md, main.py and notes.txt.")
        )
        config["model"] = "claude-sonnet-4-5"
        base_url, env = api.base_url, {}
    print(f">> Running agent-runner (store {store_url})")
    try:
        result = run_agent_runner(
            config, workdir=DEMO_DIR / "run", base_url=base_url, env=env, on_log=print_log
        )
    finally:
        if api is not None:
            api.stop()
    summary = result.summary or {}
    print("\n== Result summary (what the operator reads from the pod's termination message)")
    for field in ("reason", "subtype", "numTurns", "totalCostUsd", "sessionId", "resultPreview"):
        print(f"   {field:14} {summary.get(field)}")
    print(f"   {'exit code':14} {result.exit_code}")
    print("\n== Where it lives")
    print(f"   transcript     {summary.get('transcriptRef')}")
    print(f"   full result    {summary.get('resultRef')}")
    print(f"   runner logs    {len(result.logs)} JSON lines (shown above, abridged)")
    if result.exit_code != 0:
        print(result.stderr[-2000:], file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
