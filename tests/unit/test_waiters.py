"""Sessions waiting on a sessionRef, as the event handler tracks them (handlers.Waiters)."""

from __future__ import annotations

from agentsession_operator.handlers import Waiters


def test_waiters_follow_the_event_stream() -> None:
    waiters = Waiters()
    waiting = {"resume": {"sessionRef": "first"}}
    waiters.update("ns", "second", waiting, None, gone=False)
    waiters.update("ns", "third", waiting, "Pending", gone=False)
    waiters.update("ns", "plain", {"prompt": "x"}, None, gone=False)
    waiters.update("other", "elsewhere", waiting, None, gone=False)
    assert sorted(waiters.of("ns", "first")) == ["second", "third"]
    assert waiters.of("other", "first") == ("elsewhere",)
    waiters.update("ns", "second", waiting, "Succeeded", gone=False)  # it ran and finished
    waiters.update("ns", "third", waiting, "Pending", gone=True)  # deleted while waiting
    assert waiters.of("ns", "first") == ()
    assert waiters.of("ns", "plain") == ()
