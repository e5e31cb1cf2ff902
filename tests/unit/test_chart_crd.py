"""The chart's CRD templates are generated from the models (as crds/ is) and have not drifted.

`make manifests` writes them with `python -m agentsession_operator.models.crd_chart --write
charts/agentsession-operator/templates/crds/`; tests/chart renders them with helm.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentsession_operator.models import crd, crd_chart

REPO = Path(__file__).resolve().parents[2]
TEMPLATE_DIR = REPO / crd_chart.TEMPLATE_DIR
KINDS = {kind.kind: kind for kind in crd.KINDS}


def without_template_lines(text: str) -> dict[str, object]:
    """The template as plain YAML: lines holding Go-template actions dropped, literal `{{`
    (escaped as `{{ "{{" }}` in descriptions and defaults) restored."""
    escaped = '{{ "{{" }}'
    lines = [line.replace(escaped, "\0") for line in text.splitlines()]
    kept = "\n".join(line for line in lines if "{{" not in line).replace("\0", "{{")
    doc: dict[str, object] = yaml.safe_load(kept)
    return doc


def test_committed_templates_are_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    status = crd_chart.main(["--check", str(TEMPLATE_DIR)])
    assert status == 0, capsys.readouterr().err
    assert sorted(p.name for p in TEMPLATE_DIR.glob("*.yaml")) == sorted(
        k.filename for k in crd.KINDS
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_check_mode_reports_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    assert crd_chart.main(["--check", str(tmp_path)]) == 1
    assert "make manifests" in capsys.readouterr().err
    assert crd_chart.main(["--write", str(tmp_path)]) == 0
    assert crd_chart.main(["--check", str(tmp_path)]) == 0
    path = tmp_path / KINDS[kind].filename
    path.write_text(path.read_text().replace("description", "descriptio", 1))
    assert crd_chart.main(["--check", str(tmp_path)]) == 1
    assert f"{path} is stale" in capsys.readouterr().err


@pytest.mark.parametrize("kind", list(KINDS))
def test_template_is_the_crds_file_behind_crds_enabled_with_keep_templated(kind: str) -> None:
    text = crd_chart.render_template(KINDS[kind])
    lines = text.splitlines()
    assert lines[1] == "{{- if .Values.crds.enabled }}"
    assert lines[-1] == "{{- end }}"
    assert "  {{- if .Values.crds.keep }}" in lines
    assert '    {{- include "agentsession-operator.labels" . | nindent 4 }}' in lines
    assert f"    # Uninstalling the chart leaves the CRD, and so every {kind}, in place." in lines
    template = without_template_lines(text)
    committed = yaml.safe_load((REPO / "crds" / KINDS[kind].filename).read_text())
    assert template["spec"] == committed["spec"]
    assert template["metadata"] == {
        "name": committed["metadata"]["name"],
        "labels": None,  # filled by the include line
        "annotations": {"helm.sh/resource-policy": "keep"},
    }


def test_go_template_delimiters_in_the_crd_are_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    original = crd.render()
    monkeypatch.setattr(
        crd, "render", lambda kind=crd.AGENT_SESSION: original.replace("Phase", "Phase {{ .X }}", 1)
    )
    text = crd_chart.render_template()
    assert 'Phase {{ "{{" }} .X }}' in text


def test_unexpected_crd_shape_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        crd, "render", lambda kind=crd.AGENT_SESSION: "---\nkind: CustomResourceDefinition\n"
    )
    with pytest.raises(crd_chart.TemplateError):
        crd_chart.render_template()
