"""The generated CRDs: in sync with the models, structural, and accepting exactly the examples.

Without an API server, `api_server_errors` stands in for one: strict field validation (unknown
fields), the OpenAPI schema (jsonschema, Draft 4 being the dialect OpenAPI v3.0 schemas use),
x-kubernetes-list-type uniqueness, and the CEL rules through their Python twins (markers.Rule),
which are generated from the same objects as the rules in the CRD; on an update also the
transition rules' twins (`holds_after`). It picks the CRD and the model by the object's kind. The
CEL text itself is checked by the real API server in tests/cluster; here we check that each rule
is in the CRD where the invalid manifests expect it.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
import yaml

from agentsession_operator.models import (
    AgentBudget,
    AgentSession,
    crd,
    resource,
    transition_violations,
)
from agentsession_operator.models.markers import Rule, RuledModel

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
CRD_PATH = CRD_DIR / crd.FILENAME
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
MANIFESTS = REPO / "tests" / "manifests"
INVALID = sorted((MANIFESTS / "invalid").glob("*.yaml"))
INVALID_UPDATES = sorted((MANIFESTS / "invalid-updates").glob("*.yaml"))
VALID_UPDATES = sorted((MANIFESTS / "valid-updates").glob("*.yaml"))

Node = dict[str, Any]
KINDS = {kind.kind: kind for kind in crd.KINDS}
MODELS: dict[str, type[AgentSession] | type[AgentBudget]] = {
    "AgentSession": AgentSession,
    "AgentBudget": AgentBudget,
}


@functools.cache
def committed_crd(kind: str = "AgentSession") -> Node:
    """Parsed once; callers only read it."""
    doc: Node = yaml.safe_load((CRD_DIR / KINDS[kind].filename).read_text())
    return doc


def committed_schema(kind: str = "AgentSession") -> Node:
    schema: Node = committed_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
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
        MODELS[obj["kind"]].from_body(obj)
    except pydantic.ValidationError as error:
        for detail in error.errors():
            if detail["type"] == "cel_rule":
                ctx = detail.get("ctx", {})
                path = k8s_path(detail["loc"]) + ctx["field_path"]
                yield f"{path.lstrip('.')}: {ctx['message']}"


def transition_twin_errors(old: Node, new: Node) -> Iterator[str]:
    """The transition rules (CEL with oldSelf), evaluated by their Python twins."""
    model = MODELS[new["kind"]]
    try:
        before, after = model.from_body(old), model.from_body(new)
    except pydantic.ValidationError:
        return  # refused at create time already: cel_twin_errors reports it
    for loc, rule in transition_violations(before, after):
        yield f"{k8s_path(loc)}{rule.field_path or ''}: {rule.message}"


def api_server_errors(obj: Node, old: Node | None = None) -> list[str]:
    """What the API server would refuse `obj` for: as created, or as an update of `old`."""
    schema = committed_schema(obj["kind"])
    errors = list(unknown_fields(obj, schema, []))
    errors += schema_errors(obj, schema)
    errors += list_type_errors(obj, schema, [])
    errors += cel_twin_errors(obj)
    if old is not None:
        errors += transition_twin_errors(old, obj)
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


# --- the files themselves ---------------------------------------------------------------------

KIND_NAMES = list(KINDS)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_committed_crd_matches_the_models(kind: str) -> None:
    path = CRD_DIR / KINDS[kind].filename
    assert path.read_text() == crd.render(KINDS[kind]), "crds/ is stale: run `make manifests`"


def test_crds_dir_holds_exactly_the_generated_files() -> None:
    assert sorted(p.name for p in CRD_DIR.glob("*.yaml")) == sorted(crd.render_all())
    assert crd.render() == crd.render(crd.AGENT_SESSION)
    assert crd.FILENAME == "agents.dev_agentsessions.yaml"


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_check_mode_reports_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    assert crd.main(["--check", str(tmp_path)]) == 1
    assert "make manifests" in capsys.readouterr().err
    assert crd.main(["--write", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(crd.render_all())
    assert crd.main(["--check", str(tmp_path)]) == 0
    path = tmp_path / KINDS[kind].filename
    path.write_text(path.read_text().replace("description", "descriptio", 1))
    assert crd.main(["--check", str(tmp_path)]) == 1
    assert f"{path} is stale" in capsys.readouterr().err


def test_stdout_mode_prints_every_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert crd.main([]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert [d["spec"]["names"]["kind"] for d in docs] == KIND_NAMES


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


def test_budget_names_scope_and_subresources() -> None:
    spec = committed_crd("AgentBudget")["spec"]
    assert committed_crd("AgentBudget")["metadata"]["name"] == "agentbudgets.agents.dev"
    assert (spec["group"], spec["scope"]) == ("agents.dev", "Namespaced")
    assert spec["names"] == {
        "kind": "AgentBudget",
        "listKind": "AgentBudgetList",
        "plural": "agentbudgets",
        "singular": "agentbudget",
        "shortNames": ["agb"],
        "categories": ["agents"],  # `kubectl get agents` lists sessions and budgets
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    assert "selectableFields" not in version


def schema_path(json_path: str) -> str:
    """A printer column's JSONPath as a walk() path: `[0]` and `[?(...)]` become `[]`."""
    return re.sub(r"\[(\d+|\?\(.*?\))\]", "[]", json_path)


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


def test_budget_printer_columns() -> None:
    columns = committed_crd("AgentBudget")["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["type"], c.get("priority", 0)) for c in columns] == [
        ("Period", "string", 0),
        ("Limit (USD)", "number", 0),
        ("Spent (USD)", "number", 0),
        ("Reserved (USD)", "number", 0),
        ("Running", "integer", 0),
        ("Queued", "integer", 0),
        ("Max Concurrent", "integer", 1),
        ("Exhausted", "string", 0),
        ("Age", "date", 0),
    ]
    paths = dict(walk(committed_schema("AgentBudget")))
    for column in columns[:-1]:
        path = schema_path(column["jsonPath"])
        assert paths[path]["type"] == column["type"], column
    exhausted = next(c for c in columns if c["name"] == "Exhausted")
    assert exhausted["jsonPath"] == '.status.conditions[?(@.type=="Exhausted")].status'


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
    "multipleOf",  # evaluated in floating point by the API server: see models.budget.Usd
}


SCHEMA_NODES = [
    (kind, path, node) for kind in KIND_NAMES for path, node in walk(committed_schema(kind))
]


@pytest.mark.parametrize(
    ("kind", "path", "node"),
    SCHEMA_NODES,
    ids=[f"{kind}:{path or '<root>'}" for kind, path, _ in SCHEMA_NODES],
)
def test_node_is_structural(kind: str, path: str, node: Node) -> None:
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


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_field_has_a_description(kind: str) -> None:
    undocumented = [
        f"{path}.{name}"
        for path, node in walk(committed_schema(kind))
        for name, sub in node.get("properties", {}).items()
        if not sub.get("description") and f"{path}.{name}" != ".metadata"
    ]
    assert undocumented == []


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_metadata_is_left_to_the_api_server(kind: str) -> None:
    assert committed_schema(kind)["properties"]["metadata"] == {"type": "object"}


FREE_FORM = {
    "AgentSession": {
        ".spec.outputFormat.schema",
        ".status.usage",
        ".status.modelUsage",
        ".status.structuredOutput",
    },
    "AgentBudget": set(),
}


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_free_form_json_only_where_meant(kind: str) -> None:
    free_form = {
        p for p, n in walk(committed_schema(kind)) if n.get("x-kubernetes-preserve-unknown-fields")
    }
    assert free_form == FREE_FORM[kind]


DEFAULTS = {
    "AgentSession": {
        ".spec.apiKeySecretRef.key": "ANTHROPIC_API_KEY",
        ".spec.backoffLimit": 3,
        ".spec.onLimitReached": "Fail",
        ".spec.outputFormat.type": "json_schema",
        ".spec.outputs.git[].push.branch": "agent/{{ .session }}",
        ".spec.resume.fork": False,
        ".spec.suspend": False,
        ".spec.systemPromptPreset.preset": "claude_code",
        ".spec.workspace.snapshot.enabled": True,
        ".spec.workspace.sources[].git.depth": 1,
    },
    "AgentBudget": {".spec.timeZone": "UTC"},
}


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_defaults_only_for_values_the_operator_does_not_configure(kind: str) -> None:
    defaults = {p: n["default"] for p, n in walk(committed_schema(kind)) if "default" in n}
    assert defaults == DEFAULTS[kind]


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
    # A year at most: the planner adds it to a datetime, which would overflow on a huge value.
    assert props["ttlSecondsAfterFinished"]["maximum"] == 365 * 24 * 3600
    for name in ("maxTurns", "maxBudgetUsd", "timeoutSeconds"):
        assert "default" not in props[name], "the operator's settings default these"


def test_budget_amounts_are_bounded_numbers() -> None:
    nodes = dict(walk(committed_schema("AgentBudget")))
    amount = nodes[".spec.limits[].amountUsd"]
    assert (amount["type"], amount["minimum"], amount["exclusiveMinimum"]) == ("number", 0, True)
    assert amount["maximum"] == 1_000_000
    money = [p for p in nodes if p.endswith("Usd")]
    assert sorted(money) == [
        ".spec.limits[].amountUsd",
        ".status.periods[].limitUsd",
        ".status.periods[].remainingUsd",
        ".status.periods[].reservedUsd",
        ".status.periods[].spentUsd",
        ".status.reservations[].amountUsd",
        ".status.spend[].spentUsd",
        ".status.totalSpentUsd",
    ]
    for path in money:
        assert nodes[path]["type"] == "number", path
        assert nodes[path]["maximum"] <= 1_000_000_000, path  # 15 significant digits at most
    concurrent = nodes[".spec.maxConcurrentSessions"]
    assert (concurrent["minimum"], concurrent["maximum"]) == (0, 10_000)
    assert "required" not in nodes[".spec"], "limits or maxConcurrentSessions: a CEL rule"


UNBOUNDED_LISTS = {
    # A subagent's tools come from the runner contract; no CEL rule iterates them.
    "AgentSession": {".spec.agents.*.tools"},
    "AgentBudget": set(),
}


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_list_is_bounded_or_unbounded_on_purpose(kind: str) -> None:
    unbounded = {
        p
        for p, n in walk(committed_schema(kind))
        if n.get("type") == "array" and "maxItems" not in n
    }
    assert unbounded == UNBOUNDED_LISTS[kind]


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_strings_read_by_cel_rules_are_bounded(kind: str) -> None:
    # The API server estimates a rule's cost from maxLength/maxItems; unbounded input can make a
    # CRD fail to install (estimated cost over budget).
    for path, node in walk(committed_schema(kind)):
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


def test_budget_list_and_map_types() -> None:
    nodes = dict(walk(committed_schema("AgentBudget")))
    keyed = {
        ".spec.limits": ["period"],
        ".status.periods": ["period"],
        ".status.reservations": ["uid"],
        ".status.conditions": ["type"],
    }
    for path, keys in keyed.items():
        assert nodes[path]["x-kubernetes-list-type"] == "map", path
        assert nodes[path]["x-kubernetes-list-map-keys"] == keys, path
        for key in keys:  # a list-map key must be required (or defaulted)
            assert key in nodes[path]["items"]["required"], path
    # As metav1.LabelSelector: the selector is replaced as a whole, its lists are atomic.
    assert nodes[".spec.selector"]["x-kubernetes-map-type"] == "atomic"
    assert nodes[".spec.selector.matchExpressions"]["x-kubernetes-list-type"] == "atomic"
    assert nodes[".spec.selector.matchExpressions[].values"]["x-kubernetes-list-type"] == "atomic"
    assert nodes[".spec.selector.matchLabels"]["maxProperties"] == 64


# --- CEL rules ---------------------------------------------------------------------------------


def all_rules(kind: str = "AgentSession") -> list[tuple[str, Node]]:
    return [
        (p, r)
        for p, n in walk(committed_schema(kind))
        for r in n.get("x-kubernetes-validations", [])
    ]


def test_spec_changes_only_where_allowed_and_metadata_and_status_freely() -> None:
    spec_node = committed_schema()["properties"]["spec"]
    transition = [r for r in spec_node["x-kubernetes-validations"] if "oldSelf" in r["rule"]]
    guarded = {r["fieldPath"].removeprefix(".") for r in transition}
    # Every spec field but suspend is guarded by its own rule, which names it.
    assert guarded == set(spec_node["properties"]) - {"suspend"}
    assert len(guarded) == len(transition)
    for rule in transition:
        name = rule["fieldPath"].removeprefix(".")
        assert rule["message"].startswith(f"spec.{name} "), rule
        assert f"oldSelf.{name}" in rule["rule"], rule
    raised = {r["fieldPath"] for r in transition if "may only be raised" in r["message"]}
    assert raised == {".maxTurns", ".maxBudgetUsd"}
    # Only spec carries transition rules, so label/annotation/finalizer changes and status
    # subresource writes (which cannot change spec) stay allowed; a budget's spec is mutable.
    assert {p for p, r in all_rules() if "oldSelf" in r["rule"]} == {".spec"}
    assert [p for p, r in all_rules("AgentBudget") if "oldSelf" in r["rule"]] == []


def ruled_models() -> Iterator[type[RuledModel]]:
    pending: list[type[RuledModel]] = [RuledModel]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        yield cls


def test_every_model_rule_is_in_a_crd() -> None:
    in_crds = [r for kind in KIND_NAMES for _, r in all_rules(kind)]
    model_rules: list[Rule] = [r for cls in ruled_models() for r in cls.cel_rules]
    # A model used in two places (KeyToPath under configMap and secret) has its rules twice.
    unique = {json.dumps(r, sort_keys=True) for r in in_crds}
    assert len(model_rules) == len(unique)
    for rule in model_rules:
        assert rule.to_schema() in in_crds
        # Every rule has its Python twin: for creation (holds) or for updates (holds_after).
        if rule.is_transition:
            assert rule.holds is None
            assert rule.holds_after is not None, rule.cel
        else:
            assert rule.holds is not None, rule.cel


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_cel_rules_name_a_field_or_use_a_clear_message(kind: str) -> None:
    paths = dict(walk(committed_schema(kind)))
    for path, rule in all_rules(kind):
        assert rule["message"], path
        if "fieldPath" in rule:
            target = path + rule["fieldPath"]
            assert target in paths, f"{path}: {rule['fieldPath']}"


# --- examples and invalid manifests ------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted(path: Path) -> None:
    assert path.read_text().startswith("# "), "each example opens with a comment explaining it"
    docs = load_docs(path)
    assert docs
    for doc in docs:
        assert doc["kind"] in MODELS, f"{path.name}: no CRD of ours for {doc['kind']}"
        assert doc["apiVersion"] == "agents.dev/v1alpha1"
        assert api_server_errors(doc) == []
        parsed = MODELS[doc["kind"]].from_body(doc)
        # The models' defaults are the CRD's defaults: what the operator parses is what is stored.
        assert parsed.to_wire() == with_crd_defaults(doc, committed_schema(doc["kind"]))


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_examples_cover_the_api(kind: str) -> None:
    names = {p.name for p in EXAMPLES}
    assert {"hello.yaml", "budget.yaml"} <= names
    used: set[str] = set()
    for path in EXAMPLES:
        for doc in load_docs(path):
            if doc["kind"] == kind:
                used.update(doc.get("spec", {}))
    documented = set(committed_schema(kind)["properties"]["spec"]["properties"])
    assert documented - used == set(), "every spec field appears in some example"


def test_hello_is_the_smallest_session() -> None:
    (doc,) = load_docs(REPO / "examples" / "hello.yaml")
    assert set(doc["spec"]) == {"prompt"}


def expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be `# expect: ...`"
    return first.removeprefix("# expect: ")


def expectations(path: Path) -> list[str]:
    """Every `# expect:` line: what the cluster test finds in the API server's message."""
    return re.findall(r"^#\s*expect:\s*(.+?)\s*$", path.read_text(), flags=re.MULTILINE)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_manifest_is_rejected_naming_the_field(path: Path) -> None:
    (doc,) = load_docs(path)
    errors = api_server_errors(doc)
    for expected in expectations(path):
        assert any(expected in e for e in errors), f"{expected!r} not in {errors}"


# Only the API server's list-type check catches duplicates; pydantic has no such notion.
LIST_TYPE_ONLY = {"env-duplicate-name.yaml", "allowed-tools-duplicate.yaml"}


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_manifest_is_refused_by_the_models_too(path: Path) -> None:
    (doc,) = load_docs(path)
    model = MODELS[doc["kind"]]
    if path.name in LIST_TYPE_ONLY:
        model.from_body(doc)
        return
    with pytest.raises(pydantic.ValidationError):
        model.from_body(doc)


def test_invalid_manifests_cover_every_cel_rule() -> None:
    fired: set[str] = set()
    for path in INVALID:
        (doc,) = load_docs(path)
        try:
            MODELS[doc["kind"]].from_body(doc)
        except pydantic.ValidationError as error:
            fired.update(d["ctx"]["message"] for d in error.errors() if d["type"] == "cel_rule")
    create_time = {
        r["message"]
        for kind in KIND_NAMES
        for _, r in all_rules(kind)
        if "oldSelf" not in r["rule"]
    }
    assert create_time - fired == set()


def test_invalid_manifests_cover_both_kinds() -> None:
    kinds = [load_docs(path)[0]["kind"] for path in INVALID]
    assert kinds.count("AgentBudget") >= 10
    assert all(
        p.name.startswith("budget-") == (k == "AgentBudget")
        for p, k in zip(INVALID, kinds, strict=True)
    )


def test_invalid_manifests_are_otherwise_valid() -> None:
    # Each invalid manifest must fail for its stated reason only, or it proves little.
    for path in INVALID:
        (doc,) = load_docs(path)
        expected = expectation(path)
        stray = [e for e in api_server_errors(doc) if expected not in e]
        assert stray == [], f"{path.name}: {stray}"


# --- updates: the transition rules -------------------------------------------------------------
# tests/manifests/{invalid,valid}-updates hold two documents each: the object as created and the
# update (for tests/cluster: `kubectl apply` the first, then the second).


def update_pair(path: Path) -> tuple[Node, Node]:
    before, after = load_docs(path)
    assert before["kind"] == after["kind"]
    assert before["metadata"]["name"] == after["metadata"]["name"] == path.stem
    return before, after


@pytest.mark.parametrize("path", INVALID_UPDATES, ids=lambda p: p.name)
def test_invalid_update_is_refused_for_its_stated_reason_only(path: Path) -> None:
    before, after = update_pair(path)
    # Both documents are fine as new objects: only the change is refused.
    assert api_server_errors(before) == []
    assert api_server_errors(after) == []
    errors = api_server_errors(after, old=before)
    for expected in expectations(path):
        assert any(expected in e for e in errors), f"{expected!r} not in {errors}"
    assert len(errors) == 1, errors


@pytest.mark.parametrize("path", VALID_UPDATES, ids=lambda p: p.name)
def test_valid_update_is_accepted(path: Path) -> None:
    assert not expectations(path)
    before, after = update_pair(path)
    assert api_server_errors(before) == []
    assert api_server_errors(after, old=before) == []


def test_update_manifests_cover_the_mutable_fields_and_the_raise_rules() -> None:
    changed: set[str] = set()
    for path in VALID_UPDATES:
        before, after = update_pair(path)
        if before["kind"] == "AgentSession":
            changed |= {
                k
                for k in {*before["spec"], *after["spec"]}
                if before["spec"].get(k) != after["spec"].get(k)
            }
    assert {"suspend", "maxTurns", "maxBudgetUsd"} <= changed
    refused = {expectation(p) for p in INVALID_UPDATES}
    assert {"spec.maxTurns may only be raised", "spec.maxBudgetUsd may only be raised"} <= refused


def test_api_reference_mentions_every_field() -> None:
    reference = (REPO / "docs" / "api-reference.md").read_text()
    missing = [
        f"{section}.{name}"
        for section in ("spec", "status")
        for name in committed_schema()["properties"][section]["properties"]
        if f"`{name}`" not in reference
    ]
    assert missing == [], "document new fields in docs/api-reference.md"


def test_budget_reference_mentions_every_field() -> None:
    reference = (REPO / "docs" / "budgets.md").read_text()
    missing = [
        path
        for path, _ in walk(committed_schema("AgentBudget"))
        if path.startswith((".spec.", ".status."))
        and not path.startswith(".status.conditions[].")
        and not path.endswith(".*")
        # Named as the reference's tables do: relative to spec or status, `limits[].amountUsd`.
        and f"`{path.split('.', 2)[2].removesuffix('[]')}`" not in reference
    ]
    assert missing == [], "document new fields in docs/budgets.md"
    for field in ("suspend", "onLimitReached", "maxBudgetUsd", "maxTurns"):
        assert f"`{field}`" in reference
