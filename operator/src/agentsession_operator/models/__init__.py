"""The AgentSession API (group agents.dev, version v1alpha1) as pydantic models: the source of the
CRD (models.crd) and what the operator parses watched objects into."""

from .markers import Rule
from .resource import (
    API_VERSION,
    CRD_NAME,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    AgentSession,
    ObjectMeta,
)
from .spec import (
    RESERVED_ENV_NAMES,
    RESERVED_ENV_PREFIXES,
    AgentSessionSpec,
    ApiKeySecretRef,
    EnvVar,
    EnvVarSource,
    KeySelector,
    ResourceList,
    ResourceRequirements,
    ResumeSpec,
    is_reserved_env_name,
)
from .status import AgentSessionStatus, Condition, ConditionType, Phase

__all__ = [
    "API_VERSION",
    "CRD_NAME",
    "GROUP",
    "KIND",
    "PLURAL",
    "RESERVED_ENV_NAMES",
    "RESERVED_ENV_PREFIXES",
    "VERSION",
    "AgentSession",
    "AgentSessionSpec",
    "AgentSessionStatus",
    "ApiKeySecretRef",
    "Condition",
    "ConditionType",
    "EnvVar",
    "EnvVarSource",
    "KeySelector",
    "ObjectMeta",
    "Phase",
    "ResourceList",
    "ResourceRequirements",
    "ResumeSpec",
    "Rule",
    "is_reserved_env_name",
]
