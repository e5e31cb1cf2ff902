"""`agentsession-operator`: the operator's entry point (the operator image's command).

Reads the settings from `AGENTSESSION_*`, sets up JSON logging, and runs kopf with our handlers
in standalone mode (one replica; see the README on high availability).
"""

from __future__ import annotations

import sys

# kopf imports the kubernetes clients when they are installed (as in a dev venv, or an image that
# adds them), to recognise their objects; the operator never uses them and they cost ~40 MB of
# resident memory. Marking them absent before kopf loads keeps them out of this process.
for _client in ("kubernetes", "kubernetes_asyncio"):
    sys.modules.setdefault(_client, None)  # type: ignore[arg-type]

import kopf  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from pydantic_core import ErrorDetails  # noqa: E402

from agentsession_contract import logs  # noqa: E402
from agentsession_operator.settings import OperatorSettings  # noqa: E402


def main() -> int:
    logs.configure(bound=frozenset({"namespace", "session", "pod", "reason", "error"}))
    try:
        settings = OperatorSettings()
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors(include_url=False))
        print(f"agentsession-operator: invalid settings: {problems}", file=sys.stderr)
        return 2
    import agentsession_operator.handlers  # noqa: F401  (registers the handlers with kopf)

    memo = kopf.Memo()
    memo["settings"] = settings
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    kopf.run(
        standalone=True,
        clusterwide=not settings.watch_namespaces,
        namespaces=settings.watch_namespaces,
        liveness_endpoint=liveness,
        memo=memo,
    )
    return 0


def _problem(error: ErrorDetails) -> str:
    """`AGENTSESSION_<FIELD>[.path]: message` for one validation error (the variable to fix)."""
    field, *path = error["loc"] or ("",)
    if not field:
        return error["msg"]  # a check across settings: its message names the variables
    where = f"AGENTSESSION_{str(field).upper()}"
    where += "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)
    return f"{where}: {error['msg']}"


if __name__ == "__main__":
    sys.exit(main())
