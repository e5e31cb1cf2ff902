"""The Secrets runner pods reference by name in a session namespace (API key, S3 credentials).

Used by the e2e and chart tests and by `make demo`: the operator never reads Secrets itself.
"""

from __future__ import annotations

from kubernetes import client

from tests.support.cluster import LocalCluster
from tests.support.runner_harness import TEST_API_KEY
from tests.support.s3server import ACCESS_KEY_ID, SECRET_ACCESS_KEY


def add_session_secrets(cluster: LocalCluster, namespace: str, api_key: str = TEST_API_KEY) -> None:
    """Create `anthropic-api-key` and `s3-credentials` in `namespace`."""
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
        core.create_namespaced_secret(
            namespace,
            {
                "metadata": {"name": "s3-credentials"},
                "stringData": {
                    "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
                    "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
                },
            },
        )
    finally:
        api_client.close()
