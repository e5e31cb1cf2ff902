"""The API client's retry policy and token file (kube/client.py), as pure functions.

What is retried, how long it waits (Retry-After first, else jittered exponential backoff) and when
a token file is read again. The behaviour against a real API server (restarted, in front of a
proxy that answers 429/5xx, with a token rotated under it) is in tests/cluster/test_api_client.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import aiohttp
import pytest
import tenacity

from agentsession_operator.kube.client import (
    BACKOFF_MAX_SECONDS,
    RETRY_AFTER_MAX_SECONDS,
    SAFE,
    UNSAFE,
    KubeError,
    NotLeader,
    RetryPolicy,
    TokenFile,
    retry_after_seconds,
    retry_wait,
    should_retry,
)


def error(status: int, retry_after: float | None = None) -> KubeError:
    return KubeError("GET", "/api/v1/pods", status, "", retry_after)


def refused() -> aiohttp.ClientConnectorError:
    return aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("h", 1, False, False, None, None, None),
        ConnectionRefusedError(111, "refused"),
    )


CASES = [
    ("429 always", error(429), True, True),
    ("500 only if idempotent", error(500), True, False),
    ("503 only if idempotent", error(503), True, False),
    ("501 never", error(501), False, False),
    ("404 never", error(404), False, False),
    ("403 never", error(403), False, False),
    ("409 never", error(409), False, False),
    ("connection refused always: never sent", refused(), True, True),
    ("connection dropped only if idempotent", aiohttp.ServerDisconnectedError(), True, False),
    ("timeout only if idempotent", TimeoutError(), True, False),
    ("a fenced write never", NotLeader("x"), False, False),
    ("a bug never", ValueError("x"), False, False),
]


@pytest.mark.parametrize(
    ("exc", "safe", "unsafe"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_should_retry(exc: BaseException, safe: bool, unsafe: bool) -> None:
    assert should_retry(exc, SAFE) is safe
    assert should_retry(exc, UNSAFE) is unsafe


def _state(exc: BaseException, attempt: int) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(tenacity.AsyncRetrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_retry_after_is_honoured_and_capped() -> None:
    assert retry_wait(_state(error(429, 2.0), 1)) == 2.0
    assert retry_wait(_state(error(503, 0.0), 5)) == 0.0
    assert retry_wait(_state(error(429, 3600.0), 1)) == RETRY_AFTER_MAX_SECONDS


def test_backoff_is_exponential_with_jitter_and_bounded() -> None:
    for attempt in range(1, 12):
        base = min(0.25 * 2 ** (attempt - 1), BACKOFF_MAX_SECONDS)
        waits = [retry_wait(_state(error(500), attempt)) for _ in range(200)]
        assert all(base <= w <= min(base + 0.5, BACKOFF_MAX_SECONDS) for w in waits), attempt
        if base + 0.5 <= BACKOFF_MAX_SECONDS:
            assert len(set(waits)) > 100  # jittered, so replicas do not retry in step


def test_safe_requests_ride_out_an_api_server_restart() -> None:
    # The least the waits before SAFE's last attempt add up to (jitter adds, never takes).
    least = sum(
        min(0.25 * 2 ** (attempt - 1), BACKOFF_MAX_SECONDS) for attempt in range(1, SAFE.attempts)
    )
    assert least >= 17
    assert least < SAFE.seconds


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("soon", None),
        ("Thu, 01 Jan 2026 12:00:05 GMT", 5.0),
        ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),
    ],
)
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert retry_after_seconds(header, now) == seconds


def test_policies_are_bounded() -> None:
    for policy in (SAFE, UNSAFE):
        assert isinstance(policy, RetryPolicy)
        assert 1 < policy.attempts <= 10
        assert policy.seconds <= 60


def test_token_file_is_read_again_after_a_minute_or_a_refusal(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    now = [0.0]
    token = TokenFile(str(path), max_age=60.0, clock=lambda: now[0])
    assert token.token() == "first"
    path.write_text("second\n")  # the kubelet rotated it
    now[0] = 59.0
    assert token.token() == "first"  # cached, as client-go does
    now[0] = 60.0
    assert token.token() == "second"
    path.write_text("third\n")
    token.invalidate()  # a 401: read it now
    assert token.token() == "third"
