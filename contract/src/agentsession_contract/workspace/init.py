"""The workspace init step's side of the contract: where its inputs are mounted, the environment
variables carrying git credentials (to it and to the gateway, never to the agent), and the report
it leaves in its termination message for the operator (status.workspace.sources)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Final, Literal

from pydantic import Field

from agentsession_contract.run import SUMMARY_MAX_BYTES, WireModel

INIT_CONTAINER = "workspace"
SOURCES_DIR = "/etc/agentsession/sources"
"""configMap and secret sources are mounted at `<SOURCES_DIR>/<source name>` (init step only)."""
GIT_STATE_DIR = "/var/lib/agentsession/git"
"""A volume of the init step and the gateway only: pristine copies of the git sources to push,
and the init step's HOME."""
GIT_CREDENTIAL_KEYS = ("username", "password")
"""The keys of a git credentials Secret read for an http(s) URL (a kubernetes.io/basic-auth
Secret; a token goes in `password`)."""
SSH_PRIVATE_KEY: Final = "ssh-privatekey"
"""The Secret key holding the SSH private key (a kubernetes.io/ssh-auth Secret's key)."""
SSH_KNOWN_HOSTS: Final = "known_hosts"
"""The Secret key holding the server's host keys, in OpenSSH's known_hosts format."""
SSH_CREDENTIAL_KEYS = (SSH_PRIVATE_KEY, SSH_KNOWN_HOSTS)
"""The keys of a git credentials Secret read for an ssh URL."""
SSH_URL_RE: Final = re.compile(r"^(ssh://|[A-Za-z0-9_][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9.-]*:)")
"""`ssh://user@host[:port]/path` or scp-like `user@host:path` (what admission lets through)."""

SourceResult = Literal["Fetched", "Restored", "Failed"]


def git_credential_env(source: str, key: str) -> str:
    """The environment variable holding one key of a git source's credentials Secret."""
    digest = hashlib.sha256(f"{source}\0{key}".encode()).hexdigest()[:16].upper()
    return f"AGENTSESSION_GIT_{digest}"


def is_ssh_url(url: str) -> bool:
    """Whether a git source's URL goes over ssh (else it is http or https)."""
    return SSH_URL_RE.match(url) is not None


def git_credential_keys(url: str) -> tuple[str, ...]:
    """The keys of the credentials Secret that a source with this URL uses."""
    return SSH_CREDENTIAL_KEYS if is_ssh_url(url) else GIT_CREDENTIAL_KEYS


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
