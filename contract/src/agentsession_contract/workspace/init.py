"""The workspace init step's side of the contract: where its inputs are mounted, the environment
variables carrying git credentials (to it and to the gateway, never to the agent), and the report
it leaves in its termination message for the operator (status.workspace.sources)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field

from agentsession_contract.run import SUMMARY_MAX_BYTES, WireModel

INIT_CONTAINER = "workspace"
SOURCES_DIR = "/etc/agentsession/sources"
"""configMap and secret sources are mounted at `<SOURCES_DIR>/<source name>` (init step only)."""
GIT_STATE_DIR = "/var/lib/agentsession/git"
"""A volume of the init step and the gateway only: pristine copies of the git sources to push,
and the init step's HOME."""
GIT_CREDENTIAL_KEYS = ("username", "password")
"""The keys of a git credentials Secret that are read (a kubernetes.io/basic-auth Secret)."""

SourceResult = Literal["Fetched", "Restored", "Failed"]


def git_credential_env(source: str, key: str) -> str:
    """The environment variable holding one key of a git source's credentials Secret."""
    digest = hashlib.sha256(f"{source}\0{key}".encode()).hexdigest()[:16].upper()
    return f"AGENTSESSION_GIT_{digest}"


GIT_STATE_DIR_ENV = "AGENTSESSION_GIT_STATE_DIR"


def pristine_repo(source: str, state_dir: str = GIT_STATE_DIR) -> str:
    """Where the init step keeps a pushed git source's fetched commit for the gateway."""
    return f"{state_dir}/{source}.git"


class SourceReport(WireModel):
    """How one source went (status.workspace.sources[])."""

    name: str
    path: str
    result: SourceResult
    commit: str | None = None
    message: str | None = Field(default=None, max_length=1024)


class InitReport(WireModel):
    """The init step's termination message: every source, and which one failed, if any."""

    sources: list[SourceReport] = Field(default_factory=list)
    restored_from: str | None = Field(
        default=None, description="The session whose snapshot was restored, if any."
    )
    retryable: bool | None = Field(
        default=None, description="When a source failed: whether a new attempt may help."
    )

    def to_termination_message(self) -> str:
        """Within the kubelet's 4096 bytes: messages are cut first."""
        data = self.to_wire()
        text = json.dumps(data, separators=(",", ":"))
        limit = 1024
        while len(text.encode()) > SUMMARY_MAX_BYTES and limit > 16:
            limit //= 2
            for source in data["sources"]:
                if source.get("message") and len(source["message"]) > limit:
                    source["message"] = source["message"][: limit - 1] + "…"
            text = json.dumps(data, separators=(",", ":"))
        return text
