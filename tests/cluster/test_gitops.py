"""The GitOps example: the kustomization renders and the API server accepts what it renders."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.cluster import LocalCluster

pytestmark = pytest.mark.cluster

KUSTOMIZATION = Path(__file__).resolve().parents[2] / "examples" / "kustomize"


def test_kustomization_renders_and_validates_server_side(
    local_cluster: LocalCluster, namespace: str
) -> None:
    rendered = local_cluster.kubectl("kustomize", str(KUSTOMIZATION))
    assert rendered.returncode == 0, rendered.stderr
    documents = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert [d["metadata"]["name"] for d in documents] == ["triage-1", "triage-2"]
    assert all(d["spec"]["maxBudgetUsd"] == 0.25 for d in documents)
    assert all(d["metadata"]["labels"]["team"] == "platform" for d in documents)
    # Apply into the test's namespace: the kustomization's own namespace need not exist.
    for document in documents:
        document["metadata"]["namespace"] = namespace
    applied = local_cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input_text=yaml.safe_dump_all(documents)
    )
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("(server dry run)") == 2
