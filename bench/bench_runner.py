"""Runner overhead: a pod's `agent-runner` + session gateway vs a bare `query()`, on the same
scripted 5-turn resumed session.

Both resume a session whose transcript is about 1 MB, as a fork (a new session id each run, so
every run starts from the same history and the CLI writes the same copy of it). The runner side
runs as in a pod: a real `agentsession-gateway` process holds the API key and the S3 credentials
(moto over HTTP) and sits in front of the scripted API and the store; the runner gets only
AGENTSESSION_GATEWAY_DIR, hydrates the transcript through the gateway and persists every line
back. Gateway and runner are spawned together (the kubelet starts a native sidecar without a
startup probe and then the agent at once; the runner waits for the gateway's endpoint file
itself), and the gateway is stopped with SIGTERM once the runner has exited, as the kubelet does.
The baseline finds the transcript on local disk, talks to the scripted API directly and persists
nothing.

Prints wall time and peak RSS of the pod-equivalent (gateway spawn to gateway exit; RSS of the
runner's process tree, the claude CLI included, plus the gateway, sampled together) against the
bare baseline (goal <= 1.10x), the runner tree and the gateway separately, and the runner's
per-phase durations from its `phase` log events next to the baseline's (medians).
Run: `make bench` or `.venv/bin/python bench/bench_runner.py [--repeat N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from claude_agent_sdk import project_key_for_directory  # noqa: E402

from tests.support import scripted_api as sa  # noqa: E402
from tests.support.gateway_process import GatewayProcess  # noqa: E402
from tests.support.runner_harness import (  # noqa: E402
    AGENT_RUNNER,
    base_config,
    run_agent_runner,
    runner_env,
)
from tests.support.s3server import MotoServer  # noqa: E402

TURNS = 5
HYDRATED_BYTES = 1_000_000
SAMPLE_S = 0.05
RUNNER_PHASES = (
    "gateway_wait",
    "preflight",
    "hydrate",
    "cli_start",
    "query",
    "cli_exit",
    "reconcile",
    "compact",
    "result_write",
)


def rss_by_tree(root_pids: list[int]) -> list[int]:
    """Sum of VmRSS over each root's process and its descendants, read from /proc in one pass."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    totals = []
    for root in root_pids:
        total, stack = 0, [root]
        while stack:
            pid = stack.pop()
            stack.extend(children.get(pid, []))
            try:
                with open(f"/proc/{pid}/status") as handle:
                    for line in handle:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
            except OSError:
                continue
        totals.append(total)
    return totals


class PeakSampler:
    """Samples the RSS of the process trees `pids()` names until stopped; keeps the peaks of each
    tree and of their sum (trees not started yet, or ended, count as 0)."""

    def __init__(self, pids: Callable[[], list[int | None]]) -> None:
        self._pids = pids
        self.peaks: list[int] = []
        self.peak_total = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            pids = self._pids()
            rss = rss_by_tree([pid for pid in pids if pid is not None])
            values = iter(rss)
            sample = [next(values) if pid is not None else 0 for pid in pids]
            if len(self.peaks) < len(sample):
                self.peaks += [0] * (len(sample) - len(self.peaks))
            self.peaks = [max(a, b) for a, b in zip(self.peaks, sample, strict=True)]
            self.peak_total = max(self.peak_total, sum(sample))
            self._done.wait(SAMPLE_S)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


@dataclass
class Run:
    """One measured run: wall seconds, peak RSS bytes, phase durations in ms."""

    wall_s: float
    peak_rss: int
    phases_ms: dict[str, float] = field(default_factory=dict)
    runner_wall_s: float = 0.0
    runner_rss: int = 0
    gateway_rss: int = 0


def log_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def measure_pod(gateway: GatewayProcess, argv: list[str], env: dict[str, str], out: Path) -> Run:
    """Gateway up, runner to its end, gateway stopped; returns the pod-equivalent's figures."""
    runner: subprocess.Popen[bytes] | None = None

    def pids() -> list[int | None]:
        gateway_process = gateway.process
        return [
            runner.pid if runner is not None else None,
            gateway_process.pid if gateway_process is not None else None,
        ]

    with PeakSampler(pids) as sampler:
        started = time.perf_counter()
        gateway.start(wait=False)
        ready = time.perf_counter()
        with out.open("wb") as stdout:
            runner = subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.DEVNULL)
            code = runner.wait()
        runner_done = time.perf_counter()
        gateway_code = gateway.stop()
        ended = time.perf_counter()
    assert code == 0, f"runner exited {code}:\n{out.read_text()[-3000:]}"
    assert gateway_code == 0, f"gateway exited {gateway_code}:\n{gateway.logs()[-3000:]}"
    phases = {
        str(r["phase"]): float(r["ms"]) for r in log_records(out) if r.get("event") == "phase"
    }
    runner_wall = runner_done - ready
    phases["gateway_spawn"] = (ready - started) * 1000
    phases["runner_outside_phases"] = runner_wall * 1000 - sum(
        phases.get(name, 0.0) for name in RUNNER_PHASES
    )
    phases["gateway_stop"] = (ended - runner_done) * 1000
    runner_rss, gateway_rss = sampler.peaks
    return Run(ended - started, sampler.peak_total, phases, runner_wall, runner_rss, gateway_rss)


def measure_bare(argv: list[str], env: dict[str, str]) -> Run:
    """Wall seconds, peak tree RSS and the phases bare_query.py prints, of one bare run."""
    process: subprocess.Popen[str] | None = None
    with PeakSampler(lambda: [process.pid if process is not None else None]) as sampler:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        stdout, _ = process.communicate()
        elapsed = time.perf_counter() - started
    assert process.returncode == 0, f"bare query exited {process.returncode}:\n{stdout}"
    phases: dict[str, float] = json.loads(stdout.splitlines()[-1])["phasesMs"]
    phases["runner_outside_phases"] = elapsed * 1000 - sum(phases.values())
    return Run(elapsed, sampler.peak_total, phases, elapsed, sampler.peak_total)


def script_session(api: sa.ScriptedAPI) -> None:
    """Four Bash turns and a closing answer: five turns."""
    api.script(*(sa.bash(f"echo step {i}") for i in range(TURNS - 1)), sa.text("All steps done."))


def seed_session(
    api: sa.ScriptedAPI, store_url: str, aws_env: dict[str, str], scratch: Path
) -> Any:
    """A session whose transcript is ~1 MB (ten long answers), stored in S3 through a gateway."""
    chunk = sa.text("y" * (HYDRATED_BYTES // 10)).blocks
    api.default = sa.Reply(blocks=chunk + sa.bash("echo more").blocks, stop_reason="tool_use")
    config = base_config(store_url, scratch / "seed-ws", prompt="Write a lot.")
    config.update(maxTurns=10, allowedTools=["Bash"], sessionId=str(uuid.uuid4()))
    gateway = GatewayProcess(
        config, scratch / "seed-gateway", upstream_url=api.base_url, env=aws_env
    )
    with gateway:
        seed = run_agent_runner(
            config, workdir=scratch / "seed", base_url=None, env=gateway.agent_env()
        )
    assert seed.exit_code == 0, seed.stdout[-2000:]
    assert seed.summary is not None
    api.default = sa.text("(unscripted)")
    return seed


def median_run(runs: list[Run]) -> Run:
    names = {name for run in runs for name in run.phases_ms}
    return Run(
        wall_s=statistics.median(r.wall_s for r in runs),
        peak_rss=int(statistics.median(r.peak_rss for r in runs)),
        phases_ms={n: statistics.median(r.phases_ms.get(n, 0.0) for r in runs) for n in names},
        runner_wall_s=statistics.median(r.runner_wall_s for r in runs),
        runner_rss=int(statistics.median(r.runner_rss for r in runs)),
        gateway_rss=int(statistics.median(r.gateway_rss for r in runs)),
    )


def print_report(pod: Run, bare: Run, repeat: int) -> None:
    mb = 1e6
    print(f"\nRunner: {TURNS}-turn scripted session, ~1 MB hydrated, median of {repeat}")
    print(f"{'':38}{'wall s':>10}{'peak RSS MB':>14}")
    print(f"{'bare query() (baseline)':38}{bare.wall_s:>10.2f}{bare.peak_rss / mb:>14.1f}")
    print(f"{'pod: gateway + agent-runner':38}{pod.wall_s:>10.2f}{pod.peak_rss / mb:>14.1f}")
    print(f"{'  agent-runner tree (runner + CLI)':38}{pod.runner_wall_s:>10.2f}", end="")
    print(f"{pod.runner_rss / mb:>14.1f}")
    print(f"{'  gateway':38}{'':>10}{pod.gateway_rss / mb:>14.1f}")
    print(f"{'ratio pod/bare (goal <= 1.10x)':38}{pod.wall_s / bare.wall_s:>9.2f}x", end="")
    print(f"{pod.peak_rss / bare.peak_rss:>13.2f}x")
    print(f"{'ratio runner tree/bare':38}{pod.runner_wall_s / bare.wall_s:>9.2f}x", end="")
    print(f"{pod.runner_rss / bare.peak_rss:>13.2f}x")

    rows = [
        ("gateway spawn (the runner starts right after)", "gateway_spawn"),
        ("runner: waiting for the gateway", "gateway_wait"),
        ("runner: store preflight (loads the resume)", "preflight"),
        ("runner: hydrate (SDK loads not preloaded)", "hydrate"),
        ("SDK + CLI start, to first message", "cli_start"),
        ("query, first message to result", "query"),
        ("CLI exit + SDK's last flush", "cli_exit"),
        ("runner: reconcile transcript lines", "reconcile"),
        ("runner: compaction", "compact"),
        ("runner: result write, left after compaction", "result_write"),
        ("process outside phases (start, exit)", "runner_outside_phases"),
        ("gateway stop (SIGTERM to exit)", "gateway_stop"),
    ]
    print(f"\n{'phase, median ms':44}{'pod':>10}{'bare':>10}{'delta':>10}")
    for label, name in rows:
        ours = pod.phases_ms.get(name, 0.0)
        theirs = bare.phases_ms.get(name)
        cells = f"{ours:>10.0f}" + (f"{theirs:>10.0f}" if theirs is not None else f"{'-':>10}")
        print(f"{label:44}{cells}{ours - (theirs or 0.0):>+10.0f}")
    print(f"{'total (wall)':44}{pod.wall_s * 1000:>10.0f}{bare.wall_s * 1000:>10.0f}", end="")
    print(f"{(pod.wall_s - bare.wall_s) * 1000:>+10.0f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-runner-"))
    with MotoServer() as s3, sa.ScriptedAPI() as api:
        store_url = s3.create_bucket("bench-runner").url("sessions")
        aws_env = s3.env()
        seed = seed_session(api, store_url, aws_env, scratch)
        session_id = seed.summary["sessionId"]
        seed_transcript = next((seed.state_dir / "tap").rglob(f"{session_id}.jsonl"))
        print(f"hydrated transcript: {seed_transcript.stat().st_size / 1e6:.2f} MB")

        pod_runs, bare_runs = [], []
        prompt = "Run the steps."
        for i in range(args.repeat):
            # Pod: fork the seed each time (a new session id, so a new gateway grant), so every
            # run hydrates the same 1 MB.
            run_dir = scratch / f"runner-{i}"
            (run_dir / "ws").mkdir(parents=True)
            config = base_config(
                store_url,
                run_dir / "ws",
                prompt=prompt,
                sessionId=str(uuid.uuid4()),
                resumeSessionId=session_id,
                forkSession=True,
                maxTurns=TURNS,
                allowedTools=["Bash"],
            )
            (run_dir / "config.json").write_text(json.dumps(config))
            gateway = GatewayProcess(
                config, run_dir / "gateway", upstream_url=api.base_url, env=aws_env
            )
            env = runner_env(None, run_dir, gateway.agent_env())
            script_session(api)
            argv = [AGENT_RUNNER, "--config", str(run_dir / "config.json")]
            argv += ["--result-file", str(run_dir / "summary.json")]
            argv += ["--state-dir", str(run_dir / "state")]
            pod_runs.append(measure_pod(gateway, argv, env, run_dir / "runner.log"))
            summary = json.loads((run_dir / "summary.json").read_text())
            assert summary["numTurns"] == TURNS, summary

            # Baseline: the same transcript on local disk, resumed by a bare query().
            bare_dir = scratch / f"bare-{i}"
            workspace = bare_dir / "ws"
            workspace.mkdir(parents=True)
            config_dir = bare_dir / "claude-config"
            project_dir = config_dir / "projects" / project_key_for_directory(str(workspace))
            project_dir.mkdir(parents=True)
            shutil.copy(seed_transcript, project_dir / f"{session_id}.jsonl")
            env = runner_env(api.base_url, bare_dir, {"CLAUDE_CONFIG_DIR": str(config_dir)})
            script_session(api)
            argv = [sys.executable, str(REPO / "bench" / "bare_query.py"), str(workspace)]
            argv += [session_id, prompt, str(TURNS)]
            bare_runs.append(measure_bare(argv, env))

    shutil.rmtree(scratch, ignore_errors=True)
    print_report(median_run(pod_runs), median_run(bare_runs), args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
