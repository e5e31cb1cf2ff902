"""End to end: what the schema accepts but the cluster or the operator cannot run fails the
session with a reason, or holds it with one; nothing wedges a session or the operator.

The pure rules are table-tested in tests/unit (test_decide.py, test_hold.py); the fuzz test over
schema-valid AgentSessions is tests/e2e/test_fuzz.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Sessions, condition
from tests.e2e.test_budgets import create_budget, settled, usd
from tests.support.cluster import LocalCluster, wait_for
from tests.support.operator_process import OperatorProcess
from tests.support.s3server import TenantStore
from tests.support.session_secrets import add_session_secrets

pytestmark = [pytest.mark.cluster, pytest.mark.s3]

SESSION_REF_TIMEOUT_SECONDS = 15  # the e2e operator's AGENTSESSION_SESSION_REF_TIMEOUT_SECONDS


@pytest.fixture
def restricted_sessions(
    local_cluster: LocalCluster,
    restricted_namespace: str,
    operator: OperatorProcess,
    tenant_store: TenantStore,
) -> Iterator[Sessions]:
    """Sessions in a namespace whose Pod Security `restricted` refuses the local node's runner
    pods (host network): a real refusal by the API server's admission, as a quota, a policy or
    a missing RuntimeClass would be."""
    add_session_secrets(local_cluster, restricted_namespace)
    tenant_store.provision(restricted_namespace)
    helper = Sessions(local_cluster, restricted_namespace)
    yield helper
    helper.close()


def test_a_pod_the_api_server_refuses_fails_the_session_and_gives_back_its_reservation(
    restricted_sessions: Sessions, operator: OperatorProcess
) -> None:
    sessions = restricted_sessions
    # One session's worth: the second is admitted only if the first one's reservation came back.
    create_budget(sessions, "team", {"limits": [{"period": "Daily", "amountUsd": 1}]})
    settled(sessions, "team")  # its first status: the operator admits against it from now on
    for name in ("first", "second"):
        sessions.create(name, {"prompt": "never runs", "maxBudgetUsd": 1.0})
        status = sessions.wait(name, timeout=60)
        assert status["phase"] == "Failed", status
        assert status["reason"] == "InvalidSpec"
        message = status["message"]
        assert message.startswith(
            f"attempt 1 cannot start: the API server refused runner pod {name}-1 (403 Forbidden): "
        ), message
        assert 'violates PodSecurity "restricted:latest"' in message
        assert "hostNetwork=true" in message
        assert condition(status, "Succeeded")["reason"] == "InvalidSpec"
        assert not status.get("attempts")
        assert sessions.pods(name) == []
        events = [e for e in sessions.events(name) if e.reason == "InvalidSpec"]
        assert len(events) == 1
        assert events[0].type == "Warning"
        assert "violates PodSecurity" in events[0].message
    ledger = settled(sessions, "team")
    assert usd(ledger.get("totalSpentUsd", 0)) == 0
    assert ledger["running"] == 0
    # Final: refused once each, never retried (before, 'Reconcile failed; retrying' every 5 s).
    entries = [
        json.loads(line)
        for line in operator.log_path.read_text().splitlines()
        if line.startswith("{") and sessions.namespace in line
    ]
    messages = [str(e.get("message")) for e in entries]
    assert messages.count("The API server refused a runner pod for good; the session fails") == 2
    assert not [m for m in messages if m.startswith("Reconcile failed")]


def test_a_wait_for_a_session_ref_that_never_exists_times_out_naming_it(
    sessions: Sessions,
) -> None:
    sessions.create("orphan", {"prompt": "continue", "resume": {"sessionRef": "never-made"}})
    waiting = sessions.wait(
        "orphan", lambda s: s.get("phase") == "Pending", what="Pending", timeout=30
    )
    assert condition(waiting, "Running")["reason"] == "WaitingForSessionRef"
    status = sessions.wait("orphan", timeout=SESSION_REF_TIMEOUT_SECONDS + 45)
    assert status["phase"] == "Failed", status
    assert status["reason"] == "InvalidSpec"
    assert status["message"].startswith(
        "AgentSession never-made (spec.resume.sessionRef) does not exist: gave up waiting after "
    )
    assert (
        f"AGENTSESSION_SESSION_REF_TIMEOUT_SECONDS={SESSION_REF_TIMEOUT_SECONDS}"
        in (status["message"])
    )
    assert "InvalidSpec" in sessions.event_reasons("orphan")
    assert sessions.pods("orphan") == []


MAX_TURNS = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/maxTurns/maximum"


def patch_crd(cluster: LocalCluster, operation: dict[str, Any]) -> None:
    result = cluster.kubectl(
        "patch", "crd", "agentsessions.agents.dev", "--type=json", "-p", json.dumps([operation])
    )
    assert result.returncode == 0, result.stderr


def test_a_session_stored_before_a_stricter_crd_fails_with_the_validation_error(
    sessions: Sessions, local_cluster: LocalCluster
) -> None:
    # The CRD as an older release had it: no maximum on maxTurns.
    patch_crd(local_cluster, {"op": "remove", "path": MAX_TURNS})
    try:
        wait_for(
            lambda: sessions.cluster.kubectl(
                "apply", "--dry-run=server", "-n", sessions.namespace, "-f", "-",
                input_text=json.dumps(old_session("probe")),
            ).returncode == 0,
            timeout=30,
            what="the API server to serve the looser schema",
        )  # fmt: skip
        created = local_cluster.kubectl(
            "create", "-n", sessions.namespace, "-f", "-", input_text=json.dumps(old_session("old"))
        )
        assert created.returncode == 0, created.stderr
    finally:
        patch_crd(local_cluster, {"op": "add", "path": MAX_TURNS, "value": 1000})
    status = sessions.wait("old", timeout=60)
    assert status["phase"] == "Failed", status
    assert status["reason"] == "InvalidSpec"
    assert "the operator cannot read this AgentSession" in status["message"]
    assert "spec.maxTurns: Input should be less than or equal to 1000" in status["message"]
    assert condition(status, "Succeeded")["status"] == "False"
    assert "InvalidSpec" in sessions.event_reasons("old")
    assert sessions.pods("old") == []


def old_session(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "agents.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": name},
        "spec": {"prompt": "from before", "maxTurns": 5000},
    }


DEPTH = 2_000
"""Deeper than Python's default recursion limit lets json parse (about 1,000): before the fix,
one such session made kopf's watch of every AgentSession fail and the operator exit."""


def test_a_schema_nested_as_deep_as_the_api_server_allows_fails_only_that_session(
    sessions: Sessions, local_cluster: LocalCluster, operator: OperatorProcess
) -> None:
    schema = '{"items":' * DEPTH + '{"type":"string"}' + "}" * DEPTH
    manifest = (
        '{"apiVersion":"agents.dev/v1alpha1","kind":"AgentSession","metadata":{"name":"deep"},'
        f'"spec":{{"prompt":"structured","outputFormat":{{"schema":{schema}}}}}}}'
    )
    created = local_cluster.kubectl("create", "-n", sessions.namespace, "-f", "-",
                                    input_text=manifest)  # fmt: skip
    assert created.returncode == 0, created.stderr
    try:

        def final() -> dict[str, Any] | None:
            # kubectl, not the Python client: this test's own json could not parse the object.
            got = local_cluster.kubectl(
                "get", "ags", "deep", "-n", sessions.namespace, "-o", "jsonpath={.status}"
            )
            status: dict[str, Any] = json.loads(got.stdout or "{}")
            return status if status.get("phase") == "Failed" else None

        status = wait_for(final, timeout=60, what="the deep session to fail")
        assert status["reason"] == "InvalidSpec"
        assert status["message"] == (
            f"spec.outputFormat.schema nests {DEPTH + 1} levels deep (objects and arrays); the "
            "operator accepts at most 100"
        )
        assert operator.process is not None
        assert operator.process.poll() is None
        assert "RecursionError" not in operator.log_path.read_text()
    finally:
        deleted = local_cluster.kubectl(
            "delete", "ags", "deep", "-n", sessions.namespace, "--wait=true"
        )
        assert deleted.returncode == 0, deleted.stderr
    # The operator still serves everyone else.
    sessions.create("after", {"prompt": "fine", "suspend": True})
    held = sessions.wait("after", lambda s: s.get("phase") == "Suspended", what="Suspended")
    assert held["phase"] == "Suspended"
