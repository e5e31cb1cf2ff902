"""Transcript store benchmark (moto server + filesystem), run by `make bench`; prints a table.

Appends a ~10 MB / 20,000-line transcript in 200 appends, then compares load time before and after
compaction with one raw GetObject + JSONL parse of the same bytes. Figures are medians.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.support; the store itself is installed in .venv

import boto3  # noqa: E402

from agentsession_contract.store import TranscriptStore  # noqa: E402
from agentsession_contract.store.codec import encode_entries  # noqa: E402
from agentsession_gateway.s3 import open_store  # noqa: E402
from tests.support.s3server import MotoServer  # noqa: E402

APPENDS = 200
LINES_PER_APPEND = 100  # 20,000 lines in all
TEXT_BYTES = 285  # makes a line about 500 bytes, the transcript about 10 MB
APPEND_ROUNDS = 3
LOAD_REPEATS = 7
PROJECT = "-workspace"


def make_batch(index: int) -> list[dict[str, Any]]:
    filler = ("lorem ipsum dolor sit amet " * 20)[:TEXT_BYTES]
    return [
        {
            "type": "assistant",
            "uuid": f"00000000-0000-4000-8000-{index:06d}{line:06d}",
            "parentUuid": None,
            "timestamp": "2026-01-01T00:00:00.000Z",
            "sessionId": "bench",
            "message": {"role": "assistant", "content": [{"type": "text", "text": filler}]},
        }
        for line in range(LINES_PER_APPEND)
    ]


BATCHES = [make_batch(i) for i in range(APPENDS)]
TRANSCRIPT_BYTES = sum(len(json.dumps(e, separators=(",", ":"))) + 1 for b in BATCHES for e in b)


async def timed(action: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    # Collect first so one run's garbage does not bill the next run's allocations.
    gc.collect()
    started = time.perf_counter()
    result = await action()
    return time.perf_counter() - started, result


async def write_transcript(store: TranscriptStore, session_id: str) -> float:
    """Append the whole transcript, one batch at a time as the SDK does; returns seconds."""
    key = {"project_key": PROJECT, "session_id": session_id}
    started = time.perf_counter()
    for batch in BATCHES:
        await store.append(key, batch)  # type: ignore[arg-type]
    return time.perf_counter() - started


async def measure(url: str, raw_get: Callable[[str], bytes]) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with open_store(url, "bench") as store:
        append_seconds = [await write_transcript(store, f"s{r}") for r in range(APPEND_ROUNDS)]
        figures["appends_per_s"] = APPENDS / statistics.median(append_seconds)
        figures["append_mb_per_s"] = TRANSCRIPT_BYTES / 1e6 / statistics.median(append_seconds)
        key: Any = {"project_key": PROJECT, "session_id": "s0"}
        expected_lines = APPENDS * LINES_PER_APPEND

        async def load() -> int:
            entries = await store.load(key)
            assert entries is not None
            return len(entries)

        async def raw_get_and_parse(object_key: str) -> int:
            body = await asyncio.to_thread(raw_get, object_key)
            return len([json.loads(line) for line in body.split(b"\n") if line])

        # The baseline before compaction: an object of the same bytes as the transcript.
        flat_key = f"{PROJECT}/flat/main/transcript.jsonl"
        store._backend.write(flat_key, b"".join(encode_entries(batch) for batch in BATCHES))

        # Interleave store and raw runs so drift (moto shares the CPU) hits both alike.
        before, raw_before = [], []
        for _ in range(LOAD_REPEATS):
            seconds, count = await timed(load)
            assert count == expected_lines, count
            before.append(seconds)
            seconds, count = await timed(lambda: raw_get_and_parse(flat_key))
            assert count == expected_lines, count
            raw_before.append(seconds)

        figures["compact_s"], _ = await timed(lambda: store.compact(key))
        (compacted,) = store._backend.list_children(f"{PROJECT}/s0/main/")

        after, raw_after = [], []
        for _ in range(LOAD_REPEATS):
            seconds, count = await timed(load)
            assert count == expected_lines, count
            after.append(seconds)
            seconds, count = await timed(lambda: raw_get_and_parse(compacted.key))
            assert count == expected_lines + 1, count  # + the compaction header line
            raw_after.append(seconds)

        figures["load_before_s"] = statistics.median(before)
        figures["raw_before_s"] = statistics.median(raw_before)
        figures["load_after_s"] = statistics.median(after)
        figures["raw_s"] = statistics.median(raw_after)
        figures["object_mb"] = compacted_size(store, compacted.key) / 1e6
    return figures


def compacted_size(store: TranscriptStore, key: str) -> int:
    stored = store._backend.read(key)
    assert stored is not None
    return len(stored.data)


def print_table(results: dict[str, dict[str, float]]) -> None:
    rows = [
        ("appends per second", "appends_per_s", "{:.1f}"),
        ("append throughput (MB/s)", "append_mb_per_s", "{:.2f}"),
        ("load before compaction (s)", "load_before_s", "{:.3f}"),
        ("raw GET + JSONL parse, same size (s)", "raw_before_s", "{:.3f}"),
        ("compaction (s, once)", "compact_s", "{:.3f}"),
        ("load after compaction (s)", "load_after_s", "{:.3f}"),
        ("raw GET + JSONL parse, same bytes (s)", "raw_s", "{:.3f}"),
        ("ratio load/raw before", "ratio_before", "{:.2f}x"),
        ("ratio load/raw after (goal <= 1.2x)", "ratio_after", "{:.2f}x"),
        ("compacted object (MB)", "object_mb", "{:.2f}"),
    ]
    for figures in results.values():
        figures["ratio_before"] = figures["load_before_s"] / figures["raw_before_s"]
        figures["ratio_after"] = figures["load_after_s"] / figures["raw_s"]
    names = list(results)
    print(
        f"\ntranscript: {APPENDS} appends x {LINES_PER_APPEND} lines = "
        f"{APPENDS * LINES_PER_APPEND} lines, {TRANSCRIPT_BYTES / 1e6:.1f} MB; "
        f"medians of {APPEND_ROUNDS} append rounds and {LOAD_REPEATS} loads\n"
    )
    print(f"{'measure':<40}" + "".join(f"{name:>20}" for name in names))
    print("-" * (40 + 20 * len(names)))
    for label, field, fmt in rows:
        print(f"{label:<40}" + "".join(f"{fmt.format(results[n][field]):>20}" for n in names))


def main() -> None:
    started = time.perf_counter()
    results: dict[str, dict[str, float]] = {}
    with MotoServer() as server:
        os.environ.update(server.env())
        bucket = server.create_bucket()
        raw_client = boto3.session.Session().client("s3")

        def raw_get(key: str) -> bytes:
            response = raw_client.get_object(Bucket=bucket.name, Key=f"bench/{key}")
            body: bytes = response["Body"].read()
            return body

        results["s3 (moto server)"] = asyncio.run(measure(bucket.url(), raw_get))
        raw_client.close()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        results["filesystem"] = asyncio.run(
            measure(root.as_uri(), lambda key: (root / "bench" / key).read_bytes())
        )
    print_table(results)
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
