"""The gateway process never imports the Agent SDK: it serves bytes, and the SDK (pulled in by
TranscriptStore) would cost its start ~0.6 s and tens of MB, on every pod's critical path."""

from __future__ import annotations

import subprocess
import sys


def test_the_gateway_does_not_import_the_sdk() -> None:
    probe = (
        "import sys, agentsession_gateway.main, agentsession_gateway.s3, "
        "agentsession_gateway.store_service; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('claude_agent_sdk', 'mcp')))"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    assert output.strip() == "[]"


def test_the_store_package_still_exports_the_transcript_store() -> None:
    from agentsession_contract import store
    from agentsession_contract.store.transcript import MAX_CONCURRENCY, TranscriptStore

    assert store.TranscriptStore is TranscriptStore
    assert store.MAX_CONCURRENCY == MAX_CONCURRENCY
