"""Redaction of credential-shaped text, for every log line and status message both images write.

Used by the runner's logs and summaries and by the operator's JSON logs.
"""

from __future__ import annotations

import re

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
