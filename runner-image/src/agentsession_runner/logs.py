"""JSON-lines logging for the runner (one object per line on stdout, for `kubectl logs -f`).

Called by the runner's CLI and run loop. Values that look like credentials are redacted before
they are written, so a log line can never carry an API key even if a message quotes one.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from typing import Any, TextIO

# Anthropic keys, AWS secret-looking strings after a key name, bearer tokens.
_SECRET_PATTERNS = (
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}"),
    re.compile(r"(?i)((?:api[_-]?key|secret|token|password)\"?\s*[:=]\s*\"?)[^\s\",]{6,}"),
)


def redact(text: str) -> str:
    """Replace anything shaped like a credential with a marker."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(
            lambda m: (m.group(1) if m.groups() else "") + "[REDACTED]",
            text,
        )
    return text


class JsonLogger:
    """A tiny structured logger with bound fields (session, namespace, ...)."""

    def __init__(self, stream: TextIO | None = None, **bound: Any) -> None:
        self._stream = stream
        self._bound = bound

    def bind(self, **fields: Any) -> JsonLogger:
        return JsonLogger(self._stream, **{**self._bound, **fields})

    def log(self, level: str, event: str, **fields: Any) -> None:
        record = {
            "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "event": event,
            **self._bound,
            **{k: v for k, v in fields.items() if v is not None},
        }
        line = redact(json.dumps(record, default=str, ensure_ascii=False))
        stream = self._stream or sys.stdout
        stream.write(line + "\n")
        stream.flush()

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("error", event, **fields)
