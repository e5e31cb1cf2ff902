"""Generates the CRDs (AgentSession, AgentBudget) from the pydantic models. Run by `make
manifests` (`python -m agentsession_operator.models.crd --write crds/`), CI and the drift test
(`--check`). Each kind is one `CrdKind` in KINDS and one file, `agents.dev_<plural>.yaml`."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from . import budget, resource
from .resource import GROUP, VERSION

HEADER = (
    "# Generated from operator/src/agentsession_operator/models by `make manifests`. DO NOT EDIT.\n"
)


@dataclasses.dataclass(frozen=True)
class CrdKind:
    """One kind the generator writes a CRD for: its root model, names and `kubectl get` view."""

    model: type[BaseModel]
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    categories: tuple[str, ...]
    printer_columns: tuple[dict[str, Any], ...]
    selectable_fields: tuple[dict[str, str], ...] = ()

    @property
    def name(self) -> str:
        """The CRD's metadata.name."""
        return f"{self.plural}.{GROUP}"

    @property
    def filename(self) -> str:
        """The CRD's file, in crds/ and in the chart's templates/crds/."""
        return f"{GROUP}_{self.plural}.yaml"


AGENT_SESSION = CrdKind(
    model=resource.AgentSession,
    kind=resource.KIND,
    plural=resource.PLURAL,
    singular=resource.SINGULAR,
    short_names=resource.SHORT_NAMES,
    categories=resource.CATEGORIES,
    printer_columns=(
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Turns", "type": "integer", "jsonPath": ".status.numTurns"},
        {"name": "Cost (USD)", "type": "number", "jsonPath": ".status.totalCostUsd"},
        {"name": "Model", "type": "string", "jsonPath": ".status.model"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
    # `kubectl get ags --field-selector status.phase=Failed`; the operator can also list the
    # sessions waiting on another one by spec.resume.sessionRef.
    selectable_fields=(
        {"jsonPath": ".status.phase"},
        {"jsonPath": ".status.reason"},
        {"jsonPath": ".spec.resume.sessionRef"},
    ),
)

AGENT_BUDGET = CrdKind(
    model=budget.AgentBudget,
    kind=budget.KIND,
    plural=budget.PLURAL,
    singular=budget.SINGULAR,
    short_names=budget.SHORT_NAMES,
    categories=budget.CATEGORIES,
    # The first limit (status.periods follows spec.limits' order): list the one to watch first.
    printer_columns=(
        {"name": "Period", "type": "string", "jsonPath": ".spec.limits[0].period"},
        {"name": "Limit (USD)", "type": "number", "jsonPath": ".spec.limits[0].amountUsd"},
        {"name": "Spent (USD)", "type": "number", "jsonPath": ".status.periods[0].spentUsd"},
        {
            "name": "Reserved (USD)",
            "type": "number",
            "jsonPath": ".status.periods[0].reservedUsd",
        },
        {"name": "Running", "type": "integer", "jsonPath": ".status.running"},
        {"name": "Queued", "type": "integer", "jsonPath": ".status.queued"},
        {
            "name": "Max Concurrent",
            "type": "integer",
            "jsonPath": ".spec.maxConcurrentSessions",
            "priority": 1,
        },
        {
            "name": "Exhausted",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Exhausted")].status',
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
)

KINDS: tuple[CrdKind, ...] = (AGENT_SESSION, AGENT_BUDGET)
FILENAME = AGENT_SESSION.filename  # the first CRD's file, as before AgentBudget
PRINTER_COLUMNS = list(AGENT_SESSION.printer_columns)
SELECTABLE_FIELDS = list(AGENT_SESSION.selectable_fields)

# JSON-schema keywords that mean the same in a structural schema and are copied as they are.
_SAME_KEYWORDS = frozenset(
    {
        "type",
        "format",
        "description",
        "required",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
    }
)
_FORMATS = frozenset({"date-time", "int32", "int64", "float", "double"})


class SchemaError(ValueError):
    """The models use a construct a structural schema cannot express."""


def _describe(text: str) -> str:
    # Docstrings arrive hard-wrapped; kubectl explain wraps by itself, so keep only paragraphs.
    return "\n\n".join(" ".join(p.split()) for p in text.strip().split("\n\n"))


def _merge(target: dict[str, Any], site: dict[str, Any]) -> dict[str, Any]:
    """A referenced schema with the referring site's keywords on top; CEL rules accumulate."""
    merged = {**target, **site}
    rules = target.get("x-kubernetes-validations", []) + site.get("x-kubernetes-validations", [])
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _inline(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    """Resolve $ref and pydantic's `X | None` (anyOf with null) until a plain schema remains."""
    while True:
        if "$ref" in node:
            target = defs[node["$ref"].removeprefix("#/$defs/")]
            node = _merge(target, {k: v for k, v in node.items() if k != "$ref"})
        elif "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
            branches = [b for b in node["anyOf"] if b != {"type": "null"}]
            if len(branches) != 1 or len(branches) == len(node["anyOf"]):
                raise SchemaError(f"{path}: only `X | None` unions are structural")
            # Optional means "may be omitted", not "may be null": the null branch just goes.
            node = _merge(branches[0], {k: v for k, v in node.items() if k != "anyOf"})
        else:
            return node


def _structural(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = _inline(node, defs, path)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SAME_KEYWORDS:
            if key == "format" and value not in _FORMATS:
                raise SchemaError(f"{path}: format {value!r} is not a Kubernetes format")
            out[key] = _describe(value) if key == "description" else value
        elif key.startswith("x-kubernetes-"):
            out[key] = value
        elif key == "title":
            continue
        elif key == "default":
            # None only says "optional"; any other Python default is the API's default too.
            if value is not None:
                out["default"] = value
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020-12 puts the bound here; OpenAPI v3.0 wants a boolean beside it.
            out[key.replace("exclusiveM", "m")] = value
            out[key] = True
        elif key == "anyOf":
            # Only int-or-string gets here (see _inline); it is one of the allowed anyOf forms.
            if value != [{"type": "integer"}, {"type": "string"}]:
                raise SchemaError(f"{path}: anyOf is only allowed for int-or-string")
            out[key] = value
        elif key == "properties":
            out[key] = {}
            for name, sub in value.items():
                prop = _structural(sub, defs, f"{path}.{name}")
                if "description" not in prop:
                    raise SchemaError(f"{path}.{name}: every field needs a description")
                out[key][name] = prop
        elif key == "items":
            out[key] = _structural(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if value is False:
                continue  # pruning (and strict field validation) already refuse unknown fields
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            else:
                out[key] = _structural(value, defs, f"{path}.*")
        else:
            raise SchemaError(f"{path}: {key!r} has no structural-schema equivalent")
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        # A Python `Any`: free-form JSON the API server stores as it is.
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def structural_schema(model_schema: dict[str, Any]) -> dict[str, Any]:
    """Turn a pydantic JSON schema into a Kubernetes structural schema, or raise SchemaError."""
    root = {k: v for k, v in model_schema.items() if k != "$defs"}
    return _structural(root, model_schema.get("$defs", {}), "")


def openapi_schema(kind: CrdKind = AGENT_SESSION) -> dict[str, Any]:
    """The kind's openAPIV3Schema."""
    schema = structural_schema(kind.model.model_json_schema(by_alias=True))
    properties = schema["properties"]
    # The API server owns these: plain strings (no enum, no default) and an opaque metadata.
    for key in ("apiVersion", "kind"):
        properties[key] = {"type": "string", "description": properties[key]["description"]}
    properties["metadata"] = {"type": "object"}
    return schema


def custom_resource_definition(kind: CrdKind = AGENT_SESSION) -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": openapi_schema(kind)},
        "subresources": {"status": {}},
        "additionalPrinterColumns": [dict(c) for c in kind.printer_columns],
    }
    if kind.selectable_fields:
        version["selectableFields"] = [dict(f) for f in kind.selectable_fields]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.name},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": list(kind.categories),
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # shared sub-schemas are written out in full, never as &anchors


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def render(kind: CrdKind = AGENT_SESSION) -> str:
    """The CRD file's content: header comment and YAML with keys sorted, as controller-gen does."""
    body = yaml.dump(
        custom_resource_definition(kind),
        Dumper=_Dumper,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        # Unfolded lines keep CEL rules readable and diffs to the line that changed.
        width=1 << 16,
    )
    return HEADER + "---\n" + body


def render_all() -> dict[str, str]:
    """Every CRD file by name, in KINDS' order."""
    return {kind.filename: render(kind) for kind in KINDS}


def generated_file_cli(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    render_files: Callable[[], Mapping[str, str]],
) -> int:
    """The `--write DIR` / `--check DIR` / stdout CLI shared by the generated-file modules.

    `render_files` gives each file's name and content: `--write` writes them all, `--check`
    reports every stale or missing one (exit 1), stdout gets them one after another.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", metavar="DIR", type=Path, help="write the files into DIR")
    mode.add_argument("--check", metavar="DIR", type=Path, help="exit 1 if DIR's files are stale")
    args = parser.parse_args(argv)
    files = render_files()
    if args.write is not None:
        args.write.mkdir(parents=True, exist_ok=True)
        for filename, text in files.items():
            (args.write / filename).write_text(text)
            print(f"Wrote {args.write / filename}")
        return 0
    if args.check is not None:
        stale = 0
        for filename, text in files.items():
            path = args.check / filename
            current = path.read_text() if path.exists() else ""
            if current == text:
                continue
            stale += 1
            sys.stderr.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    fromfile=str(path),
                    tofile="generated",
                )
            )
            print(f"{path} is stale: run `make manifests`.", file=sys.stderr)
        return 1 if stale else 0
    sys.stdout.write("".join(files.values()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    return generated_file_cli(
        argv,
        prog="python -m agentsession_operator.models.crd",
        description=(
            "Generate "
            + ", ".join(f"crds/{kind.filename}" for kind in KINDS)
            + " from the pydantic models (stdout by default)."
        ),
        render_files=render_all,
    )


if __name__ == "__main__":
    sys.exit(main())
