"""The runner pods' NetworkPolicy egress rules, as the operator's settings carry them.

`OperatorSettings.runner_network_policy_egress` parses the chart's template (JSON in
AGENTSESSION_RUNNER_NETWORK_POLICY_EGRESS) into these; reconcile.network_policy builds the policy
the operator applies in each namespace from them. Shapes follow networking.k8s.io/v1
(NetworkPolicyEgressRule); what matters for safety is checked here, at start-up: every rule names
its destinations, and no destination reaches a link-local or cloud metadata address.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Final, Literal

from pydantic import Field, model_validator

from agentsession_contract.run import WireModel

METADATA_NETWORKS: Final = tuple(
    ipaddress.ip_network(cidr) for cidr in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128")
)
"""Link-local IPv4 (169.254.169.254 is the metadata service of AWS, GCP and Azure; 169.254.170.2
ECS task credentials), link-local IPv6, and AWS's IPv6 metadata address: a runner pod (whose
agent runs arbitrary code) must never reach a node's or cloud's credentials there."""


class IPBlock(WireModel):
    """A CIDR a rule allows, minus `except`."""

    cidr: str
    except_: list[str] | None = Field(default=None, alias="except")

    @model_validator(mode="after")
    def _keeps_metadata_out(self) -> IPBlock:
        network = ipaddress.ip_network(self.cidr)  # refuses host bits set, like the API server
        excepted = [ipaddress.ip_network(cidr) for cidr in self.except_ or []]
        for part in excepted:
            if part.version != network.version or not part.subnet_of(network):  # type: ignore[arg-type]
                raise ValueError(f"except {part} is not inside ipBlock {self.cidr}")
        for metadata in METADATA_NETWORKS:
            if metadata.version != network.version:
                continue
            if network.subnet_of(metadata):  # type: ignore[arg-type]
                raise ValueError(
                    f"ipBlock {self.cidr} is inside {metadata} (link-local, cloud metadata such "
                    "as 169.254.169.254): runner pods must never reach it"
                )
            covered = any(metadata.subnet_of(part) for part in excepted)  # type: ignore[arg-type]
            if metadata.subnet_of(network) and not covered:  # type: ignore[arg-type]
                raise ValueError(
                    f"ipBlock {self.cidr} contains {metadata} (link-local, cloud metadata such "
                    f"as 169.254.169.254): add {metadata} to its except list"
                )
        return self


class Peer(WireModel):
    """One destination: an ipBlock, or pods chosen by namespace and/or pod label selectors."""

    ip_block: IPBlock | None = None
    namespace_selector: dict[str, Any] | None = None
    pod_selector: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Peer:
        selectors = self.namespace_selector is not None or self.pod_selector is not None
        if (self.ip_block is not None) == selectors:
            raise ValueError("a peer is either an ipBlock or namespace/pod selectors")
        return self


class Port(WireModel):
    """A destination port (or range up to endPort); protocol defaults to TCP, as the API does."""

    port: int | str | None = None
    end_port: int | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class EgressRule(WireModel):
    """Traffic to any of `to`, on any of `ports` (all ports if unset)."""

    to: list[Peer] = Field(
        min_length=1,
        description="Destinations; never empty (an empty list would allow every destination).",
    )
    ports: list[Port] | None = None


def compact(value: Any) -> Any:
    """`value` as the API server stores a NetworkPolicy (Go's omitempty): no nulls, no empty
    lists, no empty `matchLabels`; an empty selector (`podSelector: {}`, every pod) stays. So
    what the operator applies compares equal to what it reads back."""
    if isinstance(value, dict):
        kept = {key: compact(item) for key, item in value.items()}
        return {
            key: item
            for key, item in kept.items()
            if item is not None and item != [] and not (key == "matchLabels" and item == {})
        }
    if isinstance(value, list):
        return [compact(item) for item in value]
    return value
