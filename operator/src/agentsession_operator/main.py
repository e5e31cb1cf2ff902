"""`agentsession-operator`: the operator's entry point (the operator image's command).

Reads the settings from `AGENTSESSION_*`, sets up JSON logging, and runs kopf with our handlers
in standalone mode (one replica; see the README on high availability).
"""

from __future__ import annotations

import sys

import kopf
from pydantic import ValidationError

from agentsession_operator import logs
from agentsession_operator.settings import OperatorSettings


def main() -> int:
    logs.configure()
    try:
        settings = OperatorSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"AGENTSESSION_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        print(f"agentsession-operator: invalid settings: {problems}", file=sys.stderr)
        return 2
    # kopf imports the kubernetes client just to offer logins through it when it is installed
    # (as in a dev venv); the operator never uses it, and it costs ~40 MB of resident memory.
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    sys.modules.setdefault("kubernetes_asyncio", None)  # type: ignore[arg-type]
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


if __name__ == "__main__":
    sys.exit(main())
