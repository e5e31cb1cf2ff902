"""Baseline for bench_runner.py: the same forked resume through a bare `query()`, no store.

The transcript to resume is already in this process's CLAUDE_CONFIG_DIR, as the CLI itself would
have left it; it is forked, as the runner side forks it (so the CLI writes the same copy of the
history into a new session file on both sides); argv: WORKSPACE SESSION_ID PROMPT MAX_TURNS.
Prints one JSON line: the turns and the phases the runner logs too (ms: start to the first
message, the query to its result, the CLI's exit).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from claude_agent_sdk import ClaudeAgentOptions, ResultMessage, query


async def main(workspace: str, session_id: str, prompt: str, max_turns: int) -> int:
    options = ClaudeAgentOptions(
        cwd=workspace,
        env={"CLAUDE_CONFIG_DIR": os.environ["CLAUDE_CONFIG_DIR"]},
        setting_sources=[],
        resume=session_id,
        fork_session=True,
        max_turns=max_turns,
        max_budget_usd=5.0,
        model="claude-sonnet-4-5",
        allowed_tools=["Bash"],
    )
    turns = 0
    started = time.monotonic()
    first = result_at = None
    async for message in query(prompt=prompt, options=options):
        if first is None:
            first = time.monotonic()
        if isinstance(message, ResultMessage):
            turns = message.num_turns
            result_at = time.monotonic()
    ended = time.monotonic()
    assert first is not None
    assert result_at is not None
    phases = {
        "cli_start": (first - started) * 1000,
        "query": (result_at - first) * 1000,
        "cli_exit": (ended - result_at) * 1000,
    }
    print(json.dumps({"turns": turns, "phasesMs": phases}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))))
