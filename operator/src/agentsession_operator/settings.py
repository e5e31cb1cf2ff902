"""The operator's settings, read once at start-up from `AGENTSESSION_*` environment variables.

Built by `agentsession_operator.main` and passed (never imported as a global) to the reconcile
logic, which uses them for defaults, limits and the runner pod's shape.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agentsession_operator.models.markers import quantity_value
from agentsession_operator.models.network_policy import EgressRule
from agentsession_operator.models.spec import MAX_BUDGET_USD_LIMIT, MAX_TURNS_LIMIT


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


class NetworkPolicyMode(enum.StrEnum):
    """How the operator makes sure runner pods' egress is limited before it starts one."""

    CREATE = "create"
    """Server-side apply the runner NetworkPolicy (from the egress template) in the namespace
    first, creating it or putting it back as the template says."""
    REQUIRE = "require"
    """Only check that a NetworkPolicy of that name exists there (an admin or GitOps made it);
    without one the session waits in Pending, with a Warning Event, and is retried."""
    OFF = "off"
    """No check (clusters whose CNI enforces no NetworkPolicy, or that limit egress otherwise)."""


class OperatorSettings(BaseSettings):
    """Every knob of the operator; each is documented in the README's settings table."""

    model_config = SettingsConfigDict(env_prefix="AGENTSESSION_", frozen=True, extra="ignore")

    store_url: str = Field(
        description="SessionStore URL for runners: s3://bucket/prefix (file:///dir for local use)."
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint for non-AWS stores (MinIO, R2): AWS_ENDPOINT_URL."
    )
    s3_region: str | None = Field(default=None, description="AWS_REGION for the runners.")
    store_role_arn: str | None = Field(
        default=None,
        description=(
            "IAM role the operator assumes (STS AssumeRole) for every attempt, `{namespace}` "
            "replaced by the session's namespace, with a session policy limited to that "
            "namespace's prefix; the short-lived credentials go to the attempt's gateway only, "
            "in a Secret named agentsession-store-<pod>. Unset: gateways use their pod's own "
            "identity, which a shared cluster must not do (every tenant's gateway could reach "
            "every tenant's transcripts)."
        ),
    )
    store_sts_endpoint_url: str | None = Field(
        default=None,
        description="STS endpoint for MinIO or other S3-compatible servers; unset: AWS's.",
    )
    store_credentials_max_seconds: int = Field(
        default=43200,
        ge=900,
        le=43200,
        description=(
            "Longest lifetime asked of STS (the role's MaxSessionDuration or less); credentials "
            "live timeoutSeconds + AGENTSESSION_DEADLINE_GRACE_SECONDS, at least 900 s."
        ),
    )
    anthropic_base_url: str | None = Field(
        default=None,
        description=(
            "Where the session gateway sends Messages API requests (an egress proxy, a company "
            "gateway); unset: https://api.anthropic.com. The agent's CLI always talks to its "
            "pod's gateway."
        ),
    )
    default_api_key_secret: str = Field(
        default="anthropic-api-key",
        description="Secret (in the session's namespace) used when spec.apiKeySecretRef is unset.",
    )
    default_api_key_secret_key: str = Field(
        default="ANTHROPIC_API_KEY", description="Key in the default API-key Secret."
    )
    runner_image: str = Field(
        default="ghcr.io/agentsession/agentsession-runner:0.1.0",
        description="Image of the runner pods.",
    )
    image_allowlist: CsvList = Field(
        default_factory=list,
        description=(
            "Images spec.image may name (comma-separated); an entry ending in '*' is a prefix. "
            "Empty: no overrides are accepted."
        ),
    )
    runner_command: CsvList = Field(
        default_factory=lambda: ["agent-runner"],
        description="Command of the runner container (comma-separated argv).",
    )
    cli_max_retries: int | None = Field(
        default=None,
        ge=0,
        description=(
            "CLAUDE_CODE_MAX_RETRIES for the CLI: its own retries of 429/5xx/529 before the "
            "attempt ends with APIError (and the operator retries by resuming). Unset: CLI default."
        ),
    )
    runner_uid: int = Field(default=65532, ge=1, description="Non-root UID/GID of runner pods.")
    gateway_image: str | None = Field(
        default=None,
        description=(
            "Image of the session gateway sidecar (it holds the credentials, so spec.image never "
            "changes it); unset: the runner image."
        ),
    )
    gateway_uid: int = Field(
        default=65533,
        ge=1,
        description="UID/GID of the gateway container: not the agent's, so the agent cannot "
        "read the gateway's files or signal its process.",
    )
    gateway_command: CsvList = Field(
        default_factory=lambda: ["agentsession-gateway"],
        description="Command of the gateway container (comma-separated argv; benchmarks stub it).",
    )
    gateway_cpu: str = Field(default="200m", description="Gateway CPU request and limit.")
    gateway_memory: str = Field(default="256Mi", description="Gateway memory request and limit.")
    runner_host_network: bool = Field(
        default=False,
        description=(
            "Run runner pods in the node's network namespace. Only for local clusters without a "
            "pod network (our real-node test cluster); never a tenant's choice, and it takes the "
            "pods out of Pod Security `restricted`."
        ),
    )
    runner_network_policy: NetworkPolicyMode = Field(
        default=NetworkPolicyMode.REQUIRE,
        description=(
            "create: the operator applies the runner NetworkPolicy in a namespace before its "
            "first runner pod there; require: it only checks one exists (else the session waits "
            "in Pending); off: no check. Unset the operator refuses to start runner pods where "
            "no policy exists (the chart sets create)."
        ),
    )
    runner_network_policy_name: str = Field(
        default="agentsession-runners",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description=(
            "Name of the runner NetworkPolicy in each namespace (the only NetworkPolicy the "
            "operator's RBAC lets it read or write)."
        ),
    )
    runner_network_policy_egress: Annotated[list[EgressRule], NoDecode] = Field(
        default_factory=list,
        description=(
            "The runner NetworkPolicy's egress rules (JSON, NetworkPolicyEgressRule list), for "
            "mode create: DNS, the Anthropic API or egress proxy, the S3 endpoint. No rule may "
            "reach a link-local or metadata address (169.254.0.0/16, fe80::/10, "
            "fd00:ec2::254): a CIDR containing one must list it in except."
        ),
    )
    runtime_class_name: str | None = Field(
        default=None, description="Default RuntimeClass for runner pods (e.g. gvisor, kata)."
    )
    default_model: str | None = Field(
        default=None, description="Model used when spec.model is unset (CLI default if unset)."
    )
    default_max_turns: int = Field(default=25, ge=1, le=MAX_TURNS_LIMIT)
    max_max_turns: int = Field(default=200, ge=1, le=MAX_TURNS_LIMIT)
    default_max_budget_usd: float = Field(default=1.0, gt=0, le=MAX_BUDGET_USD_LIMIT)
    max_max_budget_usd: float = Field(default=25.0, gt=0, le=MAX_BUDGET_USD_LIMIT)
    default_timeout_seconds: int = Field(default=1800, ge=1)
    max_timeout_seconds: int = Field(default=6 * 3600, ge=1)
    deadline_grace_seconds: int = Field(
        default=60,
        ge=0,
        description=(
            "Extra time the pod's activeDeadlineSeconds gives beyond timeoutSeconds, so the "
            "runner's own deadline can persist the transcript before the kubelet kills it."
        ),
    )
    default_cpu: str = Field(default="1", description="Runner CPU request and limit.")
    default_memory: str = Field(default="1Gi", description="Runner memory request and limit.")
    default_ephemeral_storage: str = Field(default="5Gi", description="Runner disk.")
    workspace_snapshot_max_bytes: str = Field(
        default="2Gi",
        pattern=r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$",
        description=(
            "Largest workspace snapshotted into the store (a quantity, e.g. `2Gi`): the default "
            "and the maximum of spec.workspace.snapshot.maxBytes."
        ),
    )
    workspace_command: CsvList = Field(
        default_factory=lambda: ["agentsession-workspace"],
        description=(
            "The workspace init container's command (comma-separated argv), run from the runner "
            "image when a session has spec.workspace.sources."
        ),
    )
    backoff_base_seconds: float = Field(default=10.0, ge=0, description="First retry delay.")
    backoff_max_seconds: float = Field(default=300.0, ge=0, description="Retry delay cap.")
    session_ref_timeout_seconds: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "How long a session waits for its spec.resume.sessionRef (or a workspace "
            "fromSession source) to exist, or to leave Suspended or Paused, before it fails "
            "with InvalidSpec (a referenced session that runs is waited for as long as it runs)."
        ),
    )
    max_concurrent_reconciles: int = Field(
        default=16,
        ge=1,
        le=1024,
        description=(
            "Reconcile passes (and API connections) in flight at once, like controller-runtime's "
            "MaxConcurrentReconciles; kopf runs at most 4x as many per-object workers."
        ),
    )
    max_running_sessions: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Cluster-wide cap on sessions running at once (admitted attempts); more wait in phase "
            "Queued, and free slots go to the namespace running the fewest first. Unset: no cap."
        ),
    )
    queue_status_refresh_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "How often at most a Queued session's message is rewritten when only its place in "
            "the queue moved (a new reason is written at once)."
        ),
    )
    admission_warmup_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "After a start or a failover, admission waits this long at most for every listed "
            "session's first pass, so first come, first served holds across the restart."
        ),
    )
    watch_namespaces: CsvList = Field(
        default_factory=list, description="Namespaces to watch (comma-separated); empty: all."
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        description="Turns on the CLI's OpenTelemetry export to this OTLP endpoint.",
    )
    otel_exporter_otlp_protocol: str = Field(default="grpc", description="OTLP protocol.")
    otel_metrics_exporter: str = Field(default="otlp", description="OTEL_METRICS_EXPORTER.")
    otel_logs_exporter: str = Field(default="otlp", description="OTEL_LOGS_EXPORTER.")
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="Prometheus port; 0 off.")
    health_port: int = Field(default=8081, ge=0, le=65535, description="Liveness port; 0 off.")
    leader_election: bool = Field(
        default=False,
        description=(
            "Elect one active replica on a coordination.k8s.io Lease; the others wait as "
            "standbys and start reconciling only once they hold it. Off: this process is the "
            "only operator (one replica). The chart turns it on."
        ),
    )
    leader_election_namespace: str | None = Field(
        default=None,
        description=(
            "Namespace of the Lease; unset: the operator's own (its service account's) namespace."
        ),
    )
    leader_election_lease_name: str = Field(
        default="agentsession-operator", min_length=1, description="Name of the Lease."
    )
    leader_election_lease_duration_seconds: int = Field(
        default=10,
        ge=2,
        le=300,
        description=(
            "How long a standby waits, from when it last saw the Lease change, before it takes "
            "it over (client-go's LeaseDuration): the bulk of a failover's cost."
        ),
    )
    leader_election_renew_deadline_seconds: float = Field(
        default=7.0,
        gt=0,
        description=(
            "How long a leader goes on without a successful renewal before it stops acting and "
            "exits (client-go's RenewDeadline); shorter than the lease duration, so it stops "
            "before a standby can take over."
        ),
    )
    leader_election_retry_period_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often the leader renews and a standby looks (client-go's RetryPeriod).",
    )

    @field_validator(
        "image_allowlist",
        "runner_command",
        "gateway_command",
        "workspace_command",
        "watch_namespaces",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("runner_network_policy_egress", mode="before")
    @classmethod
    def _json(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else []
            except ValueError as exc:
                raise ValueError(f"not valid JSON: {exc}") from exc
        return value

    @property
    def workspace_snapshot_max(self) -> int:
        """AGENTSESSION_WORKSPACE_SNAPSHOT_MAX_BYTES in bytes."""
        return int(quantity_value(self.workspace_snapshot_max_bytes))

    @model_validator(mode="after")
    def _defaults_within_maximums(self) -> OperatorSettings:
        if self.gateway_uid == self.runner_uid:
            raise ValueError("AGENTSESSION_GATEWAY_UID must differ from AGENTSESSION_RUNNER_UID")
        if self.runner_network_policy is NetworkPolicyMode.CREATE and not (
            self.runner_network_policy_egress
        ):
            raise ValueError(
                "AGENTSESSION_RUNNER_NETWORK_POLICY=create needs "
                "AGENTSESSION_RUNNER_NETWORK_POLICY_EGRESS: the runner NetworkPolicy's egress "
                "rules as a JSON list (DNS, the Anthropic API or egress proxy, the S3 endpoint)"
            )
        if self.default_max_turns > self.max_max_turns:
            raise ValueError("AGENTSESSION_DEFAULT_MAX_TURNS exceeds AGENTSESSION_MAX_MAX_TURNS")
        if self.default_max_budget_usd > self.max_max_budget_usd:
            raise ValueError(
                "AGENTSESSION_DEFAULT_MAX_BUDGET_USD exceeds AGENTSESSION_MAX_MAX_BUDGET_USD"
            )
        if self.default_timeout_seconds > self.max_timeout_seconds:
            raise ValueError(
                "AGENTSESSION_DEFAULT_TIMEOUT_SECONDS exceeds AGENTSESSION_MAX_TIMEOUT_SECONDS"
            )
        # client-go's own checks: the leader must give up before anyone may take over, and retry
        # (with its jitter of up to 1.2x) more than once before it gives up.
        renew_deadline = self.leader_election_renew_deadline_seconds
        if renew_deadline >= self.leader_election_lease_duration_seconds:
            raise ValueError(
                "AGENTSESSION_LEADER_ELECTION_RENEW_DEADLINE_SECONDS must be shorter than "
                "AGENTSESSION_LEADER_ELECTION_LEASE_DURATION_SECONDS"
            )
        if (
            self.leader_election_retry_period_seconds * 1.2
            >= self.leader_election_renew_deadline_seconds
        ):
            raise ValueError(
                "AGENTSESSION_LEADER_ELECTION_RETRY_PERIOD_SECONDS times 1.2 must be shorter than "
                "AGENTSESSION_LEADER_ELECTION_RENEW_DEADLINE_SECONDS"
            )
        return self

    def image_allowed(self, image: str) -> bool:
        if image == self.runner_image:
            return True
        for entry in self.image_allowlist:
            if entry.endswith("*") and image.startswith(entry[:-1]):
                return True
            if image == entry:
                return True
        return False
