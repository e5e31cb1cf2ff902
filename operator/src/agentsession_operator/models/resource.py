"""The AgentSession resource as a whole (apiVersion, kind, metadata, spec, status) and its API
coordinates; the operator parses watched objects with AgentSession.from_body()."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, Self

from pydantic import ConfigDict, Field

from agentsession_contract.run import WireModel

from .markers import Rule, RuledModel
from .spec import AgentSessionSpec
from .status import AgentSessionStatus, Time

# Kubernetes' own wording for the two type fields (kubectl explain shows it), shared by every kind.
API_VERSION_DESCRIPTION: Final = (
    "APIVersion defines the versioned schema of this representation of an object. "
    "Servers should convert recognized schemas to the latest internal value, and may "
    "reject unrecognized values. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"
)
KIND_DESCRIPTION: Final = (
    "Kind is a string value representing the REST resource this object represents. "
    "Servers may infer this from the endpoint the client submits requests to. Cannot be "
    "updated. In CamelCase. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"
)

GROUP: Final = "agents.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "agents.dev/v1alpha1"  # f"{GROUP}/{VERSION}", spelled out for mypy
KIND: Final = "AgentSession"
PLURAL: Final = "agentsessions"
SINGULAR: Final = "agentsession"
SHORT_NAMES: Final = ("ags",)
CATEGORIES: Final = ("agents",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"
NAME_MAX_LENGTH: Final = 63
"""A session's name is a label value of its runner pods and Secrets (at most 63 characters); pod
names are derived from it and shortened with a hash to stay within 63 themselves."""


class ObjectMeta(WireModel):
    """The part of metav1.ObjectMeta the operator reads; the API server's other keys are ignored."""

    # Watched objects carry managedFields, ownerReferences and more that we never use.
    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(default=None, description="Object name.")
    generate_name: str | None = Field(default=None, description="Name prefix to generate from.")
    namespace: str | None = Field(default=None, description="Object namespace.")
    uid: str | None = Field(default=None, description="Object UID.")
    resource_version: str | None = Field(default=None, description="Object resourceVersion.")
    generation: int | None = Field(default=None, description="Spec generation.")
    creation_timestamp: Time | None = Field(default=None, description="Creation time.")
    deletion_timestamp: Time | None = Field(default=None, description="Deletion request time.")
    labels: dict[str, str] | None = Field(default=None, description="Labels.")
    annotations: dict[str, str] | None = Field(default=None, description="Annotations.")
    finalizers: list[str] | None = Field(default=None, description="Finalizers.")


def _does_not_resume_itself(session: AgentSession) -> bool:
    resume = session.spec.resume
    if resume is None or resume.session_ref is None:
        return True
    return resume.session_ref != session.metadata.name


class AgentSession(RuledModel):
    """AgentSession runs one Claude Agent SDK session to completion in an ephemeral runner pod,
    within turn, budget and time limits, and reports its outcome; the transcript is kept in the
    operator's session store so later sessions can resume or fork it."""

    cel_rules = (
        Rule(
            cel=f"self.metadata.name.size() <= {NAME_MAX_LENGTH}",
            message=(
                f"metadata.name must be at most {NAME_MAX_LENGTH} characters: it is a label value "
                "of the session's runner pods"
            ),
            reason="FieldValueInvalid",
            holds=lambda s: s.metadata.name is None or len(s.metadata.name) <= NAME_MAX_LENGTH,
        ),
        Rule(
            # Waiting on itself would leave the session Pending forever.
            cel=(
                "!has(self.spec.resume) || !has(self.spec.resume.sessionRef) || "
                "self.spec.resume.sessionRef != self.metadata.name"
            ),
            message="a session cannot resume itself",
            field_path=".spec.resume.sessionRef",
            holds=_does_not_resume_itself,
        ),
    )

    api_version: Literal["agents.dev/v1alpha1"] = Field(
        default=API_VERSION,
        description=API_VERSION_DESCRIPTION,
    )
    kind: Literal["AgentSession"] = Field(
        default=KIND,
        description=KIND_DESCRIPTION,
    )
    metadata: ObjectMeta = Field(
        default_factory=ObjectMeta, description="Standard object metadata."
    )
    spec: AgentSessionSpec = Field(description="The session to run. Immutable once created.")
    status: AgentSessionStatus | None = Field(
        default=None,
        description="The session's observed state and result, written by the operator.",
    )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Self:
        """Parse a watched object (a kopf body or a plain dict); raises pydantic.ValidationError."""
        return cls.model_validate(dict(body))
