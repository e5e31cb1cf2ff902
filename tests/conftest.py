"""Shared pytest fixtures: a moto S3 server for the session, a fresh bucket per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.s3server import MotoServer, S3Bucket

pytest_plugins = ["tests.support.cluster_fixtures"]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """One moto server (real HTTP on loopback) shared by every S3 test of the run."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_env(
    s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """boto3's standard environment pointing at the server, for this test."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    # Keep the developer's own AWS profile and config files out of the tests.
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    empty = tmp_path_factory.mktemp("aws") / "none"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))


@pytest.fixture
def s3_bucket(s3_server: MotoServer, s3_env: None) -> S3Bucket:
    """A new empty bucket, with boto3's standard environment pointing at the server."""
    return s3_server.create_bucket()
