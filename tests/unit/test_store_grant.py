"""The gateway's store grant: what one attempt's agent may read, write and list. Pure."""

from __future__ import annotations

import pytest

from agentsession_contract.store.backend import StoredObject
from agentsession_gateway.store_service import AccessDenied, StoreGrant

OWN, SOURCE, OTHER = "own-session", "source-session", "other-session"
GRANT = StoreGrant.for_session("sessions", OWN, resume_source=SOURCE)


@pytest.mark.parametrize(
    "key",
    [
        f"sessions/{OWN}/main/00000000000000000001-0123456789abcdef.jsonl",
        f"sessions/{OWN}/summary.json",
        f"sessions/{OWN}/result.json",
        f"sessions/{OWN}/sub/subagents/agent-1/00000000000000000001-0123456789abcdef.jsonl",
    ],
)
def test_the_session_may_read_and_write_its_own_keys(key: str) -> None:
    GRANT.check_object(key, write=False)
    GRANT.check_object(key, write=True)


def test_the_resume_source_is_readable_not_writable() -> None:
    key = f"sessions/{SOURCE}/main/00000000000000000001-0123456789abcdef.jsonl"
    GRANT.check_object(key, write=False)
    with pytest.raises(AccessDenied, match="not granted for writing"):
        GRANT.check_object(key, write=True)


@pytest.mark.parametrize(
    ("key", "write", "why"),
    [
        (f"sessions/{OTHER}/result.json", False, "not granted for reading"),
        (f"sessions/{OTHER}/result.json", True, "not granted for writing"),
        (f"other-project/{OWN}/result.json", False, "project 'other-project' is not granted"),
        (f"sessions/{OWN}/gateway/attempt-1.json", True, "kept by the gateway"),
        (f"sessions/{OWN}/../{OTHER}/result.json", False, "must not be '..'"),
        (f"sessions/{OWN}", False, "not an object inside a session"),
        ("sessions/", False, "not an object inside a session"),
        (f"sessions/{OWN}/a%2fb", False, "may contain only"),
    ],
)
def test_everything_else_is_denied(key: str, write: bool, why: str) -> None:
    with pytest.raises(AccessDenied, match=why.replace("(", r"\(")):
        GRANT.check_object(key, write=write)


def test_the_gateways_reports_stay_readable_to_the_session() -> None:
    GRANT.check_object(f"sessions/{OWN}/gateway/attempt-1.json", write=False)


def test_listings_cover_granted_sessions_and_filter_project_wide_ones() -> None:
    GRANT.check_listing(f"sessions/{OWN}/main/")
    GRANT.check_listing("sessions/")
    with pytest.raises(AccessDenied):
        GRANT.check_listing(f"sessions/{OTHER}/main/")
    with pytest.raises(AccessDenied):
        GRANT.check_listing("")
    listed = [
        StoredObject(f"sessions/{sid}/main/00000000000000000001-0123456789abcdef.jsonl", 1)
        for sid in (OWN, SOURCE, OTHER)
    ]
    visible = {obj.key.split("/")[1] for obj in GRANT.filter_listing("sessions/", listed)}
    assert visible == {OWN, SOURCE}


FILES_FROM = "files-from-session"
WITH_SOURCES = StoreGrant.for_session(
    "sessions", OWN, resume_source=SOURCE, workspace_sources=frozenset({FILES_FROM})
)


def test_a_from_session_source_lends_its_snapshots_only() -> None:
    manifest = f"sessions/{FILES_FROM}/workspace/manifests/00000000000000000001.json.gz"
    WITH_SOURCES.check_object(manifest, write=False)
    WITH_SOURCES.check_listing(f"sessions/{FILES_FROM}/workspace/manifests/")
    with pytest.raises(AccessDenied, match="not granted for writing"):
        WITH_SOURCES.check_object(manifest, write=True)
    for key in (f"sessions/{FILES_FROM}/result.json", f"sessions/{FILES_FROM}/main/x.jsonl"):
        with pytest.raises(AccessDenied, match="not granted for reading"):
            WITH_SOURCES.check_object(key, write=False)
    with pytest.raises(AccessDenied, match="not granted for reading"):
        WITH_SOURCES.check_listing(f"sessions/{FILES_FROM}/")


def test_own_snapshots_are_writable_and_the_resume_sources_readable() -> None:
    own = f"sessions/{OWN}/workspace/packs/{'a' * 64}"
    GRANT.check_object(own, write=True)
    source = f"sessions/{SOURCE}/workspace/packs/{'a' * 64}"
    GRANT.check_object(source, write=False)
    with pytest.raises(AccessDenied):
        GRANT.check_object(source, write=True)
