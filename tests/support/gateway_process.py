"""The session gateway as a real process (`agentsession-gateway`), the way its sidecar runs it.

Used by the runner and store tests and the runner benchmark: one gateway per attempt, with its
own shared, state and report paths under a work directory, the run config as a file, the real
API key (the scripted API's) and, when given, boto3's environment for moto. The runner then gets
only `AGENTSESSION_GATEWAY_DIR` (see `agent_env`), as in a pod.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agentsession_contract.gateway import ENDPOINT_FILE, GatewayEndpoint
from tests.support.cluster import wait_for
from tests.support.runner_harness import TEST_API_KEY

GATEWAY_BIN = str(Path(sys.executable).parent / "agentsession-gateway")


class GatewayProcess:
    """One gateway process; `start()` returns once its endpoint file exists."""

    def __init__(
        self,
        config: Mapping[str, Any],
        work: Path,
        *,
        upstream_url: str,
        api_key: str = TEST_API_KEY,
        env: Mapping[str, str] | None = None,
        attempt_id: str = "attempt-1",
    ) -> None:
        self.config = dict(config)
        self.work = work
        self.shared_dir = work / "shared"
        self.state_dir = work / "state"
        self.report_file = work / "report.json"
        self.config_file = work / "run-config.json"
        self.log_path = work / "gateway.log"
        self.upstream_url = upstream_url
        self.api_key = api_key
        self.env = dict(env or {})
        self.attempt_id = attempt_id
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GatewayProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0, *, interval: float = 0.2, wait: bool = True) -> None:
        """Spawn the gateway; with `wait`, return once its endpoint file exists (else at once,
        as the kubelet starts a native sidecar without a startup probe: the runner waits)."""
        for directory in (self.shared_dir, self.state_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(self.config))
        (self.shared_dir / ENDPOINT_FILE).unlink(missing_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.work),
            "ANTHROPIC_API_KEY": self.api_key,
            "AGENTSESSION_UPSTREAM_URL": self.upstream_url,
            "AGENTSESSION_GATEWAY_DIR": str(self.shared_dir),
            "AGENTSESSION_GATEWAY_STATE_DIR": str(self.state_dir),
            "AGENTSESSION_GATEWAY_REPORT_FILE": str(self.report_file),
            "AGENTSESSION_ATTEMPT_ID": self.attempt_id,
            **self.env,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [GATEWAY_BIN, "--config", str(self.config_file)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        if not wait:
            return

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited {self.process.returncode}:\n{self.logs()}")
            return (self.shared_dir / ENDPOINT_FILE).exists()

        wait_for(listening, timeout=timeout, what="the gateway's endpoint file", interval=interval)

    @property
    def endpoint(self) -> GatewayEndpoint:
        return GatewayEndpoint.model_validate_json((self.shared_dir / ENDPOINT_FILE).read_bytes())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.endpoint.port}"

    def agent_env(self) -> dict[str, str]:
        """What the runner (the agent's container) gets to find its gateway, and nothing else."""
        return {"AGENTSESSION_GATEWAY_DIR": str(self.shared_dir)}

    def report(self) -> dict[str, Any]:
        """The gateway's latest report (its termination message file)."""
        loaded: dict[str, Any] = json.loads(self.report_file.read_text())
        return loaded

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (as the kubelet does once the agent has ended); returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            # A blocking wait, with a timer that kills a gateway that hangs: Popen.wait(timeout)
            # polls with sleeps growing to 50 ms, which would add up to half again to the stop
            # time the runner benchmark measures.
            killer = threading.Timer(timeout, self.process.kill)
            killer.start()
            try:
                self.process.wait()
            finally:
                killer.cancel()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: no final report (a crash, an OOM kill)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)
        self.process = None
