"""Baseline for bench_runner.py: the same resumed session through a bare `query()`, no store.

The transcript to resume is already in this process's CLAUDE_CONFIG_DIR, as the CLI itself would
have left it; argv: WORKSPACE SESSION_ID PROMPT MAX_TURNS.
"""

from __future__ import annotations

import asyncio
import os
import sys

from claude_agent_sdk import ClaudeAgentOptions, ResultMessage, query


async def main(workspace: str, session_id: str, prompt: str, max_turns: int) -> int:
    options = ClaudeAgentOptions(
        cwd=workspace,
        env={"CLAUDE_CONFIG_DIR": os.environ["CLAUDE_CONFIG_DIR"]},
        setting_sources=[],
        resume=session_id,
        max_turns=max_turns,
        max_budget_usd=5.0,
        model="claude-sonnet-4-5",
        allowed_tools=["Bash"],
    )
    turns = 0
    async for message in query(prompt=prompt, options=options):
        if isinstance(message, ResultMessage):
            turns = message.num_turns
    print(f"turns={turns}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))))
