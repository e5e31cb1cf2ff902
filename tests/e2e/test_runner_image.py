"""The runner image on its own: the pod the operator builds, created directly, completes a scripted
session on the real node with a read-only root as UID 65532 and persists it to S3.

No operator runs the pod here: this proves the image and the pod contract (run config, env,
volumes, termination message), whatever reconciles it.
"""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client

from agentsession_operator.models import AgentSession
from agentsession_operator.reconcile.podspec import build_pod, run_config_for, store_secret
from agentsession_operator.settings import OperatorSettings
from tests.e2e.conftest import TranscriptLoader, marker, namespace_uid
from tests.support import scripted_api as sa
from tests.support.cluster import LocalCluster, pod_phase_in, wait_for_pod
from tests.support.node import LocalNode
from tests.support.s3server import REGION, TenantStore
from tests.support.session_secrets import add_session_secrets

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]


def test_runner_image_completes_a_session_read_only_as_uid_65532(
    local_cluster: LocalCluster,
    node: LocalNode,
    core: client.CoreV1Api,
    scripted_api: sa.ScriptedAPI,
    tenant_store: TenantStore,
    namespace: str,
    transcript: TranscriptLoader,
) -> None:
    add_session_secrets(local_cluster, namespace)
    tag = marker()
    probe = "id -u; touch /probe 2>/dev/null && echo root-writable || echo root-read-only; pwd"
    scripted_api.route(tag, sa.bash(probe), sa.text("Probed the container."))
    settings = OperatorSettings(
        store_url=tenant_store.url,
        s3_endpoint_url=tenant_store.server.endpoint_url,
        s3_region=REGION,
        store_role_arn=tenant_store.role_arn_template,
        anthropic_base_url=scripted_api.base_url,
        cli_max_retries=0,
        default_model="claude-sonnet-4-5",
        runner_image=node.images["runner"],
        runner_host_network=True,
    )
    session = AgentSession.from_body(
        {
            "apiVersion": "agents.dev/v1alpha1",
            "kind": "AgentSession",
            "metadata": {"name": "bare", "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": {"prompt": f"{tag}: probe the container", "allowedTools": ["Bash"]},
        }
    )
    uid = namespace_uid(local_cluster, namespace)  # the store is keyed by it
    config = run_config_for(session, None, settings, uid)
    pod = build_pod(session, 1, config, settings)
    del pod["metadata"]["ownerReferences"]  # the AgentSession exists only in this test
    del pod["metadata"]["labels"]["app.kubernetes.io/managed-by"]  # the e2e operator's not its
    secret = store_secret(session, "bare-1", tenant_store.credentials_for(namespace).env())
    del secret["metadata"]["ownerReferences"]
    core.create_namespaced_secret(namespace, secret)
    core.create_namespaced_pod(namespace, pod)

    done = wait_for_pod(core, namespace, "bare-1", pod_phase_in("Succeeded", "Failed"), timeout=120)
    (status,) = done.status.container_statuses
    assert status.image == node.images["runner"] or status.image.endswith(
        node.images["runner"].split("/", 1)[1]
    )
    terminated = status.state.terminated
    assert (done.status.phase, terminated.exit_code) == ("Succeeded", 0), node.logs(
        namespace, "bare-1"
    )
    summary = json.loads(terminated.message)
    assert summary["reason"] == "Completed"
    assert summary["resultPreview"] == "Probed the container."
    # What the agent's Bash tool saw inside the container.
    tool_result = scripted_api.requests_for(tag)[-1].text_content()
    assert "65532\nroot-read-only\n/workspace" in tool_result
    # And the transcript is in S3 under the session's namespace (as it exists now: its UID).
    lines = transcript(namespace, str(config.session_id))
    assert any("Probed the container." in json.dumps(line) for line in lines)
    assert summary["transcriptRef"].startswith(
        f"s3://{tenant_store.bucket.name}/agents/{namespace}/{uid}/"
    )
