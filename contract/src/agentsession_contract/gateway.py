"""The session gateway's side of the contract: where the agent finds it, and what it reports.

The gateway (a native sidecar in every runner pod) writes `GatewayEndpoint` into the volume it
shares with the agent container (read-only there) once it listens; the runner reads it to reach
the Messages API and the transcript store through the gateway. `GatewayReport` is the
authoritative account of an attempt: the gateway writes it to its own termination message (which
the agent cannot reach) and the operator charges limits and cost from it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Literal

from pydantic import Field

from agentsession_contract.run import SUMMARY_MAX_BYTES, WireModel

SHARED_DIR = "/run/agentsession/gateway"
"""Mounted read-write in the gateway container and read-only in the agent container."""
ENDPOINT_FILE = "endpoint.json"
CONFIG_DIR = "/etc/agentsession"
"""The downward-API volume holding the run config (both containers, read-only)."""
CONFIG_FILE = "run-config"
CONFIG_ANNOTATION = "agents.dev/run-config"
"""The pod annotation the run config travels in (compact encoding: `run.encode_run_config`)."""
STORE_PATH = "/v1/store/"
"""Prefix of the transcript-store service (a Backend over HTTP) on the gateway's port."""
MCP_PATH = "/v1/mcp/"
"""Prefix of the MCP proxy: `/v1/mcp/<server name>/...` forwards to the server's real URL."""
REPORT_DIR = "gateway"
"""`sessions/<session id>/gateway/<attempt id>.json`: a session's directory only the gateway
writes (its attempt reports; the operator reads them when a pod vanished)."""
TOKEN_HEADER = "x-api-key"  # noqa: S105 - a header name, not a credential
"""Clients authenticate with the per-pod token here (the CLI sends ANTHROPIC_API_KEY in it)."""


class GatewayEndpoint(WireModel):
    """Where the agent container reaches its gateway; written once the gateway listens."""

    port: int = Field(ge=1, le=65535, description="Loopback port (ephemeral: never fixed).")
    token: str = Field(min_length=32, description="Per-pod token every request must carry.")
    store_uri: str = Field(description="URI of the session's store root, for refs in logs.")


WORKSPACE_PATH = "/v1/workspace/"
"""Prefix of the gateway's workspace service: `push` (a git source's work, committed and pushed
by the gateway with the source's credentials) and `base` (the commit it builds on)."""
ARTIFACT_PATH_HEADER = "X-Artifact-Path"
"""On a store write under `artifacts/`: the file's path in the workspace (for status)."""

GatewayEnd = Literal["running", "stopped", "budget_exhausted"]


class ArtifactRecord(WireModel):
    """One artifact file the gateway stored, as it saw the bytes."""

    name: str
    path: str
    key: str = Field(description="Its key in the store, relative to the namespace's root.")
    size: int = Field(ge=0)
    sha256: str


class PushRecord(WireModel):
    """One git push the gateway made (or refused to make)."""

    source: str
    branch: str | None = None
    commit: str | None = None
    pushed: bool
    message: str | None = None


class OutputsReport(WireModel):
    """What the attempt left behind, as the gateway stored or pushed it."""

    artifacts: list[ArtifactRecord] = Field(default_factory=list)
    git: list[PushRecord] = Field(default_factory=list)
    artifacts_left_out: int = Field(
        default=0, ge=0, description="Artifact files not listed (the termination message is full)."
    )


class ModelSpend(WireModel):
    """Metered usage of one model in one attempt."""

    requests: int = Field(ge=0)
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cache_read_input_tokens: int = Field(default=0, ge=0)
    cache_creation_input_tokens: int = Field(default=0, ge=0)
    cost_usd: Decimal = Field(ge=0)


class GatewayReport(WireModel):
    """The gateway's account of an attempt; the operator's only source for spend and turns."""

    budget_usd: Decimal = Field(ge=0, description="The attempt's cap (remaining maxBudgetUsd).")
    spent_usd: Decimal = Field(ge=0, description="Metered spend, fail-closed charges included.")
    fail_closed_usd: Decimal = Field(
        default=Decimal(0),
        ge=0,
        description="Part of spentUsd charged as an upper bound for streams cut before usage.",
    )
    in_flight_usd: Decimal = Field(
        default=Decimal(0),
        ge=0,
        description=(
            "Upper bound of the requests forwarded but not settled when this report was saved "
            "(0 in a final report). The operator charges it too when the report is all it has."
        ),
    )
    requests: int = Field(ge=0, description="Messages API requests forwarded and metered.")
    refused: int = Field(default=0, ge=0, description="Requests refused for the spent budget.")
    models: dict[str, ModelSpend] = Field(default_factory=dict)
    ended: GatewayEnd = Field(description="The gateway's view of how the attempt ended.")
    outputs: OutputsReport | None = Field(default=None, description="Artifacts and pushes.")

    def to_termination_message(self) -> str:
        """Within the kubelet's 4096 bytes: per-model detail goes first if it does not fit, then
        artifact entries (counted in artifactsLeftOut; the stored report keeps them all)."""
        data = self.to_wire()
        text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) > SUMMARY_MAX_BYTES:
            data.pop("models", None)
            text = json.dumps(data, separators=(",", ":"))
        outputs = data.get("outputs")
        while len(text.encode()) > SUMMARY_MAX_BYTES and outputs and outputs.get("artifacts"):
            outputs["artifacts"].pop()
            outputs["artifactsLeftOut"] = outputs.get("artifactsLeftOut", 0) + 1
            text = json.dumps(data, separators=(",", ":"))
        return text
