"""A stand-in for `agent-runner` that spends at the wire: for budget tests with many sessions.

It does what the agent's CLI does to the session gateway, and nothing else: it waits for its pod's
gateway endpoint, sends one Messages API request through it (with the per-pod token, and the
prompt `$STUB_PROMPT` so the scripted API routes the reply), and leaves the summary of a
completed run. The real gateway meters the scripted reply's usage and writes the report the
operator charges, so a session's cost is real metering of a known reply; only the `claude` CLI's
start-up (seconds of CPU per session, which 200 sessions on 2 cores cannot afford) is skipped.
Runs with the runner image's Python (stdlib only); passed as AGENTSESSION_RUNNER_COMMAND, whose
entries are comma-separated, hence base64.
"""

from __future__ import annotations

import base64

from agentsession_contract.gateway import ENDPOINT_FILE, TOKEN_HEADER
from agentsession_contract.run import Reason, RunSummary

_SCRIPT = """
import json, os, time, urllib.request
path = os.path.join(os.environ["AGENTSESSION_GATEWAY_DIR"], ENDPOINT_FILE)
deadline = time.monotonic() + 120
while True:
    try:
        with open(path) as handle:
            endpoint = json.load(handle)
        break
    except (OSError, ValueError):
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
body = {
    "model": os.environ.get("STUB_MODEL", "claude-sonnet-4-5"),
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": os.environ["STUB_PROMPT"]}],
}
request = urllib.request.Request(
    "http://127.0.0.1:%d/v1/messages" % endpoint["port"],
    data=json.dumps(body).encode(),
    headers={TOKEN_HEADER: endpoint["token"], "anthropic-version": "2023-06-01",
             "content-type": "application/json"},
)
with urllib.request.urlopen(request, timeout=60) as response:
    response.read()
with open("/dev/termination-log", "w") as log:
    log.write(SUMMARY)
"""


def completed_summary(message: str) -> str:
    """The termination message a completed one-turn run leaves (what stand-in runners write)."""
    return RunSummary(
        reason=Reason.COMPLETED,
        message=message,
        subtype="success",
        is_error=False,
        num_turns=1,
        duration_ms=1,
        result_preview="done",
    ).to_termination_message()


def metered_agent_command() -> list[str]:
    """The runner container's command (argv) for sessions that set env STUB_PROMPT."""
    summary = completed_summary("metered stand-in agent: one request through the gateway")
    script = (
        f"ENDPOINT_FILE = {ENDPOINT_FILE!r}\nTOKEN_HEADER = {TOKEN_HEADER!r}\n"
        f"SUMMARY = {summary!r}\n{_SCRIPT}"
    )
    encoded = base64.b64encode(script.encode()).decode()
    return ["python3", "-c", f"import base64;exec(base64.b64decode('{encoded}'))"]
