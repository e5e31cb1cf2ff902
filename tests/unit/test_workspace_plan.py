"""The operator's workspace logic: the snapshot part of the run config (on by default, held to
the operator's maximum), and status.workspace from the attempt's end."""

from __future__ import annotations

import datetime as dt

from agentsession_operator.reconcile.decide import decide
from agentsession_operator.reconcile.observed import Observed
from agentsession_operator.reconcile.podspec import run_config_for, session_id_for
from agentsession_operator.settings import OperatorSettings
from tests.unit.test_decide import COMPLETED, SETTINGS, T0, UID, ended, started
from tests.unit.test_podspec import session

SMALL = OperatorSettings(store_url="s3://bucket/agents", workspace_snapshot_max_bytes="1Gi")


def test_snapshots_are_on_by_default_at_the_operators_maximum() -> None:
    config = run_config_for(session(), None, SMALL)
    assert config.snapshot is not None
    assert config.snapshot.max_bytes == 1 << 30
    assert config.snapshot.exclude == []


def test_max_bytes_is_held_to_the_operators_maximum() -> None:
    wanted = {"snapshot": {"maxBytes": "10Gi", "exclude": ["node_modules/"]}}
    config = run_config_for(session(workspace=wanted), None, SMALL)
    assert config.snapshot is not None
    assert config.snapshot.max_bytes == 1 << 30
    assert config.snapshot.exclude == ["node_modules/"]
    smaller = run_config_for(session(workspace={"snapshot": {"maxBytes": "5Mi"}}), None, SMALL)
    assert smaller.snapshot is not None
    assert smaller.snapshot.max_bytes == 5 << 20


def test_snapshots_can_be_turned_off() -> None:
    off = session(workspace={"snapshot": {"enabled": False}})
    assert run_config_for(off, None, SMALL).snapshot is None


def test_the_snapshot_goes_to_status_with_the_operators_own_uri() -> None:
    summary = {
        **COMPLETED,
        "workspace": {"taken": True, "files": 3, "bytes": 120, "uploadedBytes": 80},
    }
    plan = decide(
        started(), Observed(pods=(ended(1, 0, summary),)), SETTINGS, T0 + dt.timedelta(minutes=1)
    )
    assert plan.status is not None
    assert plan.status.workspace is not None
    snapshot = plan.status.workspace.snapshot
    assert snapshot is not None
    uri = f"s3://bucket/agents/team-a/sessions/{session_id_for(UID)}/workspace/"
    assert (snapshot.uri, snapshot.files, snapshot.bytes, snapshot.uploaded_bytes) == (
        uri,
        3,
        120,
        80,
    )
    assert snapshot.message is None


def test_a_snapshot_not_taken_keeps_the_last_figures_and_says_why() -> None:
    summary = {
        **COMPLETED,
        "workspace": {"taken": False, "message": "the workspace holds 9 bytes, over maxBytes"},
    }
    plan = decide(
        started(), Observed(pods=(ended(1, 0, summary),)), SETTINGS, T0 + dt.timedelta(minutes=1)
    )
    assert plan.status is not None
    assert plan.status.workspace is not None
    snapshot = plan.status.workspace.snapshot
    assert snapshot is not None
    assert snapshot.files is None
    assert snapshot.message == "the workspace holds 9 bytes, over maxBytes"
