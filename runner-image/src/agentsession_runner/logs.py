"""JSON-lines logging for the runner (one object per line on stdout, for `kubectl logs -f`).

Called by the runner's CLI and run loop. Values that look like credentials are redacted before
they are written (see `redaction`), so a log line never carries an API key a message quotes.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any, TextIO

from agentsession_contract.redaction import redact


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
