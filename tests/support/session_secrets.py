"""The Secret runner pods reference by name in a session namespace (the API key).

Used by the e2e and chart tests and by `make demo`: the operator never reads Secrets itself. Store
credentials are not here: the operator vends them per attempt (docs/store.md#credentials).
"""

from __future__ import annotations

from kubernetes import client

from tests.support.cluster import LocalCluster
from tests.support.runner_harness import TEST_API_KEY


def add_session_secrets(cluster: LocalCluster, namespace: str, api_key: str = TEST_API_KEY) -> None:
    """Create `anthropic-api-key` in `namespace`."""
    api_client = cluster.api_client()
    core = client.CoreV1Api(api_client)
    try:
        core.create_namespaced_secret(
            namespace,
            {
                "metadata": {"name": "anthropic-api-key"},
                "stringData": {"ANTHROPIC_API_KEY": api_key},
            },
        )
    finally:
        api_client.close()
