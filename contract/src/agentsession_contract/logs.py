"""JSON log lines for the operator and the gateway: one object per line, credentials redacted.

Installed on the root logger by `agentsession_operator.main` (so kopf's records come out in the
same shape) and `agentsession_gateway.main`. Extra fields passed with `extra=` are kept.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from agentsession_contract.redaction import redact

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


class JsonFormatter(logging.Formatter):
    """A JSON object per record; `bound` limits which extra fields are kept (None: all)."""

    def __init__(self, bound: frozenset[str] | None = None) -> None:
        super().__init__()
        self.bound = bound

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            if self.bound is None or key in self.bound:
                entry[key] = value
        # kopf binds the object it is handling as `k8s_ref`.
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            entry.setdefault("namespace", ref.get("namespace"))
            entry.setdefault("object", f"{ref.get('kind')}/{ref.get('name')}")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


def configure(level: int = logging.INFO, bound: frozenset[str] | None = None) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(bound))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access chatter and kopf's per-event debug lines are noise at INFO.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
