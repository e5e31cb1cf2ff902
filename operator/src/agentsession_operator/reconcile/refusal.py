"""Whose fault a refused create is: the API server's answer to the operator's create of a runner
pod or its store Secret, sorted into what fails the session and what the operator retries. Pure.

Called by the controller when a create raises. The API server refuses with a metav1.Status:
`code` (HTTP status), `reason` (Forbidden, Invalid, ...) and a `message` that names the admission
step and the field. The operator's own retries (kube.client) have already ridden out 429s, 5xx and
broken connections by then.
"""

from __future__ import annotations

import enum
import re
from decimal import Decimal

from agentsession_contract.redaction import redact
from agentsession_operator.models.markers import quantity_value

REFUSAL_MESSAGE_MAX_LENGTH = 1024
"""Characters of the API server's message kept on the session's status and Event."""


class Refusal(enum.Enum):
    """What a refused create means for the session."""

    SPEC = "spec"
    """The object this session needs cannot be created here, however often it is asked: Pod
    Security, a ValidatingAdmissionPolicy or webhook, a LimitRange, a missing RuntimeClass, a
    ResourceQuota smaller than the pod, an invalid or too large object. The session fails
    (InvalidSpec) with the API server's message."""
    OPERATOR = "operator"
    """The operator's own RBAC or credentials refused it: a misconfiguration of the operator, not
    of the session. Retried with backoff, and said so on the session."""
    QUOTA = "quota"
    """A ResourceQuota of the namespace is used up for now (the pod would fit an empty one):
    retried with backoff until other pods end, and said so on the session."""
    TRANSIENT = "transient"
    """Anything the next try may not meet: the API server's own errors after the client's
    retries, a timeout, the namespace being deleted. Retried with backoff."""


# RBAC's refusal (the authorizer's message): `User "system:serviceaccount:..." cannot create
# resource "pods" in API group "" in the namespace "team-a"`.
_RBAC_REFUSAL = re.compile(r'\bcannot \w+ resource "')
# The ResourceQuota admission plugin: `exceeded quota: compute, requested: limits.cpu=4,
# requests.cpu=4, used: limits.cpu=0,requests.cpu=0, limited: limits.cpu=2,requests.cpu=2`.
_QUOTA_EXCEEDED = re.compile(
    r"exceeded quota: [^,]+, requested: (?P<requested>\S*), used: (?P<used>\S*), "
    r"limited: (?P<limited>\S*)"
)
# A quota on a resource the pod does not state (`failed quota: q: must specify
# limits.ephemeral-storage for: gateway`): no later try states it either.
_QUOTA_NEEDS = re.compile(r"failed quota: .*must specify")
_NAMESPACE_TERMINATING = re.compile(r"because it is being terminated")


def classify_refusal(status: int, reason: str | None, message: str) -> Refusal:
    """Sort an API server's refusal of a create (HTTP `status`, Status `reason` and `message`)."""
    if status == 401:
        return Refusal.OPERATOR
    if status == 403:
        if _RBAC_REFUSAL.search(message):
            return Refusal.OPERATOR
        if _NAMESPACE_TERMINATING.search(message):
            return Refusal.TRANSIENT
        if _QUOTA_NEEDS.search(message):
            return Refusal.SPEC
        exceeded = _QUOTA_EXCEEDED.search(message)
        if exceeded is not None:
            return Refusal.SPEC if _never_fits(exceeded) else Refusal.QUOTA
        return Refusal.SPEC
    if status in (400, 413, 422):
        return Refusal.SPEC
    if status in (405, 406, 415):
        return Refusal.OPERATOR  # a request this API server does not take: not the spec's doing
    return Refusal.TRANSIENT


def _never_fits(exceeded: re.Match[str]) -> bool:
    """Whether the create alone asks for more of some resource than the quota allows at all."""
    requested = _resource_list(exceeded.group("requested"))
    limited = _resource_list(exceeded.group("limited"))
    return any(name in limited and amount > limited[name] for name, amount in requested.items())


def _resource_list(text: str) -> dict[str, Decimal]:
    """`limits.cpu=4,requests.memory=1Gi` as exact amounts (what does not parse is left out)."""
    amounts: dict[str, Decimal] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            amounts[name] = quantity_value(value)
        except ValueError:
            continue
    return amounts


def refusal_message(message: str) -> str:
    """The API server's message as the session's status and Event may show it: credential-shaped
    text redacted, clipped."""
    text = redact(" ".join(message.split()))
    limit = REFUSAL_MESSAGE_MAX_LENGTH
    return text if len(text) <= limit else text[: limit - 1] + "…"
