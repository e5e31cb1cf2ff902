"""The runner pods' NetworkPolicy in one namespace, as the operator applies it. Pure.

Called by the controller before it creates a runner pod in a namespace (settings
`runner_network_policy`: create, require, off). The policy selects every runner pod of the
namespace by the labels the operator puts on them, allows no ingress, and allows egress only as
the settings' template says (which keeps link-local and metadata addresses out, see
models.network_policy). NetworkPolicy is enforced by the cluster's CNI, not by the API server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentsession_operator.models.network_policy import compact
from agentsession_operator.reconcile.observed import (
    COMPONENT_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    RUNNER_COMPONENT,
)
from agentsession_operator.settings import OperatorSettings

POLICY_COMPONENT = "runner-network-policy"


def runner_selector() -> dict[str, Any]:
    """Every runner pod of a namespace: the labels build_pod puts on each."""
    return {"matchLabels": {MANAGED_BY_LABEL: MANAGED_BY, COMPONENT_LABEL: RUNNER_COMPONENT}}


def runner_network_policy(settings: OperatorSettings, namespace: str) -> dict[str, Any]:
    """The NetworkPolicy manifest for `namespace` (a server-side apply body)."""
    egress = [rule.to_wire() for rule in settings.runner_network_policy_egress]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": settings.runner_network_policy_name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, COMPONENT_LABEL: POLICY_COMPONENT},
        },
        "spec": {
            "podSelector": runner_selector(),
            # Both types with no ingress rules: nothing may connect to a runner pod.
            "policyTypes": ["Ingress", "Egress"],
            "egress": compact(egress),
        },
    }


def is_current(existing: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether the policy found in the namespace already is the one to apply (no write)."""
    if existing is None:
        return False
    labels = (existing.get("metadata") or {}).get("labels") or {}
    wanted = desired["metadata"]["labels"]
    same_labels = all(labels.get(key) == value for key, value in wanted.items())
    return same_labels and compact(existing.get("spec")) == desired["spec"]


NETWORK_POLICY_MISSING = "NetworkPolicyMissing"
"""Condition reason and Event: no runner pod starts until the namespace has its policy."""


def missing_policy_message(settings: OperatorSettings, namespace: str, problem: str) -> str:
    name = settings.runner_network_policy_name
    return (
        f"no runner pod starts in namespace {namespace} until NetworkPolicy {name} limits "
        f"runner egress there (AGENTSESSION_RUNNER_NETWORK_POLICY="
        f"{settings.runner_network_policy.value}): {problem}"
    )
