"""Transcript store benchmark (moto server + filesystem), run by `make bench`; prints a table.

Appends a ~10 MB / 20,000-line transcript in 200 appends, then compares load time before and after
compaction with one raw GetObject + JSONL parse of the same bytes. Figures are medians.

The S3 column also measures the store as a runner pod uses it: TranscriptStore over the runner's
GatewayBackend, against a real `agentsession-gateway` process (the only one holding the S3
credentials) in front of the same moto server. The same transcript is appended and compacted
through the gateway, and its load is timed against one raw boto3 GetObject + parse of the compacted
object's bytes, interleaved (goal <= 1.3x).
Run: `make bench` or `.venv/bin/python bench/bench_store.py [--append-rounds N] [--load-repeats N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.support; the store itself is installed in .venv

import boto3  # noqa: E402

from agentsession_contract.store import TranscriptStore  # noqa: E402
from agentsession_contract.store.codec import encode_entries  # noqa: E402
from agentsession_contract.store.gateway_client import GatewayBackend  # noqa: E402
from agentsession_contract.store.keys import LOGICAL_PROJECT  # noqa: E402
from agentsession_gateway.s3 import open_store  # noqa: E402
from tests.support.gateway_process import GatewayProcess  # noqa: E402
from tests.support.s3server import MotoServer  # noqa: E402

APPENDS = 200
LINES_PER_APPEND = 100  # 20,000 lines in all
TEXT_BYTES = 285  # makes a line about 500 bytes, the transcript about 10 MB
APPEND_ROUNDS = 3
LOAD_REPEATS = 7
PROJECT = "-workspace"
NAMESPACE = "bench"


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


async def write_transcript(
    store: TranscriptStore, session_id: str, project: str = PROJECT
) -> float:
    """Append the whole transcript, one batch at a time as the SDK does; returns seconds."""
    key = {"project_key": project, "session_id": session_id}
    started = time.perf_counter()
    for batch in BATCHES:
        await store.append(key, batch)  # type: ignore[arg-type]
    return time.perf_counter() - started


def raw_get_and_parse(raw_get: Callable[[str], bytes]) -> Callable[[str], Awaitable[int]]:
    """The baseline: one GET of `object_key`'s bytes and a JSONL parse; returns the line count."""

    async def get_and_parse(object_key: str) -> int:
        body = await asyncio.to_thread(raw_get, object_key)
        return len([json.loads(line) for line in body.split(b"\n") if line])

    return get_and_parse


async def measure(
    url: str, raw_get: Callable[[str], bytes], append_rounds: int, load_repeats: int
) -> dict[str, float]:
    figures: dict[str, float] = {}
    raw_get_and_parse_key = raw_get_and_parse(raw_get)
    async with open_store(url, NAMESPACE) as store:
        append_seconds = [await write_transcript(store, f"s{r}") for r in range(append_rounds)]
        figures["appends_per_s"] = APPENDS / statistics.median(append_seconds)
        figures["append_mb_per_s"] = TRANSCRIPT_BYTES / 1e6 / statistics.median(append_seconds)
        key: Any = {"project_key": PROJECT, "session_id": "s0"}
        expected_lines = APPENDS * LINES_PER_APPEND

        # Loads as the next attempt's pod does them: a reader that holds none of the objects
        # (the writer keeps what it wrote and would only list).
        reader = TranscriptStore(store._backend, object_cache_bytes=0)

        async def load() -> int:
            entries = await reader.load(key)
            assert entries is not None
            return len(entries)

        # The baseline before compaction: an object of the same bytes as the transcript.
        flat_key = f"{PROJECT}/flat/main/transcript.jsonl"
        store._backend.write(flat_key, b"".join(encode_entries(batch) for batch in BATCHES))

        # Interleave store and raw runs so drift (moto shares the CPU) hits both alike.
        before, raw_before = [], []
        for _ in range(load_repeats):
            seconds, count = await timed(load)
            assert count == expected_lines, count
            before.append(seconds)
            seconds, count = await timed(lambda: raw_get_and_parse_key(flat_key))
            assert count == expected_lines, count
            raw_before.append(seconds)

        figures["compact_s"], _ = await timed(lambda: store.compact(key))
        (compacted,) = store._backend.list_children(f"{PROJECT}/s0/main/")

        after, raw_after = [], []
        for _ in range(load_repeats):
            seconds, count = await timed(load)
            assert count == expected_lines, count
            after.append(seconds)
            seconds, count = await timed(lambda: raw_get_and_parse_key(compacted.key))
            assert count == expected_lines + 1, count  # + the compaction header line
            raw_after.append(seconds)

        figures["load_before_s"] = statistics.median(before)
        figures["raw_before_s"] = statistics.median(raw_before)
        figures["load_after_s"] = statistics.median(after)
        figures["raw_s"] = statistics.median(raw_after)
        figures["object_mb"] = compacted_size(store, compacted.key) / 1e6
    return figures


async def measure_gateway(
    url: str,
    aws_env: dict[str, str],
    raw_get: Callable[[str], bytes],
    work: Path,
    load_repeats: int,
) -> dict[str, float]:
    """The same transcript through a gateway process: one session's grant, as in a pod."""
    session_id = str(uuid.uuid4())
    config = {
        "prompt": "bench",
        "maxTurns": 1,
        "maxBudgetUsd": 1.0,
        "store": url,
        "namespace": NAMESPACE,
        "sessionName": "bench-store",
        "sessionId": session_id,
    }
    raw_get_and_parse_key = raw_get_and_parse(raw_get)
    figures: dict[str, float] = {}
    # No Messages API call is made: the upstream URL is never dialled.
    with GatewayProcess(config, work, upstream_url="http://127.0.0.1:9", env=aws_env) as gateway:
        async with TranscriptStore(GatewayBackend(gateway.endpoint)) as store:
            append_s = await write_transcript(store, session_id, LOGICAL_PROJECT)
            figures["gw_appends_per_s"] = APPENDS / append_s
            key: Any = {"project_key": LOGICAL_PROJECT, "session_id": session_id}
            figures["gw_compact_s"], _ = await timed(lambda: store.compact(key))
            (compacted,) = store._backend.list_children(f"{LOGICAL_PROJECT}/{session_id}/main/")
            expected_lines = APPENDS * LINES_PER_APPEND

            reader = TranscriptStore(store._backend, object_cache_bytes=0)  # as the next pod

            async def load() -> int:
                entries = await reader.load(key)
                assert entries is not None
                return len(entries)

            loads, raws = [], []
            for _ in range(load_repeats):
                seconds, count = await timed(load)
                assert count == expected_lines, count
                loads.append(seconds)
                seconds, count = await timed(lambda: raw_get_and_parse_key(compacted.key))
                assert count == expected_lines + 1, count  # + the compaction header line
                raws.append(seconds)
    figures["gw_load_after_s"] = statistics.median(loads)
    figures["gw_raw_s"] = statistics.median(raws)
    figures["gw_ratio_after"] = figures["gw_load_after_s"] / figures["gw_raw_s"]
    return figures


def compacted_size(store: TranscriptStore, key: str) -> int:
    stored = store._backend.read(key)
    assert stored is not None
    return len(stored.data)


def print_table(
    results: dict[str, dict[str, float]], append_rounds: int, load_repeats: int
) -> None:
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
        ("gateway: appends per second (1 round)", "gw_appends_per_s", "{:.1f}"),
        ("gateway: compaction (s, once)", "gw_compact_s", "{:.3f}"),
        ("gateway: load after compaction (s)", "gw_load_after_s", "{:.3f}"),
        ("gateway: raw GET + parse, same bytes (s)", "gw_raw_s", "{:.3f}"),
        ("gateway: ratio load/raw (goal <= 1.3x)", "gw_ratio_after", "{:.2f}x"),
    ]
    for figures in results.values():
        figures["ratio_before"] = figures["load_before_s"] / figures["raw_before_s"]
        figures["ratio_after"] = figures["load_after_s"] / figures["raw_s"]
    names = list(results)
    print(
        f"\ntranscript: {APPENDS} appends x {LINES_PER_APPEND} lines = "
        f"{APPENDS * LINES_PER_APPEND} lines, {TRANSCRIPT_BYTES / 1e6:.1f} MB; "
        f"medians of {append_rounds} append rounds and {load_repeats} loads\n"
    )
    print(f"{'measure':<40}" + "".join(f"{name:>20}" for name in names))
    print("-" * (40 + 20 * len(names)))
    for label, field, fmt in rows:
        cells = (fmt.format(results[n][field]) if field in results[n] else "-" for n in names)
        print(f"{label:<40}" + "".join(f"{cell:>20}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--append-rounds", type=int, default=APPEND_ROUNDS)
    parser.add_argument("--load-repeats", type=int, default=LOAD_REPEATS)
    args = parser.parse_args()
    started = time.perf_counter()
    results: dict[str, dict[str, float]] = {}
    with MotoServer() as server:
        os.environ.update(server.env())
        bucket = server.create_bucket()
        raw_client = boto3.session.Session().client("s3")

        def raw_get(key: str) -> bytes:
            response = raw_client.get_object(Bucket=bucket.name, Key=f"{NAMESPACE}/{key}")
            body: bytes = response["Body"].read()
            return body

        results["s3 (moto server)"] = asyncio.run(
            measure(bucket.url(), raw_get, args.append_rounds, args.load_repeats)
        )
        with tempfile.TemporaryDirectory() as directory:
            results["s3 (moto server)"] |= asyncio.run(
                measure_gateway(
                    bucket.url(), server.env(), raw_get, Path(directory), args.load_repeats
                )
            )
        raw_client.close()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        results["filesystem"] = asyncio.run(
            measure(
                root.as_uri(),
                lambda key: (root / NAMESPACE / key).read_bytes(),
                args.append_rounds,
                args.load_repeats,
            )
        )
    print_table(results, args.append_rounds, args.load_repeats)
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
