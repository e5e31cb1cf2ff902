"""Redaction of credential-shaped text, for every log line and status message both images write.

Used by the runner's logs and summaries and by the operator's JSON logs.
"""

from __future__ import annotations

import re
from typing import Any

# Anthropic keys; AWS access key ids (long-term AKIA, STS ASIA); bearer tokens; anything after a
# credential's name (AWS_SECRET_ACCESS_KEY=..., "aws_session_token": "...", password: ...).
_SECRET_PATTERNS = (
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}"),
    re.compile(
        r"(?i)((?:api[_-]?key|secret(?:[_-]access[_-]key)?|session[_-]token|token|password)"
        r"\"?\s*[:=]\s*\"?)[^\s\",]{6,}"
    ),
)


def redact_values(value: Any) -> Any:
    """`redact` applied to every string inside a JSON-shaped value (structured output), keys
    included; other values are returned as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_values(item) for item in value]
    if isinstance(value, dict):
        return {redact(str(key)): redact_values(item) for key, item in value.items()}
    return value


def redact(text: str) -> str:
    """Replace anything shaped like a credential with a marker."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(
            lambda m: (m.group(1) if m.groups() else "") + "[REDACTED]",
            text,
        )
    return text
