"""Kubernetes schema markers for the API models (CEL rules with their Python twin, list types,
shared patterns): the pydantic counterpart of kubebuilder's `+kubebuilder:` markers."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Collection, Iterator
from decimal import (
    MAX_EMAX,
    MIN_EMIN,
    ROUND_UP,
    Decimal,
    localcontext,
)
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, StringConstraints, WithJsonSchema, model_validator
from pydantic.fields import FieldInfo
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

QUANTITY_MAX_LENGTH = 64
"""Longest quantity string accepted: it bounds the cost of the CEL rules that parse quantities."""
_QUANTITY_SUFFIXES = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_NANO = Decimal("1e-9")
_QUANTITY_RE = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)")


def quantity_value(value: int | str) -> Decimal:
    """A resource.Quantity's exact value, as CEL's quantity() compares it (`500m`, `1Gi`, `1e3`).

    Raises ValueError for what the quantity parser refuses, though the pattern lets it through
    (a fractional exponent: `1e1.5`).
    """
    with localcontext(prec=200, Emax=MAX_EMAX, Emin=MIN_EMIN):
        if isinstance(value, int):
            exact = Decimal(value)
        else:
            match = _QUANTITY_RE.fullmatch(value)
            if match is None:
                raise ValueError(f"not a quantity: {value!r}")
            number, suffix = match.groups()
            if suffix in _QUANTITY_SUFFIXES:
                exact = Decimal(number) * _QUANTITY_SUFFIXES[suffix]
            elif suffix[:1] in ("e", "E") and re.fullmatch(r"[+-]?[0-9]+", suffix[1:]):
                exact = Decimal(number).scaleb(int(suffix[1:]))
            else:
                raise ValueError(f"not a quantity: {value!r}")
        # Like resource.ParseQuantity: nothing finer than 1n, rounded away from zero.
        if exact.as_tuple().exponent < _NANO.as_tuple().exponent:  # type: ignore[operator]
            exact = exact.quantize(_NANO, rounding=ROUND_UP)
        return exact


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
    unnoticed. A transition rule (one using `oldSelf`, checked on updates only) has `holds=None`
    and its twin in `holds_after(old, new)`; `transition_violations` applies those.
    """

    cel: str
    message: str
    holds: Callable[[Any], bool] | None
    field_path: str | None = None
    reason: FieldReason | None = None
    message_expression: str | None = None
    holds_after: Callable[[Any, Any], bool] | None = None

    @property
    def is_transition(self) -> bool:
        """Whether the API server checks this rule on updates only (it reads `oldSelf`)."""
        return "oldSelf" in self.cel

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


def _transition_violations(
    old: Any, new: Any, loc: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], Rule]]:
    if isinstance(new, BaseModel) and type(old) is type(new):
        for rule in getattr(new, "cel_rules", ()):
            if rule.holds_after is not None and not rule.holds_after(old, new):
                yield loc, rule
        for name, info in type(new).model_fields.items():
            sub_old, sub_new = getattr(old, name), getattr(new, name)
            if sub_old is not None and sub_new is not None:
                yield from _transition_violations(sub_old, sub_new, (*loc, info.alias or name))
    elif isinstance(new, dict) and isinstance(old, dict):
        # Map entries correlate by key, as the API server pairs self and oldSelf.
        for key in sorted(new.keys() & old.keys()):
            yield from _transition_violations(old[key], new[key], (*loc, key))
    # List items are never correlated here: no transition rule sits under a list.


def transition_violations(
    old: BaseModel, new: BaseModel
) -> list[tuple[tuple[str | int, ...], Rule]]:
    """The transition rules `new` breaks as an update of `old`, with where they sit (wire names
    from the root); the Python side of what the API server checks with `oldSelf` on an update.

    Like the API server, a rule on a nested object is only checked when the object exists in both.
    """
    return list(_transition_violations(old, new, ()))


# Words CEL reserves: a property so named would need the API server's `__name__` escaping.
_CEL_RESERVED = frozenset(
    {
        *("true", "false", "null", "in", "as", "break", "const", "continue", "else", "for"),
        *("function", "if", "import", "let", "loop", "package", "namespace", "return", "var"),
        *("void", "while"),
    }
)


def _by_alias(item: BaseModel, alias: str) -> Any:
    for name, info in type(item).model_fields.items():
        if (info.alias or name) == alias:
            return getattr(item, name)
    raise KeyError(alias)


def cel_comparable(value: Any, info: FieldInfo) -> Any:
    """A field's value as CEL's `==` sees it: lists of list-type `set` or `map` are unordered."""
    extra = info.json_schema_extra
    if not isinstance(value, list) or not isinstance(extra, dict):
        return value
    if extra.get("x-kubernetes-list-type") == "set":
        return frozenset(value)
    if extra.get("x-kubernetes-list-type") == "map":
        keys = extra["x-kubernetes-list-map-keys"]
        assert isinstance(keys, list)
        return {tuple(_by_alias(item, str(k)) for k in keys): item for item in value}
    return value


def _unchanged(name: str, info: FieldInfo, old: BaseModel, new: BaseModel) -> bool:
    return bool(
        cel_comparable(getattr(old, name), info) == cel_comparable(getattr(new, name), info)
    )


def immutable_field_rules(
    cls: type[BaseModel], *, mutable: Collection[str], path: str, hint: str = ""
) -> tuple[Rule, ...]:
    """One transition rule per field of `cls` except `mutable` (Python names): on an update the
    field keeps its value, and a field that was absent stays absent. Generated from the model, so
    a field added later is immutable unless it is listed as mutable.

    `path` is where `cls` sits on the wire (`spec`), for the messages; `hint` ends each message.
    """
    unknown = set(mutable) - cls.model_fields.keys()
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}")
    rules = []
    for name, info in cls.model_fields.items():
        if name in mutable:
            continue
        wire = info.alias or name
        if not wire.isidentifier() or wire in _CEL_RESERVED:
            raise ValueError(f"{cls.__name__}.{wire} needs CEL escaping")
        always_set = info.is_required() or info.default is not None  # API server defaults it
        cel = (
            f"self.{wire} == oldSelf.{wire}"
            if always_set
            else (
                f"has(self.{wire}) == has(oldSelf.{wire})"
                f" && (!has(self.{wire}) || self.{wire} == oldSelf.{wire})"
            )
        )
        rules.append(
            Rule(
                cel=cel,
                message=f"{path}.{wire} is immutable{hint}",
                field_path=f".{wire}",
                holds=None,
                holds_after=functools.partial(_unchanged, name, info),
            )
        )
    return tuple(rules)


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


# int-or-string with the Quantity pattern, exactly the shape core types have in the API server.
Quantity = Annotated[
    int
    | Annotated[str, StringConstraints(max_length=QUANTITY_MAX_LENGTH, pattern=QUANTITY_PATTERN)],
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "maxLength": QUANTITY_MAX_LENGTH,
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]

ObjectName = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=DNS_SUBDOMAIN_MAX_LENGTH, pattern=DNS_SUBDOMAIN_PATTERN
    ),
]
ConfigKey = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=DNS_SUBDOMAIN_MAX_LENGTH, pattern=CONFIG_KEY_PATTERN
    ),
]
