"""The controller's per-session locks: passes over one key never overlap; no lock outlives use."""

from __future__ import annotations

import asyncio
import contextlib

from agentsession_operator.controller import KeyedLocks


def test_passes_over_one_key_are_serialised_and_other_keys_run_alongside() -> None:
    async def scenario() -> list[str]:
        locks = KeyedLocks()
        trace: list[str] = []
        gate = asyncio.Event()

        async def pass_(key: tuple[str, str], label: str, wait: bool) -> None:
            async with locks.hold(key):
                trace.append(f"{label} in")
                if wait:
                    await gate.wait()
                trace.append(f"{label} out")

        first = asyncio.create_task(pass_(("ns", "a"), "a1", wait=True))
        second = asyncio.create_task(pass_(("ns", "a"), "a2", wait=False))
        other = asyncio.create_task(pass_(("ns", "b"), "b1", wait=False))
        await other  # a different key does not wait for a1
        assert trace == ["a1 in", "b1 in", "b1 out"]
        assert len(locks) == 1  # a1 holds, a2 waits; b's lock is gone
        gate.set()
        await asyncio.gather(first, second)
        assert len(locks) == 0
        return trace

    assert asyncio.run(scenario()) == ["a1 in", "b1 in", "b1 out", "a1 out", "a2 in", "a2 out"]


def test_a_failing_or_cancelled_pass_releases_its_lock() -> None:
    async def scenario() -> int:
        locks = KeyedLocks()
        holding = asyncio.Event()

        queued = asyncio.Event()

        async def failing() -> None:
            queued.set()  # it runs on into hold() and blocks there before the test resumes
            async with locks.hold(("ns", "a")):
                raise RuntimeError("boom")

        async def blocked() -> None:
            async with locks.hold(("ns", "a")):
                holding.set()
                await asyncio.Event().wait()

        with contextlib.suppress(RuntimeError):
            await failing()
        assert len(locks) == 0
        queued.clear()
        holder = asyncio.create_task(blocked())
        await holding.wait()
        waiter = asyncio.create_task(failing())
        await queued.wait()
        waiter.cancel()
        holder.cancel()
        await asyncio.gather(holder, waiter, return_exceptions=True)
        return len(locks)

    assert asyncio.run(scenario()) == 0
