"""How git authenticates to a source's remote, for the workspace init step (fetch) and the
gateway (push): the only two processes whose environment holds a source's credentials.

http(s): a credential helper that reads `username` and `password` from the environment (nothing
written to a file or a URL). ssh: the Secret's `ssh-privatekey` and `known_hosts` written to a
private directory (0700, files 0600) under the git-state volume (which the agent's container
never mounts), used by one git command through `GIT_SSH_COMMAND` with strict host key checking,
no agent, no user configuration, and removed when the command is done.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from agentsession_contract.workspace.init import (
    SSH_KNOWN_HOSTS,
    SSH_PRIVATE_KEY,
    git_credential_env,
    is_ssh_url,
)

SSH_CONNECT_TIMEOUT_SECONDS = 30
_HELPER = (
    '!f() { test "$1" = get || return 0; '
    'printf "username=%s\\npassword=%s\\n" '
    '"$AGENTSESSION_GIT_USERNAME" "$AGENTSESSION_GIT_PASSWORD"; }; f'
)


def base_env(environ: Mapping[str, str], home: str, allow_protocol: str) -> dict[str, str]:
    """The environment every git command of the init step and the gateway runs with: no
    prompts, no system or user config, and only the transports `allow_protocol` names (ssh is
    added for an ssh source's remote commands by `remote_env`)."""
    return {
        "PATH": environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "LANG": "C.UTF-8",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        # The pristine repositories belong to the init step's UID, and the gateway runs as
        # another: they are ours (a volume the agent does not mount), so trust any owner.
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "safe.directory",
        "GIT_CONFIG_VALUE_0": "*",
        "GIT_ALLOW_PROTOCOL": allow_protocol,
    }


class CredentialsError(Exception):
    """The source's credentials cannot be used as they are (a missing Secret key): no retry
    fixes it. The message names the Secret and the key, never a value."""


def _secret(name: str | None) -> str:
    return f"Secret {name}" if name else "the credentials Secret"


def _write_private(path: Path, text: str) -> None:
    # OpenSSH refuses a key file without its final newline, and any key file others can read.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text.strip().replace("\r\n", "\n") + "\n")


def ssh_command(key: Path, known_hosts: Path) -> str:
    """`GIT_SSH_COMMAND`: this key only, these host keys only, nothing asked, nothing read
    from the user's or the system's ssh configuration, nothing written."""
    options = [
        "-F",
        "/dev/null",
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        f"ConnectTimeout={SSH_CONNECT_TIMEOUT_SECONDS}",
    ]
    return shlex.join(["ssh", *options])


@contextmanager
def remote_env(
    base: Mapping[str, str],
    *,
    url: str,
    source: str,
    credentials: bool,
    secret: str | None,
    environ: Mapping[str, str],
    private_root: Path,
) -> Iterator[dict[str, str]]:
    """`base` plus what one git command needs to reach `url` as `source` with its credentials
    (`secret` names its Secret, None when it has none). An ssh URL also allows the ssh transport
    and needs a key and host keys: without them, `CredentialsError`."""
    env = dict(base)
    if not is_ssh_url(url):
        if credentials:
            env["AGENTSESSION_GIT_USERNAME"] = environ.get(
                git_credential_env(source, "username"), "x-access-token"
            )
            env["AGENTSESSION_GIT_PASSWORD"] = environ.get(
                git_credential_env(source, "password"), ""
            )
            # Asked only when the server wants credentials; nothing is written to a file.
            count = int(env.get("GIT_CONFIG_COUNT", "0"))
            env[f"GIT_CONFIG_KEY_{count}"] = "credential.helper"
            env[f"GIT_CONFIG_VALUE_{count}"] = _HELPER
            env["GIT_CONFIG_COUNT"] = str(count + 1)
        yield env
        return
    if not credentials:
        raise CredentialsError(
            f"an ssh URL needs git.credentialsSecretRef with keys {SSH_PRIVATE_KEY} and "
            f"{SSH_KNOWN_HOSTS}"
        )
    key = environ.get(git_credential_env(source, SSH_PRIVATE_KEY), "")
    known_hosts = environ.get(git_credential_env(source, SSH_KNOWN_HOSTS), "")
    if not key.strip():
        raise CredentialsError(
            f"{_secret(secret)} has no key {SSH_PRIVATE_KEY} (the SSH private key an ssh URL needs)"
        )
    if not known_hosts.strip():
        raise CredentialsError(
            f"{_secret(secret)} has no key {SSH_KNOWN_HOSTS}: an ssh URL needs the server's "
            "host key (`ssh-keyscan -p PORT HOST`, checked out of band); unknown host keys "
            "are refused"
        )
    private_root.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=".ssh-", dir=private_root))
    try:
        _write_private(private / "key", key)
        _write_private(private / "known_hosts", known_hosts)
        env["GIT_SSH_COMMAND"] = ssh_command(private / "key", private / "known_hosts")
        env["GIT_SSH_VARIANT"] = "ssh"
        allowed = [p for p in env.get("GIT_ALLOW_PROTOCOL", "").split(":") if p]
        env["GIT_ALLOW_PROTOCOL"] = ":".join([*allowed, "ssh"])
        yield env
    finally:
        shutil.rmtree(private, ignore_errors=True)
