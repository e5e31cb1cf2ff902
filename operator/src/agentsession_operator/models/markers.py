"""Kubernetes schema markers for the API models (CEL rules with their Python twin, list types,
shared patterns): the pydantic counterpart of kubebuilder's `+kubebuilder:` markers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from agentsession_contract.run import WireModel

# RFC 1123 subdomain, as Kubernetes validates object names and RuntimeClass names.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_SUBDOMAIN_MAX_LENGTH = 253
# Secret and ConfigMap data keys.
CONFIG_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
# The Agent SDK's session ids and message uuids are RFC 4122 UUIDs.
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# resource.Quantity's own serialization pattern, as controller-gen emits it for core types.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

LIST_SET: dict[str, Any] = {"x-kubernetes-list-type": "set"}
LIST_ATOMIC: dict[str, Any] = {"x-kubernetes-list-type": "atomic"}
MAP_ATOMIC: dict[str, Any] = {"x-kubernetes-map-type": "atomic"}


def list_map(*keys: str) -> dict[str, Any]:
    """A list merged by key (server-side apply, strategic merge) whose keys must be unique."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


FieldReason = Literal[
    "FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"
]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One `x-kubernetes-validations` entry, and the same check in Python.

    The API server enforces `cel`; `holds` lets the operator (and the unit tests) apply the very
    same rule to a parsed object, so the two are written side by side and cannot drift apart
    unnoticed. Transition rules (those using `oldSelf`) have no Python twin: only the API server
    sees the previous object.
    """

    cel: str
    message: str
    holds: Callable[[Any], bool] | None
    field_path: str | None = None
    reason: FieldReason | None = None
    message_expression: str | None = None

    def to_schema(self) -> dict[str, Any]:
        """The rule as the CRD's `x-kubernetes-validations` item."""
        entry: dict[str, Any] = {"rule": self.cel, "message": self.message}
        if self.message_expression is not None:
            entry["messageExpression"] = self.message_expression
        if self.field_path is not None:
            entry["fieldPath"] = self.field_path
        if self.reason is not None:
            entry["reason"] = self.reason
        return entry


def _rules_into_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "cel_rules", ())
    if rules:
        schema.setdefault("x-kubernetes-validations", []).extend(r.to_schema() for r in rules)


class RuledModel(WireModel):
    """A wire model with CEL rules: emitted into the CRD, and enforced by pydantic too."""

    model_config = ConfigDict(json_schema_extra=_rules_into_schema)

    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _enforce_cel_rules(self) -> Self:
        for rule in self.cel_rules:
            if rule.holds is not None and not rule.holds(self):
                # field_path travels in ctx so callers can name the field the API server would.
                raise PydanticCustomError(
                    "cel_rule",
                    "{message}",
                    {"field_path": rule.field_path or "", "message": rule.message},
                )
        return self
