"""Runner overhead: `agent-runner` vs a bare `query()` on the same scripted 5-turn resumed session.

Both resume a session whose transcript is about 1 MB: the runner hydrates it from an S3 store (moto
over HTTP) and persists every line back; the baseline finds it on local disk and persists nothing.
Prints wall time and peak RSS (process tree: Python + the claude CLI) and their ratios
(goal <= 1.10x).
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from claude_agent_sdk import project_key_for_directory  # noqa: E402

from tests.support import scripted_api as sa  # noqa: E402
from tests.support.runner_harness import (  # noqa: E402
    AGENT_RUNNER,
    base_config,
    run_agent_runner,
    runner_env,
)
from tests.support.s3server import MotoServer  # noqa: E402

TURNS = 5
HYDRATED_BYTES = 1_000_000


def tree_rss_bytes(root_pid: int) -> int:
    """Sum of VmRSS over a process and its descendants, read from /proc."""
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
    total, stack = 0, [root_pid]
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
    return total


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """Wall seconds, peak tree RSS, exit code of one command."""
    peak = 0
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_bytes(process.pid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    return elapsed, peak, code


def script_session(api: sa.ScriptedAPI) -> None:
    """Four Bash turns and a closing answer: five turns."""
    api.script(*(sa.bash(f"echo step {i}") for i in range(TURNS - 1)), sa.text("All steps done."))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-runner-"))
    with MotoServer() as s3, sa.ScriptedAPI() as api:
        store_url = s3.create_bucket("bench-runner").url("sessions")
        aws_env = s3.env()
        # Seed: a session whose transcript is ~1 MB (ten long answers), stored in S3 by the runner.
        chunk = sa.text("y" * (HYDRATED_BYTES // 10)).blocks
        api.default = sa.Reply(blocks=chunk + sa.bash("echo more").blocks, stop_reason="tool_use")
        seed_config = base_config(store_url, scratch / "seed-ws", prompt="Write a lot.")
        seed_config.update(maxTurns=10, allowedTools=["Bash"])
        seed = run_agent_runner(
            seed_config,
            workdir=scratch / "seed",
            base_url=api.base_url,
            env=aws_env,
        )
        assert seed.exit_code == 0, seed.stdout[-2000:]
        assert seed.summary is not None
        session_id = seed.summary["sessionId"]
        seed_transcript = next((seed.state_dir / "tap").rglob(f"{session_id}.jsonl"))
        print(f"hydrated transcript: {seed_transcript.stat().st_size / 1e6:.2f} MB")
        api.default = sa.text("(unscripted)")

        runner_times, runner_rss, bare_times, bare_rss = [], [], [], []
        prompt = "Run the steps."
        for i in range(args.repeat):
            # Runner: fork the seed each time so every run hydrates the same 1 MB.
            run_dir = scratch / f"runner-{i}"
            (run_dir / "ws").mkdir(parents=True)
            config = base_config(
                store_url,
                run_dir / "ws",
                prompt=prompt,
                resumeSessionId=session_id,
                forkSession=True,
                maxTurns=TURNS,
                allowedTools=["Bash"],
            )
            (run_dir / "config.json").write_text(json.dumps(config))
            env = runner_env(api.base_url, run_dir, aws_env)
            script_session(api)
            argv = [AGENT_RUNNER, "--config", str(run_dir / "config.json")]
            argv += ["--result-file", str(run_dir / "summary.json")]
            argv += ["--state-dir", str(run_dir / "state")]
            elapsed, peak, code = measure(argv, env)
            assert code == 0, f"runner exited {code}"
            summary = json.loads((run_dir / "summary.json").read_text())
            assert summary["numTurns"] == TURNS, summary
            runner_times.append(elapsed)
            runner_rss.append(peak)

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
            elapsed, peak, code = measure(argv, env)
            assert code == 0, f"bare query exited {code}"
            bare_times.append(elapsed)
            bare_rss.append(peak)

    shutil.rmtree(scratch, ignore_errors=True)
    rt, bt = statistics.median(runner_times), statistics.median(bare_times)
    rr, br = statistics.median(runner_rss), statistics.median(bare_rss)
    print(f"\nRunner: {TURNS}-turn scripted session, ~1 MB hydrated, median of {args.repeat}")
    print(f"{'':26}{'wall s':>10}{'peak RSS MB':>14}")
    print(f"{'bare query() (baseline)':26}{bt:>10.2f}{br / 1e6:>14.1f}")
    print(f"{'agent-runner + S3 store':26}{rt:>10.2f}{rr / 1e6:>14.1f}")
    print(f"{'ratio (goal <= 1.10x)':26}{rt / bt:>9.2f}x{rr / br:>13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
