"""Stand-ins for the runner pod's two programs, for tests and benchmarks that measure the
operator rather than the claude CLI and the gateway (which take a CPU and ~90 MB per pod).

Both are `sh -c` scripts in the runner image: settings AGENTSESSION_RUNNER_COMMAND and
AGENTSESSION_GATEWAY_COMMAND (comma-separated argv). Used by bench/bench_operator.py,
bench/bench_budget.py and tests/e2e/test_fuzz.py.
"""

from __future__ import annotations

import base64
from decimal import Decimal

from agentsession_contract.gateway import GatewayReport
from tests.support.metered_agent import completed_summary

STUB_RESOURCES = {"cpu": "2m", "memory": "32Mi", "ephemeral-storage": "64Mi"}
"""Stub pods are tiny: 200 of them fit the node's 2 CPUs at once."""


def stub_command() -> list[str]:
    """A stand-in for agent-runner, in the runner image: after $STUB_SLEEP seconds, the summary a
    completed run leaves, then exit 0. Base64 keeps the JSON's commas out of the comma-separated
    AGENTSESSION_RUNNER_COMMAND."""
    summary = completed_summary("benchmark stub runner")
    encoded = base64.b64encode(summary.encode()).decode()
    script = f"sleep ${{STUB_SLEEP:-0}}; echo {encoded} | base64 -d > /dev/termination-log"
    return ["sh", "-c", script]


def stub_gateway_command() -> list[str]:
    """A stand-in for the session gateway sidecar: idle until the kubelet's SIGTERM (after the
    stub runner ended), then the report of an attempt that spent nothing, then exit 0. The
    operator benchmark measures the operator; a real gateway per pod (a Python process, ~90 MB)
    would make 200 pods at once a measure of the node's start-up throughput instead."""
    report = GatewayReport(
        budget_usd=Decimal(1), spent_usd=Decimal(0), requests=0, ended="stopped"
    ).to_termination_message()
    encoded = base64.b64encode(report.encode()).decode()
    script = (
        f"trap 'echo {encoded} | base64 -d > /dev/termination-log; exit 0' TERM; "
        "while :; do sleep 1 & wait $!; done"
    )
    return ["sh", "-c", script]
