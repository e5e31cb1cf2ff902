"""`agent-runner`: the entry point of a runner pod (and of local runs such as `make demo`).

Reads the run config (`--config FILE`, `$AGENTSESSION_RUN_CONFIG`, or in a pod the file the operator
projects from the pod's annotation), runs one attempt, writes the summary JSON to `--result-file`
(the pod's termination message by default) and exits with the contract's code: 0 result
persisted, 3 invalid config (never retry), 4 retryable failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from agentsession_contract.gateway import CONFIG_DIR, CONFIG_FILE
from agentsession_contract.process import exit_now
from agentsession_contract.redaction import redact
from agentsession_contract.run import ExitCode, Reason, RunConfig, RunSummary, decode_run_config
from agentsession_runner.logs import JsonLogger

CONFIG_ENV = "AGENTSESSION_RUN_CONFIG"
POD_CONFIG_FILE = Path(CONFIG_DIR) / CONFIG_FILE
DEFAULT_RESULT_FILE = "/dev/termination-log"


class ConfigError(Exception):
    """The run config is missing or invalid; the message names the field."""


def load_config(
    config_file: str | None, environ: dict[str, str], pod_file: Path = POD_CONFIG_FILE
) -> RunConfig:
    if config_file is None and not environ.get(CONFIG_ENV) and pod_file.exists():
        config_file = str(pod_file)
    if config_file:
        try:
            raw = Path(config_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read --config {config_file}: {exc.strerror}") from exc
        source = config_file
    elif environ.get(CONFIG_ENV):
        raw, source = environ[CONFIG_ENV], f"${CONFIG_ENV}"
    else:
        raise ConfigError(f"no run config: pass --config FILE or set {CONFIG_ENV}")
    try:
        data = decode_run_config(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise ConfigError(f"invalid run config in {source}: {problems}") from exc


def write_summary(path: str, summary: RunSummary, log: JsonLogger) -> None:
    try:
        Path(path).write_text(summary.to_termination_message(), encoding="utf-8")
    except OSError as exc:
        log.warning("result_file_unwritable", path=path, error=exc.strerror)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent-runner", description=__doc__)
    parser.add_argument("--config", help=f"run config JSON file (default: ${CONFIG_ENV})")
    parser.add_argument(
        "--result-file",
        default=DEFAULT_RESULT_FILE,
        help=f"where to write the summary JSON (default: {DEFAULT_RESULT_FILE})",
    )
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("AGENTSESSION_STATE_DIR"),
        help="scratch dir for the CLI config dir and transcript tap (default: a new temp dir)",
    )
    args = parser.parse_args(argv)
    log = JsonLogger()

    try:
        config = load_config(args.config, dict(os.environ))
    except ConfigError as exc:
        log.error("invalid_config", message=str(exc), exitCode=int(ExitCode.INVALID_CONFIG))
        write_summary(
            args.result_file, RunSummary(reason=Reason.INVALID_SPEC, message=str(exc)), log
        )
        return ExitCode.INVALID_CONFIG

    log = log.bind(namespace=config.namespace, session=config.session_name)
    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="agent-runner-"))

    # Imported here so config errors are reported without paying the SDK's import time.
    from agentsession_runner.run import run_session

    try:
        outcome = asyncio.run(run_session(config, state_dir, log))
    except Exception as exc:  # any other crash is infrastructure: retry
        message = redact(f"runner crashed: {type(exc).__name__}: {exc}")
        log.error("runner_crashed", message=message, exitCode=int(ExitCode.RETRYABLE))
        write_summary(
            args.result_file, RunSummary(reason=Reason.EXECUTION_ERROR, message=message), log
        )
        return ExitCode.RETRYABLE
    write_summary(args.result_file, outcome.summary, log)
    return outcome.exit_code


def entry() -> None:
    """The `agent-runner` console script: `main`, then exit without teardown."""
    exit_now(main())


if __name__ == "__main__":
    entry()
