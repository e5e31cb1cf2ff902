"""Prometheus metrics of the operator, served by prometheus-client on AGENTSESSION_METRICS_PORT.

One `Metrics` object is built at start-up (its own registry, so tests can build several) and
updated by the handlers and the API client; every name is prefixed `agentsession_`.
"""

from __future__ import annotations

from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agentsession_contract.gateway import GatewayReport

_TURN_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 500, 1000)
_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600)
_START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_QUEUE_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sessions = Counter(
            "agentsession_sessions_finished",
            "Sessions that reached a terminal phase, by namespace, phase and reason.",
            ["namespace", "phase", "reason"],
            registry=r,
        )
        self.running = Gauge(
            "agentsession_running_sessions",
            "Sessions in phase Running now, by namespace.",
            ["namespace"],
            registry=r,
        )
        self.cost = Counter(
            "agentsession_cost_usd",
            "Cost in USD reported by finished attempts, by namespace and model.",
            ["namespace", "model"],
            registry=r,
        )
        self.tokens = Counter(
            "agentsession_tokens",
            "Tokens reported by finished attempts, by namespace, model and kind.",
            ["namespace", "model", "kind"],
            registry=r,
        )
        self.turns = Histogram(
            "agentsession_turns",
            "Agent turns per finished session.",
            ["namespace"],
            buckets=_TURN_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "agentsession_duration_seconds",
            "Wall time from the first runner pod to the terminal phase.",
            ["namespace"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "agentsession_attempts",
            "Runner pods created (first attempts and retries), by namespace.",
            ["namespace"],
            registry=r,
        )
        self.retries = Counter(
            "agentsession_retries",
            "Attempts that failed retryably and were retried, by namespace and reason.",
            ["namespace", "reason"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "agentsession_reconcile_errors",
            "Reconcile passes that raised, by error type.",
            ["error"],
            registry=r,
        )
        self.pod_start_latency = Histogram(
            "agentsession_pod_start_latency_seconds",
            "From runner pod creation to its container running.",
            buckets=_START_BUCKETS,
            registry=r,
        )
        self.api_requests = Counter(
            "agentsession_operator_api_requests",
            "Kubernetes API requests the operator made, by verb, resource and HTTP code.",
            ["verb", "resource", "code"],
            registry=r,
        )
        self.budget_limit = Gauge(
            "agentsession_budget_limit_usd",
            "An AgentBudget's limit for its current period, by namespace, budget and period.",
            ["namespace", "budget", "period"],
            registry=r,
        )
        self.budget_spent = Gauge(
            "agentsession_budget_spent_usd",
            "What an AgentBudget's sessions spent in its current period (settled attempts).",
            ["namespace", "budget", "period"],
            registry=r,
        )
        self.budget_reserved = Gauge(
            "agentsession_budget_reserved_usd",
            "What an AgentBudget holds for admitted attempts that have not ended.",
            ["namespace", "budget", "period"],
            registry=r,
        )
        self.queued = Gauge(
            "agentsession_queued_sessions",
            "Sessions waiting in phase Queued, by namespace and the reason they wait.",
            ["namespace", "reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "agentsession_queue_wait_seconds",
            "From an attempt asking for admission to its admission.",
            buckets=_QUEUE_BUCKETS,
            registry=r,
        )
        self.leader = Gauge(
            "agentsession_leader",
            "1 while this replica holds the leader Lease (or runs without leader election), "
            "0 on a standby.",
            registry=r,
        )
        self._running: dict[str, set[str]] = defaultdict(set)
        self._queued_labels: set[tuple[str, str]] = set()

    def set_queued(self, counts: dict[tuple[str, str], int]) -> None:
        """Queued sessions by (namespace, reason) after an admission pass; others are 0."""
        for labels in self._queued_labels - counts.keys():
            self.queued.labels(*labels).set(0)
        for labels, count in counts.items():
            self.queued.labels(*labels).set(count)
        self._queued_labels |= counts.keys()

    def set_running(self, namespace: str, name: str, running: bool) -> None:
        members = self._running[namespace]
        if running:
            members.add(name)
        else:
            members.discard(name)
        self.running.labels(namespace).set(len(members))

    def record_attempt_usage(
        self, namespace: str, report: GatewayReport | None, charged_usd: float
    ) -> None:
        """Cost and tokens of one finished attempt, as its gateway metered them (retries count
        what they spent too); an attempt without a report counts its charge under `unknown`."""
        if report is None:
            if charged_usd > 0:
                self.cost.labels(namespace, "unknown").inc(charged_usd)
            return
        for model, spend in report.models.items():
            if spend.cost_usd:
                self.cost.labels(namespace, model).inc(float(spend.cost_usd))
            for kind, value in (
                ("input", spend.input_tokens),
                ("output", spend.output_tokens),
                ("cache_read", spend.cache_read_input_tokens),
                ("cache_creation", spend.cache_creation_input_tokens),
            ):
                if value:
                    self.tokens.labels(namespace, model, kind).inc(value)
