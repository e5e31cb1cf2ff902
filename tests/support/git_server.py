"""A real git server on loopback: git's own `git http-backend` (smart HTTP, protocol v2) behind a
small threaded HTTP server that demands basic auth.

Used by the workspace tests: clone at a ref or commit, push a branch, wrong credentials (401),
a missing ref, a server error (`fail_next` answers 500s). Repositories are bare repositories
under `root`, made with `create_repo`; `requests` records who asked for what.
"""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

USERNAME = "agent-bot"
PASSWORD = "ghp_gitserver_test_token_0123456789SECRET"
"""Shaped like a real token, so leak checks can search for it."""

_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def git(*args: str, cwd: Path | None = None) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", **_GIT_ENV}
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {result.stderr}")
    return result.stdout.strip()


@dataclass
class Request:
    method: str
    path: str
    user: str | None
    status: int


@dataclass
class GitServer:
    """Serves every bare repository under `root` at http://127.0.0.1:<port>/<name>.git."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="git-server-")))
    username: str = USERNAME
    password: str = PASSWORD
    requests: list[Request] = field(default_factory=list)
    fail_next: int = 0
    """Answer this many requests with 500 (a flaky server)."""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> GitServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}.git"

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                user = server._authenticate(self.headers.get("Authorization"))
                with server._lock:
                    failing = server.fail_next > 0
                    if failing:
                        server.fail_next -= 1
                if failing:
                    self._reply(500, b"server error\n", user)
                    return
                if user is None:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    server._record(self.command, self.path, None, 401)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = self._read_chunked()
                path, _, query = self.path.partition("?")
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": str(server.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "GIT_CONFIG_NOSYSTEM": "1",
                    "GIT_CONFIG_GLOBAL": "/dev/null",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": user,
                    "REMOTE_ADDR": "127.0.0.1",
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                }
                result = subprocess.run(
                    ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
                )
                head, _, payload = result.stdout.partition(b"\r\n\r\n")
                status = 200
                headers: list[tuple[str, str]] = []
                for line in head.decode(errors="replace").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                server._record(self.command, self.path, user, status)

            def _read_chunked(self) -> bytes:
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()

            def _reply(self, status: int, body: bytes, user: str | None) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                server._record(self.command, self.path, user, status)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _authenticate(self, header: str | None) -> str | None:
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        return user if (user, password) == (self.username, self.password) else None

    def _record(self, method: str, path: str, user: str | None, status: int) -> None:
        with self._lock:
            self.requests.append(Request(method, path, user, status))

    # ---- repositories ---------------------------------------------------------------------

    def create_repo(
        self, name: str, commits: list[dict[str, str]], branch: str = "main"
    ) -> list[str]:
        """A bare repository `name.git` whose `branch` has one commit per files dict (each
        writes those files); returns the commit ids, oldest first."""
        bare = self.root / f"{name}.git"
        git("init", "-q", "--bare", f"--initial-branch={branch}", str(bare))
        git("config", "http.receivepack", "true", cwd=bare)
        work = Path(tempfile.mkdtemp(prefix=f"git-{name}-"))
        git("init", "-q", f"--initial-branch={branch}", str(work))
        ids = []
        for index, files in enumerate(commits):
            for rel, content in files.items():
                path = work / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
            git("add", "-A", cwd=work)
            git("commit", "-q", "-m", f"commit {index}", cwd=work)
            ids.append(git("rev-parse", "HEAD", cwd=work))
        git("push", "-q", str(bare), f"{branch}:{branch}", cwd=work)
        return ids

    def ref(self, name: str, ref: str) -> str | None:
        """The commit `ref` points at in repository `name`, or None."""
        try:
            return git("rev-parse", "--verify", "-q", ref, cwd=self.root / f"{name}.git")
        except RuntimeError:
            return None

    def show(self, name: str, spec: str) -> str:
        """`git show <spec>` in repository `name` (e.g. `branch:path` for a file's content)."""
        return git("show", spec, cwd=self.root / f"{name}.git")
