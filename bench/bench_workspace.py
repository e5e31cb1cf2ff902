"""Workspace snapshot benchmark (moto server behind a real gateway process), run by `make bench`.

A 200 MB / 20,000-file workspace (random contents, 2 KB to 60 KB, 400 directories) is
snapshotted the way a runner pod does it (agentsession_contract.workspace.snapshot over the
runner's GatewayBackend, through an `agentsession-gateway` process holding the S3 credentials)
and restored into an empty directory, each against the baseline measured in the same run on the
same tree: `tar -cf - . | one PutObject` and `one GetObject | tar -xf -` (boto3 straight to S3,
no gateway). Then 10 files are changed and the incremental snapshot is timed against the full
one. Figures are medians of `--repeats` rounds (a fresh session per round for the full
snapshot). Goals: snapshot and restore <= 1.5x the baseline, incremental <= 5% of the full one.

Run: `make bench` or `.venv/bin/python bench/bench_workspace.py [--files N] [--mb N] [--repeats N]`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.support; the code itself is installed in .venv

from agentsession_contract.store.gateway_client import GatewayBackend  # noqa: E402
from agentsession_contract.workspace import snapshot as ws  # noqa: E402
from tests.support.gateway_process import GatewayProcess  # noqa: E402
from tests.support.s3server import MotoServer  # noqa: E402

NAMESPACE = "bench"
MAX = 1 << 40


def make_tree(root: Path, files: int, total_mb: int, seed: int = 7) -> int:
    """`files` files of random bytes in `files // 50` directories, about `total_mb` MB."""
    rng = random.Random(seed)
    mean = total_mb * 1024 * 1024 // files
    written = 0
    dirs = max(files // 50, 1)
    for d in range(dirs):
        (root / f"pkg{d // 20}" / f"mod{d}").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        size = max(1, int(rng.uniform(0.2, 1.8) * mean))
        d = i % dirs
        path = root / f"pkg{d // 20}" / f"mod{d}" / f"file{i}.dat"
        path.write_bytes(os.urandom(size))
        written += size
    return written


def timed(action: Callable[[], object]) -> float:
    # Dirty pages of the previous step would be written back during this one: flush them first,
    # so each measurement pays only for its own writes.
    os.sync()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--changed", type=int, default=10)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-workspace-"))
    try:
        tree = work / "tree"
        tree.mkdir()
        total = make_tree(tree, args.files, args.mb)
        print(f"tree: {args.files} files, {total / 1e6:.1f} MB in {tree}", flush=True)
        with MotoServer() as s3:
            bucket = s3.create_bucket()
            client = s3.client()
            figures = run(args, work, tree, s3, bucket.name, client)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(figures)
    return 0


def run(
    args: argparse.Namespace,
    work: Path,
    tree: Path,
    s3: MotoServer,
    bucket: str,
    client: object,
) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {
        k: [] for k in ("tar_put", "snapshot", "get_untar", "restore", "incremental")
    }
    for round_ in range(args.repeats):
        session_id = str(uuid.uuid4())
        config = {
            "prompt": "bench",
            "maxTurns": 1,
            "maxBudgetUsd": 1.0,
            "store": f"s3://{bucket}/agents",
            "namespace": NAMESPACE,
            "sessionName": "bench-workspace",
            "sessionId": session_id,
        }
        # Baseline: the tree as one tar stream in one PUT, then one GET untarred. It runs
        # before ours in even rounds and after in odd ones, so neither always goes first.
        tar_key = f"agents/{NAMESPACE}/baseline/{session_id}.tar"

        def baseline(key: str = tar_key, round_: int = round_) -> None:
            def tar_put() -> None:
                data = subprocess.run(
                    ["tar", "-cf", "-", "-C", str(tree), "."], check=True, capture_output=True
                ).stdout
                client.put_object(Bucket=bucket, Key=key, Body=data)  # type: ignore[attr-defined]

            figures["tar_put"].append(timed(tar_put))
            untar_into = work / f"untar-{round_}"
            untar_into.mkdir()

            def get_untar() -> None:
                response = client.get_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
                body = response["Body"].read()
                subprocess.run(["tar", "-xf", "-", "-C", str(untar_into)], input=body, check=True)

            figures["get_untar"].append(timed(get_untar))
            shutil.rmtree(untar_into)

        if round_ % 2 == 0:
            baseline()
        gateway_dir = work / f"gateway-{round_}"
        with GatewayProcess(
            config, gateway_dir, upstream_url="http://127.0.0.1:9", env=s3.env()
        ) as gateway:
            backend = GatewayBackend(gateway.endpoint)
            cache = work / f"cache-{round_}.json"
            result: list[ws.SnapshotResult] = []

            def snap(
                cache: Path = cache,
                result: list[ws.SnapshotResult] = result,
                backend: GatewayBackend = backend,
                session_id: str = session_id,
            ) -> None:
                result.append(
                    ws.take_snapshot(tree, backend, session_id, max_bytes=MAX, cache_file=cache)
                )

            figures["snapshot"].append(timed(snap))
            full = result[-1]
            assert full.taken, full
            assert full.files == args.files, full
            restored_into = work / f"restored-{round_}"
            key = full.manifest_key
            assert key is not None

            def restore(
                into: Path = restored_into, key: str = key, backend: GatewayBackend = backend
            ) -> None:
                ws.restore_snapshot(into, backend, key)

            figures["restore"].append(timed(restore))
            shutil.rmtree(restored_into)

            rng = random.Random(round_)
            every = sorted(tree.rglob("*.dat"))
            for path in rng.sample(every, args.changed):
                path.write_bytes(os.urandom(path.stat().st_size))
            figures["incremental"].append(timed(snap))
            incremental = result[-1]
            assert incremental.taken, incremental
            backend.close()
        if round_ % 2 == 1:
            baseline()
        print(
            f"round {round_ + 1}: tar|PUT {figures['tar_put'][-1]:.2f} s, snapshot "
            f"{figures['snapshot'][-1]:.2f} s ({full.packs_uploaded} packs, "
            f"{full.uploaded_bytes / 1e6:.1f} MB), GET|untar {figures['get_untar'][-1]:.2f} s,"
            f" restore {figures['restore'][-1]:.2f} s, incremental "
            f"{figures['incremental'][-1]:.3f} s ({incremental.uploaded_bytes / 1e3:.0f} kB)",
            flush=True,
        )
    return figures


def report(figures: dict[str, list[float]]) -> None:
    med = {k: statistics.median(v) for k, v in figures.items()}
    print()
    print("| Measure | Ours (median) | Baseline (median) | Ratio | Goal |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| snapshot (full) vs tar \\| one PUT | {med['snapshot']:.2f} s | {med['tar_put']:.2f} s "
        f"| {med['snapshot'] / med['tar_put']:.2f}x | <= 1.5x |"
    )
    print(
        f"| restore vs one GET \\| untar | {med['restore']:.2f} s | {med['get_untar']:.2f} s "
        f"| {med['restore'] / med['get_untar']:.2f}x | <= 1.5x |"
    )
    print(
        f"| incremental snapshot (10 files changed) vs the full one | {med['incremental']:.3f} s "
        f"| {med['snapshot']:.2f} s | {100 * med['incremental'] / med['snapshot']:.1f}% | <= 5% |"
    )


if __name__ == "__main__":
    sys.exit(main())
