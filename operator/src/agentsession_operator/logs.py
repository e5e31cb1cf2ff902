"""JSON log lines for the operator: one object per line with the session, namespace and pod bound.

Installed by `agentsession_operator.main` on the root logger, so kopf's own records come out in
the same shape. Values that look like credentials are redacted (the runner's redactor).
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from agentsession_runner.redaction import redact

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
_BOUND = ("namespace", "session", "pod", "reason", "error")


class JsonFormatter(logging.Formatter):
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
            if key not in _STANDARD and not key.startswith("_") and key in _BOUND:
                entry[key] = value
        # kopf binds the object it is handling as `k8s_ref`.
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            entry.setdefault("namespace", ref.get("namespace"))
            entry.setdefault("object", f"{ref.get('kind')}/{ref.get('name')}")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access chatter and kopf's per-event debug lines are noise at INFO.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
