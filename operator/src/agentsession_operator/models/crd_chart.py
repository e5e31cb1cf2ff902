"""Writes the AgentSession CRD as a Helm chart template, from the same source as `crds/`.

Run by `make manifests` (`python -m agentsession_operator.models.crd_chart --write
charts/agentsession-operator/templates/crds/`) and checked by tests/unit/test_chart_crd.py
(`--check`). The template is `crd.render()` (so the spec is byte-for-byte the one in `crds/`)
with two changes Helm needs: the document sits behind
`{{- if .Values.crds.enabled }}`, and its metadata carries the chart's labels and, when
`crds.keep` is on, `helm.sh/resource-policy: keep` (Helm then leaves the CRD, and with it every
AgentSession, in place on uninstall). Helm never upgrades files in a chart's `crds/` directory,
which is why the CRD is a template.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .crd import FILENAME, generated_file_cli, render
from .resource import CRD_NAME

CHART_NAME = "agentsession-operator"
TEMPLATE_DIR = f"charts/{CHART_NAME}/templates/crds"
HEADER = (
    "{{- /* Generated from operator/src/agentsession_operator/models by `make manifests`"
    " (python -m agentsession_operator.models.crd_chart). DO NOT EDIT. */ -}}\n"
)
_PLAIN_METADATA = f"\nmetadata:\n  name: {CRD_NAME}\n"
_CHART_METADATA = f"""
metadata:
  name: {CRD_NAME}
  labels:
    {{{{- include "{CHART_NAME}.labels" . | nindent 4 }}}}
  {{{{- if .Values.crds.keep }}}}
  annotations:
    # Uninstalling the chart leaves the CRD, and so every AgentSession, in place.
    helm.sh/resource-policy: keep
  {{{{- end }}}}
"""


class TemplateError(ValueError):
    """The CRD text cannot be wrapped into the chart template as expected."""


def _escape(text: str) -> str:
    """Make Go-template delimiters in the CRD (descriptions, CEL) literal text for Helm."""
    return text.replace("{{", '{{ "{{" }}')


def render_template() -> str:
    """The chart template's content: the CRD from `crd.render()`, wrapped for Helm."""
    crd_text = _escape(render())
    _, separator, body = crd_text.partition("---\n")
    if not separator or body.count(_PLAIN_METADATA) != 1:
        raise TemplateError("expected one top-level `metadata: {name}` block in the CRD")
    body = body.replace(_PLAIN_METADATA, _CHART_METADATA, 1)
    return HEADER + "{{- if .Values.crds.enabled }}\n" + body + "{{- end }}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    return generated_file_cli(
        argv,
        prog="python -m agentsession_operator.models.crd_chart",
        description=f"Generate {TEMPLATE_DIR}/{FILENAME} (stdout by default).",
        filename=FILENAME,
        render_text=render_template,
    )


if __name__ == "__main__":
    sys.exit(main())
