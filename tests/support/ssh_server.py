"""A real git server over ssh on loopback: OpenSSH's own `sshd` on a free port, a host key made
for this run, one authorized client key whose sessions may run only `git-shell` (upload-pack and
receive-pack), serving the bare repositories of a `GitServer` root.

Used by the workspace tests for ssh sources: clone at a ref, push a branch, a wrong key, an
unknown host key. `accepted_keys()` reads sshd's log: the fingerprints that authenticated.
sshd comes from Debian's openssh-server, installed by hack/ensure-packages.sh when missing (as
root; otherwise the fixture fails with the exact apt-get line).
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.git_server import GitServer

REPO_ROOT = Path(__file__).resolve().parents[2]
SSHD = Path("/usr/sbin/sshd")
PACKAGES = ("openssh-server", "openssh-client")
START_SECONDS = 20.0


def ensure_sshd() -> None:
    """openssh-server (and the client), installed by the project's package script if missing."""
    if (
        SSHD.exists()
        and subprocess.run(["which", "ssh-keygen"], capture_output=True).returncode == 0
    ):
        return
    script = REPO_ROOT / "hack" / "ensure-packages.sh"
    result = subprocess.run([str(script), *PACKAGES], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the ssh tests need {' '.join(PACKAGES)}: {result.stderr.strip()}")


def keygen(path: Path, comment: str) -> str:
    """A new passphrase-less ed25519 key at `path`; its public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def fingerprint(public_key: str) -> str:
    result = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"],
        input=public_key,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SshGitServer(GitServer):
    """Serves every bare repository under `root` at ssh://<user>@127.0.0.1:<port>/<root>/<name>.git
    (the user is whoever runs the tests: sshd not run as root can log in only its own user)."""

    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sshd-")))
    user: str = field(default_factory=getpass.getuser)
    client_public_key: str = ""
    host_public_key: str = ""
    _port: int = 0
    _process: subprocess.Popen[bytes] | None = None

    @property
    def client_key(self) -> str:
        """The authorized client's private key (what the Secret's `ssh-privatekey` holds)."""
        return (self.home / "client_ed25519").read_text()

    @property
    def known_hosts(self) -> str:
        """This server's line for a known_hosts file (what the Secret's `known_hosts` holds)."""
        return f"[127.0.0.1]:{self.port} {self.host_public_key}\n"

    @property
    def port(self) -> int:
        return self._port

    def url(self, name: str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{self.root}/{name}.git"

    def start(self) -> None:
        ensure_sshd()
        self.home.chmod(0o700)
        self.host_public_key = keygen(self.home / "host_ed25519", "test-host")
        self.client_public_key = keygen(self.home / "client_ed25519", "agentsession-test")
        # Only git-shell, whatever the client asks: upload-pack and receive-pack, nothing else.
        (self.home / "authorized_keys").write_text(
            f'restrict,command="git-shell -c \\"$SSH_ORIGINAL_COMMAND\\"" '
            f"{self.client_public_key}\n"
        )
        self._port = _free_port()
        config = self.home / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self._port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.home / 'host_ed25519'}",
                    f"PidFile {self.home / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.home / 'authorized_keys'}",
                    f"AllowUsers {self.user}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    # git's protocol v2 (fetching a commit by id, ls-remote --symref) over ssh.
                    "AcceptEnv GIT_PROTOCOL",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
        self._process = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(config), "-E", str(self.home / "sshd.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self._port), timeout=1):
                    return
            except OSError:
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"sshd did not listen: {self.log()}") from None
            time.sleep(0.05)  # polls sshd's port, within the deadline

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def log(self) -> str:
        path = self.home / "sshd.log"
        return path.read_text() if path.exists() else ""

    def accepted_keys(self) -> list[str]:
        """The fingerprints of the keys sshd accepted, in order."""
        return re.findall(r"Accepted publickey for \S+ .* (SHA256:\S+)", self.log())
