"""The release workflow publishes exactly the image references the chart and the operator default
to, at the one version pyproject.toml, Chart.yaml and the tag agree on. Pure: reads files."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from agentsession_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "release.yaml"
CHART = REPO / "charts" / "agentsession-operator"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def pushed_images() -> dict[str, tuple[str, str]]:
    """Dockerfile -> (repository, tag expression) of every image the workflow pushes."""
    workflow = load(WORKFLOW)
    registry = workflow["env"]["REGISTRY"]
    pushed = {}
    for step in workflow["jobs"]["release"]["steps"]:
        if str(step.get("uses", "")).startswith("docker/build-push-action"):
            options = step["with"]
            assert options["push"] is True
            assert options["platforms"] == "linux/amd64,linux/arm64"
            repository, tag = options["tags"].replace("${{ env.REGISTRY }}", registry).split(":", 1)
            pushed[options["file"]] = (repository, tag)
    return pushed


def test_versions_agree() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = load(CHART / "Chart.yaml")
    assert chart["appVersion"] == project
    assert chart["version"] == project  # the workflow refuses a tag the three do not share


def test_workflow_publishes_what_the_chart_and_operator_default_to() -> None:
    chart = load(CHART / "Chart.yaml")
    values = load(CHART / "values.yaml")
    pushed = pushed_images()
    assert set(pushed) == {"runner-image/Dockerfile", "operator/Dockerfile"}
    assert all((REPO / dockerfile).is_file() for dockerfile in pushed)
    version_tag = "${{ steps.version.outputs.version }}"
    assert {tag for _, tag in pushed.values()} == {version_tag}

    operator_repository, _ = pushed["operator/Dockerfile"]
    assert values["image"]["repository"] == operator_repository
    assert values["image"]["tag"] == ""  # the chart's appVersion: the version the tag published

    runner_repository, _ = pushed["runner-image/Dockerfile"]
    assert values["runner"]["image"] == f"{runner_repository}:{chart['appVersion']}"
    default = OperatorSettings.model_fields["runner_image"].default
    assert default == values["runner"]["image"]


def test_chart_is_pushed_as_an_oci_artifact() -> None:
    workflow = load(WORKFLOW)
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert trigger == {"push": {"tags": ["v*.*.*"]}}
    assert workflow["env"]["CHART_REPOSITORY"].startswith("oci://")
    script = "\n".join(
        step.get("run", "") for step in workflow["jobs"]["release"]["steps"] if "run" in step
    )
    assert "helm package charts/agentsession-operator" in script
    assert 'helm push "dist/agentsession-operator-' in script
