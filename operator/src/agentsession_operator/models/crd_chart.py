"""Writes the CRDs as Helm chart templates, from the same source as `crds/`.

Run by `make manifests` (`python -m agentsession_operator.models.crd_chart --write
charts/agentsession-operator/templates/crds/`) and checked by tests/unit/test_chart_crd.py
(`--check`). Each template is `crd.render(kind)` (so the spec is byte-for-byte the one in `crds/`)
with two changes Helm needs: the document sits behind
`{{- if .Values.crds.enabled }}`, and its metadata carries the chart's labels and, when
`crds.keep` is on, `helm.sh/resource-policy: keep` (Helm then leaves the CRD, and with it every
object of its kind, in place on uninstall). Helm never upgrades files in a chart's `crds/`
directory, which is why the CRDs are templates.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import crd
from .crd import AGENT_SESSION, KINDS, CrdKind, generated_file_cli

CHART_NAME = "agentsession-operator"
TEMPLATE_DIR = f"charts/{CHART_NAME}/templates/crds"
HEADER = (
    "{{- /* Generated from operator/src/agentsession_operator/models by `make manifests`"
    " (python -m agentsession_operator.models.crd_chart). DO NOT EDIT. */ -}}\n"
)


class TemplateError(ValueError):
    """The CRD text cannot be wrapped into the chart template as expected."""


def _escape(text: str) -> str:
    """Make Go-template delimiters in the CRD (descriptions, CEL) literal text for Helm."""
    return text.replace("{{", '{{ "{{" }}')


def _plain_metadata(kind: CrdKind) -> str:
    return f"\nmetadata:\n  name: {kind.name}\n"


def _chart_metadata(kind: CrdKind) -> str:
    return f"""
metadata:
  name: {kind.name}
  labels:
    {{{{- include "{CHART_NAME}.labels" . | nindent 4 }}}}
  {{{{- if .Values.crds.keep }}}}
  annotations:
    # Uninstalling the chart leaves the CRD, and so every {kind.kind}, in place.
    helm.sh/resource-policy: keep
  {{{{- end }}}}
"""


def render_template(kind: CrdKind = AGENT_SESSION) -> str:
    """The chart template's content: the CRD from `crd.render(kind)`, wrapped for Helm."""
    crd_text = _escape(crd.render(kind))
    _, separator, body = crd_text.partition("---\n")
    plain = _plain_metadata(kind)
    if not separator or body.count(plain) != 1:
        raise TemplateError("expected one top-level `metadata: {name}` block in the CRD")
    body = body.replace(plain, _chart_metadata(kind), 1)
    return HEADER + "{{- if .Values.crds.enabled }}\n" + body + "{{- end }}\n"


def render_templates() -> dict[str, str]:
    """Every chart template by file name, in KINDS' order."""
    return {kind.filename: render_template(kind) for kind in KINDS}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    return generated_file_cli(
        argv,
        prog="python -m agentsession_operator.models.crd_chart",
        description=(
            "Generate "
            + ", ".join(f"{TEMPLATE_DIR}/{kind.filename}" for kind in KINDS)
            + " (stdout by default)."
        ),
        render_files=render_templates,
    )


if __name__ == "__main__":
    sys.exit(main())
