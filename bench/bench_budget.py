"""Budget benchmark: what admission against an AgentBudget costs, and whether it ever overspends.

On a fresh local control plane (as bench/bench_operator.py, whose pieces it reuses) with the
scheduler stopped and no node, so runner pods stay Pending: the operator is measured, not the
node's start-up throughput.

1. 1,000 AgentSessions created at once with no AgentBudget; for each, from the moment its create
   call returned to the moment a pod watch first saw its runner pod.
2. The same 1,000 in a fresh namespace whose AgentBudget selects them all, with a Daily limit that
   fits every reservation (1,000 x maxBudgetUsd 0.01 USD): the same latency, and every version of
   the budget's ledger from a watch: overspend is the largest amount by which spent + reserved
   ever exceeded the limit (goal exactly 0.00), and the reservations must be one per session.
3. A contended budget: 1,000 sessions against a limit that fits 500; overspend over every ledger
   version again, and how many were admitted (500 exactly: the scheduler is stopped, so nothing
   settles).
The operator's peak RSS is sampled in each part. Ratio 2/1, create -> pod p50/p99 (goal <= 1.5x).

Run: `make bench`, or `.venv/bin/python bench/bench_budget.py [--sessions N]`.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_operator's pieces
import bench_operator as bo
from tests.support.cluster import LocalCluster, ensure_binaries, stop_process
from tests.support.operator_process import (
    OPERATOR_BIN,
    OperatorProcess,
    operator_kubeconfig,
)

MAX_BUDGET_USD = Decimal("0.01")


def budget_path(namespace: str) -> str:
    return f"/apis/{bo.GROUP}/{bo.VERSION}/namespaces/{namespace}/agentbudgets"


def budget_body(limit: Decimal) -> dict[str, Any]:
    return {
        "apiVersion": f"{bo.GROUP}/{bo.VERSION}",
        "kind": "AgentBudget",
        "metadata": {"name": "bench"},
        "spec": {"limits": [{"period": "Daily", "amountUsd": float(limit)}]},
    }


def budgeted_session(name: str) -> dict[str, Any]:
    body = bo.session_body(name)
    body["spec"]["maxBudgetUsd"] = float(MAX_BUDGET_USD)
    return body


def usd(value: object) -> Decimal:
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))


class Ledger:
    """Every version of the budget's status a watch delivers: the largest overspend, and the
    most reservations held at once (and whether any session was ever reserved twice)."""

    def __init__(self, limit: Decimal) -> None:
        self.limit = limit
        self.versions = 0
        self.overspend = Decimal(0)
        self.most_reserved = 0
        self.duplicates = 0

    def __call__(self, kind: str, obj: bo.Obj, arrived: float) -> None:
        status = obj.get("status") or {}
        if kind == "DELETED" or not status:
            return
        self.versions += 1
        reservations = status.get("reservations") or []
        reserved = sum((usd(r["amountUsd"]) for r in reservations), Decimal(0))
        spent = max((usd(p["spentUsd"]) for p in status.get("periods") or []), default=Decimal(0))
        self.overspend = max(self.overspend, spent + reserved - self.limit)
        self.most_reserved = max(self.most_reserved, len(reservations))
        self.duplicates += len(reservations) - len({r["uid"] for r in reservations})


async def population(
    api: bo.Api,
    setup: Setup,
    namespace: str,
    n: int,
    limit: Decimal | None,
    wait_for_pods: int,
) -> tuple[bo.Latencies, Ledger | None, float, float]:
    """Create `n` sessions at once (under a budget of `limit` if set); returns create -> pod
    latencies, the ledger watch, the operator's peak RSS (MB) and the wall time (s)."""
    await bo.add_secrets(api, namespace)
    ledger = None
    sinks: list[Any] = []
    if limit is not None:
        await api.create(budget_path(namespace), budget_body(limit))
        ledger = Ledger(limit)
    pods = bo.FirstSeen(bo.by_label(bo.SESSION_LABEL))
    assert setup.operator.process is not None
    make = budgeted_session if limit is not None else bo.session_body
    started = time.monotonic()
    with bo.RssSampler(setup.operator.process.pid) as sampler:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(
                bo.watching(api, f"/api/v1/namespaces/{namespace}/pods", pods)
            )
            if ledger is not None:
                sinks.append(ledger)
                await stack.enter_async_context(bo.watching(api, budget_path(namespace), ledger))
            created = await bo.create_all(
                api,
                bo.session_path(namespace),
                (make(f"b{i:05d}") for i in range(n)),
                setup.concurrency,
            )
            await bo.wait_until(
                bo.count_reaches(pods, wait_for_pods),
                within=900,
                what="runner pods",
                progress=bo.count_progress(pods, wait_for_pods),
            )
            await asyncio.sleep(3)  # the last ledger versions and pod events
        peak = sampler.peak_kib / 1024
    wall = time.monotonic() - started
    latencies = bo.Latencies.between("", created, pods.times)
    return latencies, ledger, peak, wall


class Setup:
    def __init__(self, cluster: LocalCluster, operator: OperatorProcess, concurrency: int) -> None:
        self.cluster = cluster
        self.operator = operator
        self.concurrency = concurrency


async def run(setup: Setup, n: int) -> list[str]:
    lines: list[str] = []
    async with bo.Api(setup.cluster, setup.concurrency + 8) as api:
        plain_ns = await bo.create_namespace(setup.cluster, "bench-nobudget")
        bo.log(f"part 1: {n} sessions, no AgentBudget")
        plain, _, plain_rss, plain_wall = await population(api, setup, plain_ns, n, None, n)
        await bo.delete_namespaces(api, [plain_ns])

        fits_ns = await bo.create_namespace(setup.cluster, "bench-budget")
        fits_limit = MAX_BUDGET_USD * n
        bo.log(f"part 2: {n} sessions under an AgentBudget that fits them all ({fits_limit} USD)")
        ours, fits, ours_rss, ours_wall = await population(api, setup, fits_ns, n, fits_limit, n)
        await bo.delete_namespaces(api, [fits_ns])

        tight_ns = await bo.create_namespace(setup.cluster, "bench-contended")
        tight_limit = MAX_BUDGET_USD * (n // 2)
        bo.log(f"part 3: {n} sessions under an AgentBudget that fits {n // 2} ({tight_limit} USD)")
        _, tight, tight_rss, tight_wall = await population(
            api, setup, tight_ns, n, tight_limit, n // 2
        )
        await bo.delete_namespaces(api, [tight_ns])

    assert fits is not None
    assert tight is not None
    lines.append(bo.LATENCY_HEADER)
    lines.append(_row("no AgentBudget: create -> runner pod", plain))
    lines.append(_row("one AgentBudget (fits all): create -> runner pod", ours))
    lines.append(bo.ratio_row("ratio budget/none (goal <= 1.5x)", ours, plain))
    lines.append(
        f"  overspend (largest spent + reserved - limit over every ledger version, goal 0.00): "
        f"fits all {max(fits.overspend, Decimal(0)):.2f} USD over {fits.versions} versions, "
        f"contended {max(tight.overspend, Decimal(0)):.2f} USD over {tight.versions} versions"
    )
    lines.append(
        f"  reservations held at most: fits all {fits.most_reserved}/{n}, contended "
        f"{tight.most_reserved}/{n} (limit fits {n // 2}); sessions reserved twice in a version: "
        f"{fits.duplicates + tight.duplicates}"
    )
    lines.append(
        f"  operator peak RSS: no budget {plain_rss:.0f} MB, fits all {ours_rss:.0f} MB, "
        f"contended {tight_rss:.0f} MB; wall {plain_wall:.0f} s / {ours_wall:.0f} s / "
        f"{tight_wall:.0f} s"
    )
    return lines


def _row(label: str, latencies: bo.Latencies) -> str:
    return bo.Latencies(label, latencies.values, latencies.missing).row()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, bo._interrupt)
    work = Path(tempfile.mkdtemp(prefix="bench-budget-"))
    failed = False
    try:
        with contextlib.ExitStack() as stack:
            bin_dir = ensure_binaries()
            cluster = stack.enter_context(LocalCluster(work / "cluster", bin_dir=bin_dir))
            home = work / "operator"
            home.mkdir()
            env = bo.operator_env(
                operator_kubeconfig(cluster, home / "kubeconfig"),
                home,
                "localhost/agentsession-runner:never-pulled",  # its pods are never scheduled
                bo.stub_command(),
            )
            env["AGENTSESSION_STORE_URL"] = f"s3://bench-unused-{uuid.uuid4().hex[:6]}/agents"
            operator = OperatorProcess(
                argv=[OPERATOR_BIN],
                env=env,
                log_path=home / "operator.log",
                metrics_port=int(env["AGENTSESSION_METRICS_PORT"]),
                health_port=int(env["AGENTSESSION_HEALTH_PORT"]),
                die_with_parent=True,
            )
            stack.callback(operator.stop)
            scheduler = cluster.processes.pop("kube-scheduler", None)
            if scheduler is not None:
                stop_process(scheduler)  # pods stay Pending: the operator is what is measured
            operator.start()
            lines = asyncio.run(run(Setup(cluster, operator, args.concurrency), args.sessions))
            print(
                f"\nBudget benchmark: {args.sessions} sessions per population, created at once "
                f"({args.concurrency} calls in flight), scheduler stopped (pods stay Pending), "
                f"{os.cpu_count()} CPUs\n  command: {' '.join([sys.executable, *sys.argv])}"
            )
            print("\n".join(lines))
    except BaseException:
        failed = True
        raise
    finally:
        if args.keep or failed:
            print(f"\nwork directory (logs) kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
