"""Exceptions of the transcript store; raised by every store module, caught by the runner."""

from __future__ import annotations


class StoreError(Exception):
    """The storage behind the store failed (unreachable, access denied, missing bucket).

    Messages name the operation and the object URI, never credentials; the runner treats these
    as retryable infrastructure failures.
    """


class InvalidKeyError(ValueError):
    """A namespace, session key or store URL is unsafe or malformed; raised before any I/O."""
