"""End to end: bad specs are refused, by the API server at apply time or by operator policy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import ALLOWED_IMAGE_PREFIX, Sessions, condition, marker
from tests.support import scripted_api as sa
from tests.support.cluster import LocalCluster
from tests.support.node import LocalNode

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]

INVALID = Path(__file__).resolve().parents[1] / "manifests" / "invalid"
EXPECT = re.compile(r"^#\s*expect:\s*(?P<text>.+?)\s*$", re.MULTILINE)


@pytest.mark.parametrize(
    "manifest",
    ["max-turns-zero.yaml", "env-claude-config-dir.yaml", "literal-api-key.yaml"],
)
def test_apply_rejects_a_bad_manifest_naming_the_field(
    sessions: Sessions, local_cluster: LocalCluster, manifest: str
) -> None:
    path = INVALID / manifest
    expected = [m.group("text") for m in EXPECT.finditer(path.read_text())]
    assert expected, f"{manifest} lacks '# expect:'"
    result = local_cluster.kubectl("apply", "-n", sessions.namespace, "-f", str(path))
    assert result.returncode != 0, result.stdout
    for field in expected:
        assert field in result.stderr, result.stderr
    listed = local_cluster.kubectl("get", "ags", "-n", sessions.namespace, "-o", "name")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == ""


def test_operator_policy_refuses_images_and_limits_it_does_not_allow(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    local_cluster: LocalCluster,
    node: LocalNode,
    runner_image: str,
) -> None:
    tag_bad, tag_limit, tag_ok = marker(), marker(), marker()
    scripted_api.route(tag_ok, sa.text("Ran on the allowed image."))
    allowed = ALLOWED_IMAGE_PREFIX + "runner:2"
    node.tag_image(runner_image, allowed)  # a platform team's own build of the runner
    sessions.create("rogue", {"prompt": f"{tag_bad}: run", "image": "evil.example/runner:1"})
    sessions.create("greedy", {"prompt": f"{tag_limit}: run", "maxTurns": 500})
    sessions.create("vetted", {"prompt": f"{tag_ok}: run", "image": allowed})

    rogue = sessions.wait("rogue")
    assert rogue["phase"] == "Failed", rogue
    assert rogue["reason"] == "InvalidSpec"
    assert "spec.image" in rogue["message"]
    assert "evil.example/runner:1" in rogue["message"]
    assert condition(rogue, "Succeeded")["status"] == "False"
    greedy = sessions.wait("greedy")
    assert greedy["phase"] == "Failed", greedy
    assert greedy["reason"] == "InvalidSpec"
    assert "spec.maxTurns 500 exceeds the operator's maximum" in greedy["message"]
    for name in ("rogue", "greedy"):
        assert sessions.pods(name) == []
        assert not sessions.status(name).get("attempts")
        assert "InvalidSpec" in sessions.event_reasons(name)
    refused = (tag_bad, tag_limit)
    asked = [
        r for r in scripted_api.model_requests() if any(t in r.text_content() for t in refused)
    ]
    assert asked == [], "a refused session reached the model"
    waited = local_cluster.kubectl(
        "wait",
        "-n",
        sessions.namespace,
        "--for=condition=Succeeded=False",
        "agentsession/rogue",
        "--timeout=30s",
        timeout=60,
    )
    assert waited.returncode == 0, waited.stderr

    vetted = sessions.wait("vetted")
    assert vetted["phase"] == "Succeeded", vetted
    (pod,) = sessions.pods("vetted")
    assert pod.spec.containers[0].image == allowed
