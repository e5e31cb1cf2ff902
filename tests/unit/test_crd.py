"""The generated CRD: in sync with the models, structural, and accepting exactly the examples.

Without an API server, `api_server_errors` stands in for one: strict field validation (unknown
fields), the OpenAPI schema (jsonschema, Draft 4 being the dialect OpenAPI v3.0 schemas use),
x-kubernetes-list-type uniqueness, and the CEL rules through their Python twins (markers.Rule),
which are generated from the same objects as the rules in the CRD. The CEL text itself is checked
by the real API server in tests/cluster; here we check that each rule is in the CRD where the
invalid manifests expect it.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
import yaml

from agentsession_operator.models import AgentSession, crd, resource
from agentsession_operator.models.markers import Rule, RuledModel

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / crd.FILENAME
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = sorted((REPO / "tests" / "manifests" / "invalid").glob("*.yaml"))

Node = dict[str, Any]


@functools.cache
def committed_crd() -> Node:
    """Parsed once; callers only read it."""
    doc: Node = yaml.safe_load(CRD_PATH.read_text())
    return doc


def committed_schema() -> Node:
    schema: Node = committed_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: Node, path: str = "") -> Iterator[tuple[str, Node]]:
    """Every schema node with a readable path: `.spec.env[].name`, `.spec.agents.*.prompt`."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


def load_docs(path: Path) -> list[Node]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- the stand-in API server -------------------------------------------------------------------


def k8s_path(parts: Any) -> str:
    """Render a path as the API server does: spec.env[0].name, spec.mcpServers.docs.url."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def unknown_fields(obj: Any, node: Node, path: list[Any]) -> Iterator[str]:
    """What pruning would drop, i.e. what strict field validation (kubectl's default) reports."""
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(obj, dict) and "properties" in node:
        for key, value in obj.items():
            if key not in node["properties"]:
                yield f'unknown field "{k8s_path([*path, key])}"'
            elif not (path == [] and key == "metadata"):
                yield from unknown_fields(value, node["properties"][key], [*path, key])
    elif isinstance(obj, dict) and isinstance(node.get("additionalProperties"), dict):
        for key, value in obj.items():
            yield from unknown_fields(value, node["additionalProperties"], [*path, key])
    elif isinstance(obj, list) and "items" in node:
        for index, value in enumerate(obj):
            yield from unknown_fields(value, node["items"], [*path, index])


def list_type_errors(obj: Any, node: Node, path: list[Any]) -> Iterator[str]:
    """x-kubernetes-list-type set/map uniqueness, which jsonschema does not know."""
    if isinstance(obj, list):
        list_type = node.get("x-kubernetes-list-type")
        seen: list[Any] = []
        for index, item in enumerate(obj):
            if list_type == "set":
                key = item
            elif list_type == "map":
                key = [item.get(k) for k in node["x-kubernetes-list-map-keys"]]
            else:
                key = object()
            if key in seen:
                yield f"{k8s_path([*path, index])}: Duplicate value"
            seen.append(key)
            yield from list_type_errors(item, node.get("items", {}), [*path, index])
    elif isinstance(obj, dict):
        for key, value in obj.items():
            sub = node.get("properties", {}).get(key) or node.get("additionalProperties")
            if isinstance(sub, dict):
                yield from list_type_errors(value, sub, [*path, key])


def schema_errors(obj: Node, schema: Node) -> Iterator[str]:
    for error in jsonschema.Draft4Validator(schema).iter_errors(obj):
        path = list(error.absolute_path)
        if error.validator == "required":
            # Kubernetes names the missing field itself: "spec.prompt: Required value".
            missing = re.match(r"'([^']+)' is a required property", error.message)
            assert missing is not None
            yield f"{k8s_path([*path, missing.group(1)])}: Required value"
        else:
            yield f"{k8s_path(path)}: {error.message}"


def cel_twin_errors(obj: Node) -> Iterator[str]:
    """The CEL rules, evaluated by their Python twins through the pydantic models."""
    try:
        AgentSession.from_body(obj)
    except pydantic.ValidationError as error:
        for detail in error.errors():
            if detail["type"] == "cel_rule":
                ctx = detail.get("ctx", {})
                path = k8s_path(detail["loc"]) + ctx["field_path"]
                yield f"{path.lstrip('.')}: {ctx['message']}"


def api_server_errors(obj: Node) -> list[str]:
    schema = committed_schema()
    errors = list(unknown_fields(obj, schema, []))
    errors += schema_errors(obj, schema)
    errors += list_type_errors(obj, schema, [])
    errors += cel_twin_errors(obj)
    return errors


def with_crd_defaults(obj: Any, node: Node) -> Any:
    """The object as the API server stores it, after applying the CRD's defaults."""
    if isinstance(obj, dict) and "properties" in node:
        out = {k: with_crd_defaults(v, node["properties"].get(k, {})) for k, v in obj.items()}
        for name, sub in node["properties"].items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
        return out
    if isinstance(obj, dict) and isinstance(node.get("additionalProperties"), dict):
        return {k: with_crd_defaults(v, node["additionalProperties"]) for k, v in obj.items()}
    if isinstance(obj, list) and "items" in node:
        return [with_crd_defaults(v, node["items"]) for v in obj]
    return obj


# --- the file itself ---------------------------------------------------------------------------


def test_committed_crd_matches_the_models() -> None:
    assert CRD_PATH.read_text() == crd.render(), "crds/ is stale: run `make manifests`"


def test_check_mode_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crd.main(["--check", str(tmp_path)]) == 1
    assert "make manifests" in capsys.readouterr().err
    assert crd.main(["--write", str(tmp_path)]) == 0
    assert crd.main(["--check", str(tmp_path)]) == 0
    (tmp_path / crd.FILENAME).write_text(crd.render().replace("maxTurns", "maxTurnz"))
    assert crd.main(["--check", str(tmp_path)]) == 1


def test_names_scope_and_subresources() -> None:
    spec = committed_crd()["spec"]
    assert committed_crd()["metadata"]["name"] == "agentsessions.agents.dev"
    assert spec["group"] == "agents.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "AgentSession",
        "listKind": "AgentSessionList",
        "plural": "agentsessions",
        "singular": "agentsession",
        "shortNames": ["ags"],
        "categories": ["agents"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    assert f"{resource.GROUP}/{resource.VERSION}" == resource.API_VERSION


def test_printer_columns() -> None:
    columns = committed_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["type"], c["jsonPath"]) for c in columns] == [
        ("Phase", "string", ".status.phase"),
        ("Turns", "integer", ".status.numTurns"),
        ("Cost (USD)", "number", ".status.totalCostUsd"),
        ("Model", "string", ".status.model"),
        ("Reason", "string", ".status.reason"),
        ("Age", "date", ".metadata.creationTimestamp"),
    ]
    paths = dict(walk(committed_schema()))
    for column in columns[:-1]:
        assert paths[column["jsonPath"]]["type"] == column["type"]
    for field in committed_crd()["spec"]["versions"][0]["selectableFields"]:
        assert paths[field["jsonPath"]]["type"] == "string"


# --- structural-schema rules -------------------------------------------------------------------

FORBIDDEN_KEYWORDS = {
    "$ref",
    "$defs",
    "definitions",
    "title",
    "allOf",
    "oneOf",
    "not",
    "const",
    "nullable",
    "uniqueItems",
    "patternProperties",
    "propertyNames",
    "examples",
}


SCHEMA_NODES = list(walk(committed_schema()))


@pytest.mark.parametrize(
    ("path", "node"), SCHEMA_NODES, ids=[p or "<root>" for p, _ in SCHEMA_NODES]
)
def test_node_is_structural(path: str, node: Node) -> None:
    assert not FORBIDDEN_KEYWORDS & node.keys(), path
    if node.get("x-kubernetes-int-or-string"):
        assert node.get("anyOf") == [{"type": "integer"}, {"type": "string"}], path
        assert "type" not in node, path
    else:
        assert "anyOf" not in node, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
    if "additionalProperties" in node:
        assert isinstance(node["additionalProperties"], dict), path
        assert "properties" not in node, path
    if node.get("exclusiveMinimum") is not None:
        assert node["exclusiveMinimum"] is True, path
        assert "minimum" in node, path


def test_every_field_has_a_description() -> None:
    undocumented = [
        f"{path}.{name}"
        for path, node in walk(committed_schema())
        for name, sub in node.get("properties", {}).items()
        if not sub.get("description") and f"{path}.{name}" != ".metadata"
    ]
    assert undocumented == []


def test_metadata_is_left_to_the_api_server() -> None:
    assert committed_schema()["properties"]["metadata"] == {"type": "object"}


def test_free_form_json_only_where_meant() -> None:
    free_form = {
        p for p, n in walk(committed_schema()) if n.get("x-kubernetes-preserve-unknown-fields")
    }
    assert free_form == {
        ".spec.outputFormat.schema",
        ".status.usage",
        ".status.modelUsage",
        ".status.structuredOutput",
    }


def test_defaults_only_for_values_the_operator_does_not_configure() -> None:
    defaults = {p: n["default"] for p, n in walk(committed_schema()) if "default" in n}
    assert defaults == {
        ".spec.apiKeySecretRef.key": "ANTHROPIC_API_KEY",
        ".spec.backoffLimit": 3,
        ".spec.outputFormat.type": "json_schema",
        ".spec.resume.fork": False,
        ".spec.systemPromptPreset.preset": "claude_code",
    }


def test_limits_are_bounded_and_never_unlimited() -> None:
    spec = committed_schema()["properties"]["spec"]
    assert spec["required"] == ["prompt"]
    props = spec["properties"]
    assert props["prompt"]["minLength"] == 1
    assert props["prompt"]["maxLength"] == 100_000
    assert (props["maxTurns"]["minimum"], props["maxTurns"]["maximum"]) == (1, 1000)
    assert props["maxBudgetUsd"]["minimum"] == 0
    assert props["maxBudgetUsd"]["exclusiveMinimum"] is True
    assert props["maxBudgetUsd"]["maximum"] == 1000
    assert props["timeoutSeconds"]["minimum"] == 1
    assert (props["backoffLimit"]["minimum"], props["backoffLimit"]["maximum"]) == (0, 20)
    assert props["ttlSecondsAfterFinished"]["minimum"] == 0
    for name in ("maxTurns", "maxBudgetUsd", "timeoutSeconds"):
        assert "default" not in props[name], "the operator's settings default these"


def test_every_list_is_bounded_or_unbounded_on_purpose() -> None:
    unbounded = {
        p for p, n in walk(committed_schema()) if n.get("type") == "array" and "maxItems" not in n
    }
    # A subagent's tools come from the runner contract; no CEL rule iterates them.
    assert unbounded == {".spec.agents.*.tools"}


def test_strings_read_by_cel_rules_are_bounded() -> None:
    # The API server estimates a rule's cost from maxLength/maxItems; unbounded input can make a
    # CRD fail to install (estimated cost over budget).
    for path, node in walk(committed_schema()):
        for rule in node.get("x-kubernetes-validations", []):
            if "oldSelf" in rule["rule"]:
                continue
            for name in re.findall(r"self\.(\w+)", rule["rule"]):
                prop = node["properties"].get(name)
                if prop is not None and prop.get("type") == "string":
                    assert "maxLength" in prop, f"{path}.{name} is read by {rule['rule']!r}"
        if node.get("type") == "array" and "x-kubernetes-validations" in node.get("items", {}):
            assert "maxItems" in node, path


def test_list_and_map_types() -> None:
    nodes = dict(walk(committed_schema()))
    assert nodes[".status.conditions"]["x-kubernetes-list-type"] == "map"
    assert nodes[".status.conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert nodes[".spec.env"]["x-kubernetes-list-type"] == "map"
    assert nodes[".spec.env"]["x-kubernetes-list-map-keys"] == ["name"]
    assert nodes[".spec.allowedTools"]["x-kubernetes-list-type"] == "set"
    assert nodes[".spec.disallowedTools"]["x-kubernetes-list-type"] == "set"
    assert nodes[".spec.apiKeySecretRef"]["x-kubernetes-map-type"] == "atomic"
    for quantity in ("cpu", "memory", "ephemeral-storage"):
        node = nodes[f".spec.resources.limits.{quantity}"]
        assert node["x-kubernetes-int-or-string"] is True
        assert node["pattern"].startswith("^")


# --- CEL rules ---------------------------------------------------------------------------------


def all_rules() -> list[tuple[str, Node]]:
    return [
        (p, r) for p, n in walk(committed_schema()) for r in n.get("x-kubernetes-validations", [])
    ]


def test_spec_is_immutable_but_metadata_and_status_are_not() -> None:
    spec_rules = committed_schema()["properties"]["spec"]["x-kubernetes-validations"]
    assert {
        "rule": "self == oldSelf",
        "message": "spec is immutable: create a new AgentSession that resumes this one "
        "(spec.resume.sessionRef)",
    } in spec_rules
    # Only spec carries a transition rule, so label/annotation/finalizer changes and status
    # subresource writes (which cannot change spec) stay allowed.
    assert [p for p, r in all_rules() if "oldSelf" in r["rule"]] == [".spec"]


def ruled_models() -> Iterator[type[RuledModel]]:
    pending: list[type[RuledModel]] = [RuledModel]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        yield cls


def test_every_model_rule_is_in_the_crd() -> None:
    in_crd = [r for _, r in all_rules()]
    model_rules: list[Rule] = [r for cls in ruled_models() for r in cls.cel_rules]
    assert len(model_rules) == len(in_crd)
    for rule in model_rules:
        assert rule.to_schema() in in_crd


def test_cel_rules_name_a_field_or_use_a_clear_message() -> None:
    for path, rule in all_rules():
        assert rule["message"], path
        if "fieldPath" in rule:
            target = path + rule["fieldPath"]
            assert target in dict(walk(committed_schema())), f"{path}: {rule['fieldPath']}"


# --- examples and invalid manifests ------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted(path: Path) -> None:
    assert path.read_text().startswith("# "), "each example opens with a comment explaining it"
    sessions = [d for d in load_docs(path) if d.get("kind") == "AgentSession"]
    assert sessions
    for doc in sessions:
        assert doc["apiVersion"] == "agents.dev/v1alpha1"
        assert api_server_errors(doc) == []
        parsed = AgentSession.from_body(doc)
        # The models' defaults are the CRD's defaults: what the operator parses is what is stored.
        assert parsed.to_wire() == with_crd_defaults(doc, committed_schema())


def test_examples_cover_the_api() -> None:
    names = {p.name for p in EXAMPLES}
    assert "hello.yaml" in names
    used: set[str] = set()
    for path in EXAMPLES:
        for doc in load_docs(path):
            used.update(doc.get("spec", {}))
    documented = set(committed_schema()["properties"]["spec"]["properties"])
    assert documented - used == set(), "every spec field appears in some example"


def test_hello_is_the_smallest_session() -> None:
    (doc,) = load_docs(REPO / "examples" / "hello.yaml")
    assert set(doc["spec"]) == {"prompt"}


def expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be `# expect: ...`"
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_manifest_is_rejected_naming_the_field(path: Path) -> None:
    (doc,) = load_docs(path)
    expected = expectation(path)
    errors = api_server_errors(doc)
    assert any(expected in e for e in errors), f"{expected!r} not in {errors}"


# Only the API server's list-type check catches duplicates; pydantic has no such notion.
LIST_TYPE_ONLY = {"env-duplicate-name.yaml", "allowed-tools-duplicate.yaml"}


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_manifest_is_refused_by_the_models_too(path: Path) -> None:
    (doc,) = load_docs(path)
    if path.name in LIST_TYPE_ONLY:
        AgentSession.from_body(doc)
        return
    with pytest.raises(pydantic.ValidationError):
        AgentSession.from_body(doc)


def test_invalid_manifests_cover_every_cel_rule() -> None:
    fired: set[str] = set()
    for path in INVALID:
        (doc,) = load_docs(path)
        try:
            AgentSession.from_body(doc)
        except pydantic.ValidationError as error:
            fired.update(d["ctx"]["message"] for d in error.errors() if d["type"] == "cel_rule")
    create_time = {r["message"] for _, r in all_rules() if "oldSelf" not in r["rule"]}
    assert create_time - fired == set()


def test_invalid_manifests_are_otherwise_valid() -> None:
    # Each invalid manifest must fail for its stated reason only, or it proves little.
    for path in INVALID:
        (doc,) = load_docs(path)
        expected = expectation(path)
        stray = [e for e in api_server_errors(doc) if expected not in e]
        assert stray == [], f"{path.name}: {stray}"


def test_api_reference_mentions_every_field() -> None:
    reference = (REPO / "docs" / "api-reference.md").read_text()
    missing = [
        f"{section}.{name}"
        for section in ("spec", "status")
        for name in committed_schema()["properties"][section]["properties"]
        if f"`{name}`" not in reference
    ]
    assert missing == [], "document new fields in docs/api-reference.md"
