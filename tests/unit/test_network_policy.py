"""The runner NetworkPolicy: its egress template (no metadata address reachable), the policy the
operator applies and when it is current."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from pydantic import ValidationError

from agentsession_operator.models import AgentSession
from agentsession_operator.reconcile.network_policy import (
    is_current,
    runner_network_policy,
)
from agentsession_operator.reconcile.podspec import build_pod, run_config_for
from agentsession_operator.settings import NetworkPolicyMode, OperatorSettings

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
DNS = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}],
}


def settings(*egress: dict[str, Any], **extra: Any) -> OperatorSettings:
    return OperatorSettings(
        store_url="s3://bucket/agents",
        runner_network_policy="create",
        runner_network_policy_egress=json.dumps(list(egress)),
        **extra,
    )


def ip_rule(cidr: str, *excepted: str) -> dict[str, Any]:
    block: dict[str, Any] = {"cidr": cidr}
    if excepted:
        block["except"] = list(excepted)
    return {"to": [{"ipBlock": block}], "ports": [{"port": 443}]}


@pytest.mark.parametrize(
    "rule",
    [
        ip_rule("160.79.104.0/23"),
        ip_rule("2607:6bc0::/48"),
        ip_rule("0.0.0.0/0", "169.254.0.0/16"),
        ip_rule("0.0.0.0/0", "169.254.0.0/15", "10.0.0.0/8"),  # a wider except covers it too
        ip_rule("::/0", "fe80::/10", "fd00:ec2::254/128"),
        ip_rule("fd00:ec2::/64", "fd00:ec2::254/128"),
        DNS,
    ],
)
def test_rules_that_keep_metadata_addresses_out_are_accepted(rule: dict[str, Any]) -> None:
    assert settings(rule).runner_network_policy_egress


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (ip_rule("0.0.0.0/0"), "contains 169.254.0.0/16 (link-local, cloud metadata"),
        (ip_rule("169.0.0.0/8"), "add 169.254.0.0/16 to its except list"),
        (ip_rule("169.254.169.254/32"), "is inside 169.254.0.0/16"),
        (ip_rule("::/0", "fe80::/10"), "contains fd00:ec2::254/128"),
        (ip_rule("::/0", "fd00:ec2::254/128"), "contains fe80::/10"),
        (ip_rule("fe80::/64"), "is inside fe80::/10"),
        (ip_rule("10.0.0.0/8", "192.168.0.0/16"), "except 192.168.0.0/16 is not inside"),
        (ip_rule("10.0.0.1/8"), "has host bits set"),
        ({"to": [], "ports": [{"port": 443}]}, "at least 1 item"),
        ({"ports": [{"port": 443}]}, "Field required"),
        (
            {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]},
            "either an ipBlock or namespace/pod selectors",
        ),
        ({"to": [{}]}, "either an ipBlock or namespace/pod selectors"),
        ({"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"protocol": "ICMP"}]}, "TCP"),
    ],
)
def test_rules_that_could_reach_metadata_or_everything_are_refused(
    rule: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match="runner_network_policy_egress") as error:
        settings(rule)
    assert message in str(error.value)


def test_create_needs_rules_and_require_is_the_default() -> None:
    assert OperatorSettings(store_url="s3://b/p").runner_network_policy is NetworkPolicyMode.REQUIRE
    with pytest.raises(ValidationError, match="AGENTSESSION_RUNNER_NETWORK_POLICY_EGRESS"):
        OperatorSettings(store_url="s3://b/p", runner_network_policy="create")
    with pytest.raises(ValidationError, match="not valid JSON"):
        OperatorSettings(store_url="s3://b/p", runner_network_policy_egress="[{")


def test_the_policy_selects_exactly_the_runner_pods_the_operator_builds() -> None:
    configured = settings(DNS, ip_rule("0.0.0.0/0", "169.254.0.0/16"))
    policy = runner_network_policy(configured, "team-a")
    assert policy["metadata"] == {
        "name": "agentsession-runners",
        "namespace": "team-a",
        "labels": {
            "app.kubernetes.io/managed-by": "agentsession-operator",
            "app.kubernetes.io/component": "runner-network-policy",
        },
    }
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"]  # no rule: nothing may connect to a runner pod
    session = AgentSession.from_body(
        {
            "apiVersion": "agents.dev/v1alpha1",
            "kind": "AgentSession",
            "metadata": {"name": "hello", "namespace": "team-a", "uid": "u-1"},
            "spec": {"prompt": "hi"},
        }
    )
    pod = build_pod(session, 1, run_config_for(session, None, configured), configured)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    # The egress as the API server will store it: protocols explicit, empty parts left out.
    assert policy["spec"]["egress"] == [
        {**DNS, "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        {
            "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}}],
            "ports": [{"port": 443, "protocol": "TCP"}],
        },
    ]


def test_empty_parts_are_left_out_as_the_api_server_does_but_an_empty_selector_stays() -> None:
    rule = {
        "to": [{"namespaceSelector": {"matchLabels": {}}, "podSelector": {}}],
        "ports": [],
    }
    (stored,) = runner_network_policy(settings(rule), "team-a")["spec"]["egress"]
    assert stored == {"to": [{"namespaceSelector": {}, "podSelector": {}}]}


def test_a_policy_is_current_when_labels_and_spec_say_what_the_operator_would_apply() -> None:
    configured = settings(DNS)
    desired = runner_network_policy(configured, "team-a")
    stored = {
        "metadata": {**desired["metadata"], "uid": "x", "resourceVersion": "7"},
        "spec": json.loads(json.dumps(desired["spec"])),
    }
    assert is_current(stored, desired)
    assert not is_current(None, desired)
    widened = json.loads(json.dumps(stored))
    widened["spec"]["egress"].append({"to": [{"namespaceSelector": {}}]})
    assert not is_current(widened, desired)
    relabelled = json.loads(json.dumps(stored))
    relabelled["metadata"]["labels"] = {}
    assert not is_current(relabelled, desired)
