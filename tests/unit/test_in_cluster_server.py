"""The operator finds the API server where the kubelet says it is, as client-go does."""

from __future__ import annotations

import pytest

from agentsession_operator.kube.client import in_cluster_server


@pytest.mark.parametrize(
    ("env", "server"),
    [
        (
            {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
            "https://10.96.0.1:443",
        ),
        (
            {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"},
            "https://127.0.0.1:6443",
        ),
        (
            {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"},
            "https://[fd00::1]:443",
        ),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, None),
        ({}, None),
    ],
)
def test_in_cluster_server(env: dict[str, str], server: str | None) -> None:
    assert in_cluster_server(env) == server
