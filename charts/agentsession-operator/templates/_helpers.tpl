{{/*
Names and labels.
*/}}

{{/* The chart name (nameOverride), cut to a DNS label. */}}
{{- define "agentsession-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object's name: <release>-<chart>, or the release name if it holds the chart name. */}}
{{- define "agentsession-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "agentsession-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object the chart creates. */}}
{{- define "agentsession-operator.labels" -}}
helm.sh/chart: {{ include "agentsession-operator.chart" . }}
{{ include "agentsession-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentsession-operator
{{- end }}

{{/* What selects the operator's pod (Deployment, Service, PDB, NetworkPolicy). */}}
{{- define "agentsession-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentsession-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "agentsession-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agentsession-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "agentsession-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
RBAC rules, written once here and used by rbac.yaml in both modes. They must equal
config/rbac/operator.yaml's ClusterRole rules (tests/chart/test_render.py fails otherwise).
*/}}

{{/* Rules on namespaced resources: a ClusterRole, or a Role in each of watchNamespaces. */}}
{{- define "agentsession-operator.rules.namespaced" -}}
# framework: kopf lists/watches the resources its handlers and indexes are registered for.
# application: reads AgentSessions (and the ones named by spec.resume.sessionRef), deletes
# finished ones when ttlSecondsAfterFinished has passed.
- apiGroups: ["agents.dev"]
  resources: ["agentsessions"]
  verbs: ["get", "list", "watch", "delete"]
# application: writes phase, result and conditions through the status subresource only.
- apiGroups: ["agents.dev"]
  resources: ["agentsessions/status"]
  verbs: ["get", "patch", "update"]
# application: runner pods set blockOwnerDeletion on their owner reference, which needs this
# where the OwnerReferencesPermissionEnforcement admission plugin is on.
- apiGroups: ["agents.dev"]
  resources: ["agentsessions/finalizers"]
  verbs: ["update"]
# framework: kopf lists/watches the resources its handlers and indexes are registered for.
# application: reads the AgentBudgets that select a session to admit it (cost governance).
# Read only: the operator never changes a budget's spec.
- apiGroups: ["agents.dev"]
  resources: ["agentbudgets"]
  verbs: ["get", "list", "watch"]
# application: writes a budget's ledger (spend per period, reservations) and conditions through
# the status subresource only; update for compare-and-swap writes (resourceVersion).
- apiGroups: ["agents.dev"]
  resources: ["agentbudgets/status"]
  verbs: ["get", "patch", "update"]
# application: one runner pod per attempt; listed and watched by label selector, read once to
# confirm a pod is really gone, deleted when a finished session still has a stray pod.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
# application: each attempt's namespace-scoped, short-lived store credentials, for its gateway
# only (vended with STS). Create only: the operator never reads, lists or updates a Secret;
# the garbage collector deletes them with their AgentSession.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
# application: Events on AgentSessions (Succeeded, Failed, AttemptFailed, InvalidSpec).
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- with .Values.networkPolicy.runners }}
{{- if ne .mode "off" }}
# application: the runner pods' NetworkPolicy, by its name only (AGENTSESSION_RUNNER_NETWORK_POLICY
# and _NAME): read before each runner pod; with mode create, created or put back by server-side
# apply (an apply that creates needs create). No other NetworkPolicy can be read or written.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  resourceNames: [{{ .name | quote }}]
  {{- if eq .mode "create" }}
  verbs: ["get", "create", "patch"]
  {{- else }}
  verbs: ["get"]
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Rules on cluster-scoped resources: always a ClusterRole. */}}
{{- define "agentsession-operator.rules.cluster" -}}
# application: reads the UID of a session's namespace (once, before its first attempt): the
# transcript store is keyed by it, so a namespace deleted and created again under the same name
# never reaches the old one's transcripts. Get only: no list, no watch.
- apiGroups: [""]
  resources: ["namespaces"]
  {{- with .Values.watchNamespaces }}
  resourceNames: {{ toJson . }}
  {{- end }}
  verbs: ["get"]
# framework: kopf discovers which CRDs exist at start-up.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/*
Settings: the operator's AGENTSESSION_* environment (README, "Settings"). Values that are unset
(empty string, null, empty list) are left out so the operator's own default applies.
Integers go through int64 so large ones never render as 1e+06.
*/}}
{{- define "agentsession-operator.env" -}}
{{- $v := .Values -}}
- name: AGENTSESSION_STORE_URL
  value: {{ required "store.url is required: the S3 store for transcripts, e.g. s3://bucket/prefix" $v.store.url | quote }}
{{- with $v.store.s3.endpointUrl }}
- name: AGENTSESSION_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with $v.store.s3.region }}
- name: AGENTSESSION_S3_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $v.store.credentials.roleArn }}
- name: AGENTSESSION_STORE_ROLE_ARN
  value: {{ . | quote }}
{{- end }}
{{- with $v.store.credentials.stsEndpointUrl }}
- name: AGENTSESSION_STORE_STS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: AGENTSESSION_STORE_CREDENTIALS_MAX_SECONDS
  value: {{ $v.store.credentials.maxSeconds | int64 | quote }}
{{- with $v.gateway.image }}
- name: AGENTSESSION_GATEWAY_IMAGE
  value: {{ . | quote }}
{{- end }}
{{- with $v.gateway.command }}
- name: AGENTSESSION_GATEWAY_COMMAND
  value: {{ join "," . | quote }}
{{- end }}
{{- with $v.gateway.workspaceCommand }}
- name: AGENTSESSION_WORKSPACE_COMMAND
  value: {{ join "," . | quote }}
{{- end }}
- name: AGENTSESSION_WORKSPACE_SNAPSHOT_MAX_BYTES
  value: {{ $v.workspace.snapshotMaxBytes | quote }}
- name: AGENTSESSION_GATEWAY_UID
  value: {{ $v.gateway.uid | int64 | quote }}
- name: AGENTSESSION_GATEWAY_CPU
  value: {{ $v.gateway.resources.cpu | quote }}
- name: AGENTSESSION_GATEWAY_MEMORY
  value: {{ $v.gateway.resources.memory | quote }}
{{- with $v.store.credentials.operatorSecret }}
{{- range $key, $optional := dict "AWS_ACCESS_KEY_ID" false "AWS_SECRET_ACCESS_KEY" false "AWS_SESSION_TOKEN" true }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.store.credentials.operatorSecret | quote }}
      key: {{ $key }}
      optional: {{ $optional }}
{{- end }}
{{- end }}
{{- with $v.store.s3.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with $v.store.s3.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $v.anthropic.baseUrl }}
- name: AGENTSESSION_ANTHROPIC_BASE_URL
  value: {{ . | quote }}
{{- end }}
- name: AGENTSESSION_DEFAULT_API_KEY_SECRET
  value: {{ $v.anthropic.apiKeySecret.name | quote }}
- name: AGENTSESSION_DEFAULT_API_KEY_SECRET_KEY
  value: {{ $v.anthropic.apiKeySecret.key | quote }}
{{- if not (kindIs "invalid" $v.anthropic.cliMaxRetries) }}
- name: AGENTSESSION_CLI_MAX_RETRIES
  value: {{ $v.anthropic.cliMaxRetries | int64 | quote }}
{{- end }}
- name: AGENTSESSION_RUNNER_IMAGE
  value: {{ $v.runner.image | quote }}
{{- with $v.runner.imageAllowlist }}
- name: AGENTSESSION_IMAGE_ALLOWLIST
  value: {{ join "," . | quote }}
{{- end }}
{{- with $v.runner.command }}
- name: AGENTSESSION_RUNNER_COMMAND
  value: {{ join "," . | quote }}
{{- end }}
- name: AGENTSESSION_RUNNER_UID
  value: {{ $v.runner.uid | int64 | quote }}
{{- if $v.runner.hostNetwork }}
- name: AGENTSESSION_RUNNER_HOST_NETWORK
  value: "true"
{{- end }}
- name: AGENTSESSION_RUNNER_NETWORK_POLICY
  value: {{ $v.networkPolicy.runners.mode | quote }}
- name: AGENTSESSION_RUNNER_NETWORK_POLICY_NAME
  value: {{ $v.networkPolicy.runners.name | quote }}
{{- if eq $v.networkPolicy.runners.mode "create" }}
- name: AGENTSESSION_RUNNER_NETWORK_POLICY_EGRESS
  value: {{ include "agentsession-operator.runnerEgress" . | quote }}
{{- end }}
{{- with $v.runner.runtimeClassName }}
- name: AGENTSESSION_RUNTIME_CLASS_NAME
  value: {{ . | quote }}
{{- end }}
{{- with $v.runner.defaultModel }}
- name: AGENTSESSION_DEFAULT_MODEL
  value: {{ . | quote }}
{{- end }}
- name: AGENTSESSION_DEFAULT_CPU
  value: {{ $v.runner.resources.cpu | quote }}
- name: AGENTSESSION_DEFAULT_MEMORY
  value: {{ $v.runner.resources.memory | quote }}
- name: AGENTSESSION_DEFAULT_EPHEMERAL_STORAGE
  value: {{ $v.runner.resources.ephemeralStorage | quote }}
- name: AGENTSESSION_DEADLINE_GRACE_SECONDS
  value: {{ $v.runner.deadlineGraceSeconds | int64 | quote }}
- name: AGENTSESSION_DEFAULT_MAX_TURNS
  value: {{ $v.limits.maxTurns.default | int64 | quote }}
- name: AGENTSESSION_MAX_MAX_TURNS
  value: {{ $v.limits.maxTurns.max | int64 | quote }}
- name: AGENTSESSION_DEFAULT_MAX_BUDGET_USD
  value: {{ $v.limits.maxBudgetUsd.default | quote }}
- name: AGENTSESSION_MAX_MAX_BUDGET_USD
  value: {{ $v.limits.maxBudgetUsd.max | quote }}
- name: AGENTSESSION_DEFAULT_TIMEOUT_SECONDS
  value: {{ $v.limits.timeoutSeconds.default | int64 | quote }}
- name: AGENTSESSION_MAX_TIMEOUT_SECONDS
  value: {{ $v.limits.timeoutSeconds.max | int64 | quote }}
- name: AGENTSESSION_BACKOFF_BASE_SECONDS
  value: {{ $v.backoff.baseSeconds | quote }}
- name: AGENTSESSION_BACKOFF_MAX_SECONDS
  value: {{ $v.backoff.maxSeconds | quote }}
- name: AGENTSESSION_SESSION_REF_TIMEOUT_SECONDS
  value: {{ $v.sessionRef.timeoutSeconds | quote }}
- name: AGENTSESSION_MAX_CONCURRENT_RECONCILES
  value: {{ $v.maxConcurrentReconciles | int64 | quote }}
{{- if not (kindIs "invalid" $v.admission.maxRunningSessions) }}
- name: AGENTSESSION_MAX_RUNNING_SESSIONS
  value: {{ $v.admission.maxRunningSessions | int64 | quote }}
{{- end }}
- name: AGENTSESSION_QUEUE_STATUS_REFRESH_SECONDS
  value: {{ $v.admission.queueStatusRefreshSeconds | quote }}
- name: AGENTSESSION_ADMISSION_WARMUP_SECONDS
  value: {{ $v.admission.warmupSeconds | quote }}
{{- with $v.watchNamespaces }}
- name: AGENTSESSION_WATCH_NAMESPACES
  value: {{ join "," . | quote }}
{{- end }}
{{- with $v.otel.endpoint }}
- name: AGENTSESSION_OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: AGENTSESSION_OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $v.otel.protocol | quote }}
- name: AGENTSESSION_OTEL_METRICS_EXPORTER
  value: {{ $v.otel.metricsExporter | quote }}
- name: AGENTSESSION_OTEL_LOGS_EXPORTER
  value: {{ $v.otel.logsExporter | quote }}
{{- end }}
- name: AGENTSESSION_METRICS_PORT
  value: {{ $v.metrics.port | int64 | quote }}
- name: AGENTSESSION_HEALTH_PORT
  value: {{ $v.health.port | int64 | quote }}
{{- if $v.leaderElection.enabled }}
- name: AGENTSESSION_LEADER_ELECTION
  value: "true"
- name: AGENTSESSION_LEADER_ELECTION_NAMESPACE
  value: {{ include "agentsession-operator.leaseNamespace" . | quote }}
- name: AGENTSESSION_LEADER_ELECTION_LEASE_NAME
  value: {{ include "agentsession-operator.leaseName" . | quote }}
- name: AGENTSESSION_LEADER_ELECTION_LEASE_DURATION_SECONDS
  value: {{ $v.leaderElection.leaseDurationSeconds | int64 | quote }}
- name: AGENTSESSION_LEADER_ELECTION_RENEW_DEADLINE_SECONDS
  value: {{ $v.leaderElection.renewDeadlineSeconds | quote }}
- name: AGENTSESSION_LEADER_ELECTION_RETRY_PERIOD_SECONDS
  value: {{ $v.leaderElection.retryPeriodSeconds | quote }}
{{- end }}
{{- end }}

{{/* The leader Lease: its namespace (default: the release's) and name (default: the full name). */}}
{{- define "agentsession-operator.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{- define "agentsession-operator.leaseName" -}}
{{- default (include "agentsession-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Fail early on combinations the schema cannot express (the operator would refuse them at start). */}}
{{- define "agentsession-operator.validate" -}}
{{- $l := .Values.limits }}
{{- if gt (int64 $l.maxTurns.default) (int64 $l.maxTurns.max) }}
{{- fail "limits.maxTurns.default must not exceed limits.maxTurns.max" }}
{{- end }}
{{- if gt (float64 $l.maxBudgetUsd.default) (float64 $l.maxBudgetUsd.max) }}
{{- fail "limits.maxBudgetUsd.default must not exceed limits.maxBudgetUsd.max" }}
{{- end }}
{{- if gt (int64 $l.timeoutSeconds.default) (int64 $l.timeoutSeconds.max) }}
{{- fail "limits.timeoutSeconds.default must not exceed limits.timeoutSeconds.max" }}
{{- end }}
{{- if eq (int64 .Values.metrics.port) (int64 .Values.health.port) }}
{{- fail "metrics.port and health.port must differ" }}
{{- end }}
{{- $le := .Values.leaderElection }}
{{- if and (gt (int64 .Values.replicaCount) 1) (not $le.enabled) }}
{{- fail "replicaCount above 1 needs leaderElection.enabled: without it every replica would reconcile every session" }}
{{- end }}
{{- if ge (float64 $le.renewDeadlineSeconds) (float64 $le.leaseDurationSeconds) }}
{{- fail "leaderElection.renewDeadlineSeconds must be shorter than leaderElection.leaseDurationSeconds" }}
{{- end }}
{{- if ge (mulf (float64 $le.retryPeriodSeconds) 1.2) (float64 $le.renewDeadlineSeconds) }}
{{- fail "leaderElection.retryPeriodSeconds times 1.2 must be shorter than leaderElection.renewDeadlineSeconds" }}
{{- end }}
{{- end }}

{{/*
The runner NetworkPolicy's egress rules as JSON: DNS, the Anthropic API (or egress proxy), S3 and
extraEgress, each port's protocol defaulted to TCP as the API server does. The operator applies
exactly these (AGENTSESSION_RUNNER_NETWORK_POLICY_EGRESS), and the admission policy on its
NetworkPolicy writes compares against the same list.
*/}}
{{- define "agentsession-operator.runnerEgress" -}}
{{- $runners := .Values.networkPolicy.runners }}
{{- $rules := list (dict "rule" .Values.networkPolicy.dns "what" "networkPolicy.dns") (dict "rule" $runners.anthropic "what" "networkPolicy.runners.anthropic") (dict "rule" $runners.s3 "what" "networkPolicy.runners.s3") }}
{{- range $i, $rule := $runners.extraEgress }}
{{- $rules = append $rules (dict "rule" $rule "what" (printf "networkPolicy.runners.extraEgress[%d]" $i)) }}
{{- end }}
{{- $egress := list }}
{{- range $rules }}
{{- if not .rule.to }}
{{- fail (printf "%s.to is empty: the runner NetworkPolicy (networkPolicy.runners.mode create, the default) needs its destinations (an egress rule without any would allow every destination); set it, or set networkPolicy.runners.mode to require or off" .what) }}
{{- end }}
{{- $ports := list }}
{{- range .rule.ports }}
{{- $ports = append $ports (merge (deepCopy .) (dict "protocol" "TCP")) }}
{{- end }}
{{- $egress = append $egress (dict "to" .rule.to "ports" $ports) }}
{{- end }}
{{- toJson $egress }}
{{- end }}

{{/*
A value as a CEL literal that compares equal to the same data in an admitted object: every
value wrapped in dyn() (CEL has no literal of mixed map types otherwise), and nulls, empty lists
and empty matchLabels left out as the API server leaves them out (the operator's
models.network_policy.compact does the same).
*/}}
{{- define "agentsession-operator.cel" -}}
{{- if kindIs "map" . -}}
{{- $entries := list }}
{{- range $key, $value := . }}
{{- if not (or (kindIs "invalid" $value) (and (kindIs "slice" $value) (not $value)) (and (eq $key "matchLabels") (not $value))) }}
{{- $entries = append $entries (printf "%s: %s" (toJson $key) (include "agentsession-operator.cel" $value)) }}
{{- end }}
{{- end -}}
dyn({ {{- join ", " $entries -}} })
{{- else if kindIs "slice" . -}}
{{- $items := list }}
{{- range . }}
{{- $items = append $items (include "agentsession-operator.cel" .) }}
{{- end -}}
dyn([ {{- join ", " $items -}} ])
{{- else -}}
dyn({{ toJson . }})
{{- end -}}
{{- end }}

{{/* One NetworkPolicy egress rule from {to, ports}; `what` names the value in the error. */}}
{{- define "agentsession-operator.egressRule" -}}
{{- if not .rule.to }}
{{- fail (printf "%s.to is empty: an egress rule without destinations would allow every destination" .what) }}
{{- end -}}
- to:
    {{- toYaml .rule.to | nindent 4 }}
  {{- with .rule.ports }}
  ports:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
