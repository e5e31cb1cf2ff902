"""How git reaches a source's remote (agentsession_gateway.git_auth) and what the init step makes
of ssh's errors: which URLs go over ssh (the same ones admission lets through as ssh), the key's
private directory (0700, files 0600, gone afterwards, also when the command fails), and ssh's
failures sorted into final and retryable."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from agentsession_contract.workspace.init import git_credential_env, is_ssh_url
from agentsession_gateway import git_auth
from agentsession_gateway.workspace_init import classify_git_error
from agentsession_operator.models.workspace import GIT_URL_PATTERN

SSH_URLS = [
    "ssh://git@github.com/org/repo.git",
    "ssh://git@git.example.com:2222/org/repo.git",
    "ssh://deploy@[::1]:22/srv/repo.git",
    "git@github.com:org/repo.git",
    "git@git.example.com:/srv/repo.git",
]
HTTP_URLS = ["https://github.com/org/repo.git", "http://git.svc:8080/org/repo.git"]


@pytest.mark.parametrize("url", SSH_URLS + HTTP_URLS)
def test_admitted_urls_are_ssh_exactly_when_not_http(url: str) -> None:
    assert re.match(GIT_URL_PATTERN, url)
    assert is_ssh_url(url) == (url in SSH_URLS)


def test_an_ssh_source_gets_a_private_key_file_for_one_command(tmp_path: Path) -> None:
    environ = {
        git_credential_env("repo", "ssh-privatekey"): "-----BEGIN KEY-----\nabc\n-----END KEY-----",
        git_credential_env("repo", "known_hosts"): "[h]:2222 ssh-ed25519 AAAA\n",
    }
    base = {"GIT_ALLOW_PROTOCOL": "http:https"}
    with git_auth.remote_env(
        base,
        url=SSH_URLS[1],
        source="repo",
        credentials=True,
        secret="git-ssh",
        environ=environ,
        private_root=tmp_path,
    ) as env:
        (private,) = tmp_path.glob(".ssh-*")
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        key = private / "key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_text().endswith("-----END KEY-----\n")  # ssh wants the final newline
        assert env["GIT_ALLOW_PROTOCOL"] == "http:https:ssh"
        command = env["GIT_SSH_COMMAND"]
        for option in (
            f"-i {key}",
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=yes",
            f"UserKnownHostsFile={private / 'known_hosts'}",
            "GlobalKnownHostsFile=/dev/null",
            "-F /dev/null",
        ):
            assert option in command
        # The key itself is in no variable git or ssh sees.
        assert not [v for v in env.values() if "BEGIN KEY" in v]
    assert not list(tmp_path.glob(".ssh-*"))
    with (
        pytest.raises(RuntimeError),
        git_auth.remote_env(
            base,
            url=SSH_URLS[3],
            source="repo",
            credentials=True,
            secret="git-ssh",
            environ=environ,
            private_root=tmp_path,
        ),
    ):
        raise RuntimeError("git failed")
    assert not list(tmp_path.glob(".ssh-*"))


@pytest.mark.parametrize(
    ("missing", "named"),
    [("known_hosts", "Secret git-ssh has no key known_hosts"), ("ssh-privatekey", "no key ssh")],
)
def test_an_ssh_secret_without_a_key_is_refused_naming_it(
    tmp_path: Path, missing: str, named: str
) -> None:
    environ = {
        git_credential_env("repo", key): "x"
        for key in ("ssh-privatekey", "known_hosts")
        if key != missing
    }
    with (
        pytest.raises(git_auth.CredentialsError, match=named),
        git_auth.remote_env(
            {},
            url=SSH_URLS[0],
            source="repo",
            credentials=True,
            secret="git-ssh",
            environ=environ,
            private_root=tmp_path,
        ),
    ):
        pass
    assert not list(tmp_path.glob(".ssh-*"))


def test_an_http_source_gets_the_credential_helper_and_no_ssh(tmp_path: Path) -> None:
    environ = {git_credential_env("repo", "password"): "tok"}
    with git_auth.remote_env(
        {"GIT_CONFIG_COUNT": "1", "GIT_ALLOW_PROTOCOL": "http:https"},
        url=HTTP_URLS[0],
        source="repo",
        credentials=True,
        secret="gc",
        environ=environ,
        private_root=tmp_path,
    ) as env:
        assert env["GIT_CONFIG_KEY_1"] == "credential.helper"
        assert env["GIT_CONFIG_COUNT"] == "2"
        assert env["AGENTSESSION_GIT_PASSWORD"] == "tok"
        assert "GIT_SSH_COMMAND" not in env
        assert env["GIT_ALLOW_PROTOCOL"] == "http:https"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("stderr", "retryable"),
    [
        (
            "git@127.0.0.1: Permission denied (publickey).\r\nfatal: Could not read from remote",
            False,
        ),
        ("No ED25519 host key is known for [h]:22\r\nHost key verification failed.\r\n", False),
        (
            "@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\nHost key verification failed.",
            False,
        ),
        ('Load key "/x/key": invalid format\r\ngit@h: Permission denied (publickey).', False),
        ("fatal: '/srv/nope.git' does not appear to be a git repository", False),
        ("ssh: connect to host h port 22: Connection refused\r\nfatal: Could not read", True),
        ("ssh: Could not resolve hostname h: Name or service not known", True),
        ("ssh: connect to host h port 22: Connection timed out", True),
        ("kex_exchange_identification: Connection closed by remote host", True),
        ("ssh: connect to host h port 22: No route to host", True),
    ],
)
def test_ssh_failures_are_final_or_retryable(stderr: str, retryable: bool) -> None:
    assert classify_git_error(stderr) is retryable
