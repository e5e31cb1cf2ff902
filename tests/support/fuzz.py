"""Hypothesis strategies for objects of a CRD's structural schema (the OpenAPI v3 subset that
Kubernetes allows), for the fuzz test of the operator (tests/e2e/test_fuzz.py).

hypothesis-jsonschema would be the library for this, but its last release (0.23.1) fails on
current Hypothesis (it calls a removed internal API) and knows none of the `x-kubernetes-*`
extensions. What the CRD uses is small: object, array, string, integer, number, boolean, enum,
pattern, lengths, bounds, `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`,
list types. CEL rules (`x-kubernetes-validations`) are not followed: the API server refuses what
breaks them, which the test counts.

Values are kept small (short strings, few items) so that the objects are cheap to apply and run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

Schema = Mapping[str, Any]
Strategy = st.SearchStrategy[Any]
MAX_TEXT = 24
MAX_ITEMS = 3
MAP_KEY = r"\A[a-z][a-z0-9_-]{0,10}\Z"
"""Keys of free-form maps (agents, mcpServers, headers): short names most key rules accept."""

JSON_SCALARS: Strategy = (
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=MAX_TEXT)
)
ANY_JSON: Strategy = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=MAX_ITEMS)
        | st.dictionaries(st.text(max_size=8), inner, max_size=MAX_ITEMS)
    ),
    max_leaves=12,
)
"""What an `x-kubernetes-preserve-unknown-fields` node without properties may hold."""


def strategy_for(
    schema: Schema, overrides: Mapping[str, Strategy] | None = None, path: str = ""
) -> Strategy:
    """Values `schema` accepts. `overrides` replaces the strategy at a path such as
    `.backoffLimit` or `.resources` (object properties by name, `[]` for items, `.*` for map
    values)."""
    overrides = overrides or {}
    if path in overrides:
        return overrides[path]
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    if schema.get("x-kubernetes-int-or-string"):
        return st.integers(0, 10**6) | _string(schema)
    kind = schema.get("type")
    if kind is None and schema.get("x-kubernetes-preserve-unknown-fields"):
        return ANY_JSON
    builders: dict[str, Callable[[], Strategy]] = {
        "object": lambda: _object(schema, overrides, path),
        "array": lambda: _array(schema, overrides, path),
        "string": lambda: _string(schema),
        "integer": lambda: _integer(schema),
        "number": lambda: _number(schema),
        "boolean": st.booleans,
    }
    if kind not in builders:
        raise ValueError(f"{path or 'the root'}: no strategy for schema type {kind!r}")
    return builders[kind]()


def _object(schema: Schema, overrides: Mapping[str, Strategy], path: str) -> Strategy:
    properties: Mapping[str, Schema] = schema.get("properties") or {}
    if properties:
        required = set(schema.get("required") or ())
        strategies = {name: strategy_for(sub, overrides, f"{path}.{name}")
                      for name, sub in properties.items()}  # fmt: skip
        return st.fixed_dictionaries(
            {name: s for name, s in strategies.items() if name in required},
            optional={name: s for name, s in strategies.items() if name not in required},
        )
    values = schema.get("additionalProperties")
    if isinstance(values, Mapping):
        most = min(int(schema.get("maxProperties", MAX_ITEMS)), MAX_ITEMS)
        return st.dictionaries(
            st.from_regex(MAP_KEY, fullmatch=True),
            strategy_for(values, overrides, f"{path}.*"),
            max_size=most,
        )
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return st.dictionaries(st.text(max_size=8), ANY_JSON, max_size=MAX_ITEMS)
    return st.just({})


def _array(schema: Schema, overrides: Mapping[str, Strategy], path: str) -> Strategy:
    items = strategy_for(schema["items"], overrides, f"{path}[]")
    most = min(int(schema.get("maxItems", MAX_ITEMS)), MAX_ITEMS)
    least = min(int(schema.get("minItems", 0)), most)
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "map":
        keys = tuple(schema.get("x-kubernetes-list-map-keys") or ())
        return st.lists(
            items,
            min_size=least,
            max_size=most,
            unique_by=lambda item: tuple(str(item.get(key)) for key in keys),
        )
    if list_type == "set":
        return st.lists(items, min_size=least, max_size=most, unique=True)
    return st.lists(items, min_size=least, max_size=most)


def _string(schema: Schema) -> Strategy:
    least = int(schema.get("minLength", 0))
    most = int(schema.get("maxLength", MAX_TEXT))
    pattern = schema.get("pattern")
    if pattern is None:
        return st.text(min_size=least, max_size=max(least, min(most, MAX_TEXT)))
    # Go's `$` matches only at the very end, Python's also before a final newline.
    python_pattern = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
    return st.from_regex(python_pattern).filter(lambda text: least <= len(text) <= most)


def _integer(schema: Schema) -> Strategy:
    low = schema.get("minimum")
    if low is not None and schema.get("exclusiveMinimum"):
        low += 1
    return st.integers(low, schema.get("maximum"))


def _number(schema: Schema) -> Strategy:
    """Numbers in hundredths: what a person writes, and what 'at most 6 fractional digits' rules
    accept."""
    low, high = schema.get("minimum"), schema.get("maximum")
    cents_low = (
        None if low is None else int(low * 100) + (1 if schema.get("exclusiveMinimum") else 0)
    )
    cents_high = None if high is None else int(high * 100)
    return st.integers(cents_low, cents_high).map(lambda cents: cents / 100)


def examples(strategy: Strategy, count: int, seed_value: int) -> list[Any]:
    """`count` values drawn from `strategy`, the same ones for the same seed (Hypothesis as a
    generator: no shrinking, no example database)."""
    found: list[Any] = []

    @settings(
        max_examples=count,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @seed(seed_value)
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found
