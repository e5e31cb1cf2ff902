"""Fuzz: AgentSessions generated from the CRD's own schema, applied to the real API server with
the operator running on the real node. Whatever the API server accepts must end (Succeeded,
Failed with a reason) or wait in a documented state with a reason (Suspended; a runner pod that
cannot be scheduled or started, its reason on the Running condition) within a bound, and the
operator must never log an unhandled exception.

Cheap by construction: a fixed seed and AGENTSESSION_FUZZ_EXAMPLES (40) sessions in CI; the
runner and gateway are stubs (tests/support/stubs.py: an exit with a summary, an idle shell) in
tiny default pods; backoffLimit is drawn from 0-1 and the limits mostly near the operator's
maximums, so most sessions get a pod and none makes more than two. Run more with, e.g.,
`AGENTSESSION_FUZZ_EXAMPLES=200 AGENTSESSION_FUZZ_SEED=7 pytest tests/e2e/test_fuzz.py`.
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import strategies as st
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from agentsession_operator.models import AgentSession
from tests.e2e.conftest import OperatorFactory, Sessions, stopped
from tests.support.cluster import CRD_DIR, wait_for
from tests.support.fuzz import examples, strategy_for
from tests.support.operator_process import OperatorProcess
from tests.support.stubs import STUB_RESOURCES, stub_command, stub_gateway_command

pytestmark = [pytest.mark.cluster, pytest.mark.s3]

EXAMPLES = int(os.environ.get("AGENTSESSION_FUZZ_EXAMPLES", "40"))
SEED = int(os.environ.get("AGENTSESSION_FUZZ_SEED", "20261207"))
SETTLE_SECONDS = 240.0
"""Every accepted session ends or waits with a reason this long after the last was created."""
OVERRIDES = {
    ".backoffLimit": st.integers(0, 1),
    ".maxTurns": st.integers(1, 250),  # the operator's maximum is 200
    ".maxBudgetUsd": st.integers(1, 3000).map(lambda cents: cents / 100),  # maximum 25
    ".timeoutSeconds": st.integers(1, 25_000),  # maximum 21600
}
"""Where the schema's range is far wider than what runs (and what runs is the interesting part),
or would cost many pods."""
TERMINAL = frozenset({"Succeeded", "Failed"})
OPERATOR_WAITS = frozenset({"RetryBackoff", "Suspending", "Queued", "WaitingForSessionRef"})
"""Running condition reasons of the operator's own that pass by themselves: not a final state."""


def body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "agents.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": name, "namespace": "fuzz", "uid": "fuzz"},
        "spec": spec,
    }


def model_accepts(spec: dict[str, Any]) -> bool:
    """Whether the operator's model takes it: the schema plus the Python twins of the CRD's CEL
    rules, which the API server applies too (so what passes should pass there)."""
    try:
        AgentSession.from_body(body("fuzz-0", spec))
    except ValidationError:
        return False
    return True


def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load((CRD_DIR / "agents.dev_agentsessions.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(schema["properties"]["spec"])


@pytest.fixture
def fuzz_operator(
    operator: OperatorProcess, operator_factory: OperatorFactory
) -> Iterator[OperatorProcess]:
    """The e2e operator's twin with stub runners in tiny pods (the e2e one is stopped
    meanwhile: two operators would both reconcile every namespace)."""
    with stopped(operator):
        process = operator_factory.process(
            "fuzz",
            {
                "AGENTSESSION_RUNNER_COMMAND": ",".join(stub_command()),
                "AGENTSESSION_GATEWAY_COMMAND": ",".join(stub_gateway_command()),
                "AGENTSESSION_DEFAULT_CPU": STUB_RESOURCES["cpu"],
                "AGENTSESSION_DEFAULT_MEMORY": STUB_RESOURCES["memory"],
                "AGENTSESSION_DEFAULT_EPHEMERAL_STORAGE": STUB_RESOURCES["ephemeral-storage"],
                "AGENTSESSION_GATEWAY_CPU": STUB_RESOURCES["cpu"],
                "AGENTSESSION_GATEWAY_MEMORY": STUB_RESOURCES["memory"],
                "AGENTSESSION_SESSION_REF_TIMEOUT_SECONDS": "10",
            },
        )
        process.start()
        yield process
        process.stop()


def settled(spec: dict[str, Any], status: dict[str, Any] | None) -> str | None:
    """How the session stands if it is done for now (None: still on its way), as `phase/reason`."""
    if status is None:  # deleted: only ttlSecondsAfterFinished may do that, once it finished
        return "deleted after finishing" if "ttlSecondsAfterFinished" in spec else None
    phase = status.get("phase")
    if phase in TERMINAL:
        return f"{phase}/{status.get('reason')}"
    if phase == "Suspended":
        return "Suspended"
    running = next((c for c in status.get("conditions") or [] if c["type"] == "Running"), None)
    if (
        running is not None
        and running["status"] == "False"
        and running["reason"] not in OPERATOR_WAITS
        and running.get("message")
        and status.get("message")
    ):
        return f"{phase} waiting/{running['reason']}"
    return None


# Most of the time is waiting for the node to start and end up to 40 stub pods on 2 cores, and
# for sessions that time out (sessionRef, 10 s; a pod never scheduled is a waiting state at once).
@pytest.mark.timeout(600)
def test_schema_valid_sessions_end_or_wait_with_a_reason_and_never_crash_the_operator(
    sessions: Sessions, fuzz_operator: OperatorProcess
) -> None:
    # Drawn from the CRD's schema and kept when the CEL rules' twins hold, so that nearly all
    # reach the operator: what the API server still refuses is a twin that disagrees with its rule.
    specs = examples(strategy_for(spec_schema(), OVERRIDES).filter(model_accepts), EXAMPLES, SEED)
    accepted: dict[str, dict[str, Any]] = {}
    refused: dict[str, str] = {}
    for number, spec in enumerate(specs):
        name = f"fuzz-{number}"
        try:
            sessions.create(name, spec)
        except ApiException as error:
            if error.status not in (400, 422):  # the API server's validation, nothing else
                raise
            refused[name] = f"{json.dumps(spec)}: {json.loads(error.body).get('message')}"
            continue
        accepted[name] = spec
    assert refused == {}, "the API server refused what the model's rules accept"

    outcomes: dict[str, str | None] = {}
    settled_after: dict[str, float] = {}
    started = time.monotonic()

    def all_settled() -> bool:
        listed = sessions.api.list_namespaced_custom_object(
            "agents.dev", "v1alpha1", sessions.namespace, "agentsessions"
        )["items"]
        statuses = {item["metadata"]["name"]: item.get("status") or {} for item in listed}
        for name, spec in accepted.items():
            outcomes[name] = settled(spec, statuses.get(name))
            if outcomes[name] and name not in settled_after:
                settled_after[name] = time.monotonic() - started
        return all(outcomes.values())

    try:
        wait_for(all_settled, timeout=SETTLE_SECONDS, interval=1.0, what="every session to settle")
    finally:
        unsettled = {name: sessions.status(name) for name, state in outcomes.items() if not state}
        slowest = sorted(settled_after.items(), key=lambda item: -item[1])[:3]
        print(  # the run's summary, shown with -s or on failure
            f"fuzz seed {SEED}: {len(accepted)} sessions, "
            f"{time.monotonic() - started:.0f}s: {dict(collections.Counter(outcomes.values()))}; "
            "slowest: "
            + "; ".join(f"{n} {t:.0f}s {outcomes[n]} {json.dumps(accepted[n])}" for n, t in slowest)
            + f"; unsettled: {unsettled}"
        )
    assert fuzz_operator.process is not None
    assert fuzz_operator.process.poll() is None, "the operator exited"
    entries = [
        json.loads(line)
        for line in fuzz_operator.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    crashes = [
        e
        for e in entries
        if "exception" in e
        or e.get("level") == "critical"
        or str(e.get("message", "")).startswith(("Reconcile failed", "Status of a held session"))
    ]
    assert crashes == [], crashes
