"""The runner pod for one attempt of a session, and the run config it carries. Pure.

Called by decide(). Two containers with different UIDs and no shared process namespace: the
agent (runner + CLI) holds no credential and mounts no Secret of ours; the session gateway, a
native sidecar, holds the API key and store credentials and reports the attempt. Hardened by
default (Pod Security `restricted`), isolated per the SDK hosting guide (own config dir, HOME,
workspace, store keys under the namespace), secrets only by reference, the run config in a pod
annotation projected into both containers as a file.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from agentsession_contract.gateway import (
    CONFIG_ANNOTATION,
    CONFIG_DIR,
    CONFIG_FILE,
    SHARED_DIR,
)
from agentsession_contract.run import (
    ArtifactConfig,
    GitFetch,
    GitPushConfig,
    InlineFileConfig,
    OutputsConfig,
    RunConfig,
    SnapshotConfig,
    SourceConfig,
    encode_run_config,
    mcp_header_env,
)
from agentsession_contract.workspace.init import (
    GIT_STATE_DIR,
    INIT_CONTAINER,
    SOURCES_DIR,
    git_credential_env,
    git_credential_keys,
)
from agentsession_operator.models import AgentSession
from agentsession_operator.models.markers import quantity_value
from agentsession_operator.models.resource import API_VERSION, KIND
from agentsession_operator.models.spec import OPERATOR_SECRET_PREFIX
from agentsession_operator.reconcile.observed import (
    ATTEMPT_LABEL,
    COMPONENT_LABEL,
    GATEWAY_CONTAINER,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    RUNNER_COMPONENT,
    RUNNER_CONTAINER,
    SESSION_LABEL,
)
from agentsession_operator.settings import OperatorSettings

RUNNER_HOME = "/home/runner"
WORKSPACE = "/workspace"
TMP_DIR = "/tmp"  # noqa: S108 - the pod's own emptyDir volume, not a shared host /tmp
GATEWAY_STATE_DIR = "/var/lib/agentsession-gateway"
_SESSION_ID_NAMESPACE = uuid.UUID("6f1d3a2e-4c5b-4e8f-9a7d-0b1c2d3e4f50")
_NAME_MAX = 63


ANNOTATIONS_MAX_BYTES = 256 * 1024
"""What the API server lets one object's annotations hold in all, keys and values."""
RUN_CONFIG_SOURCES = {
    "prompt": "spec.prompt",
    "systemPrompt": "spec.systemPrompt",
    "systemPromptPreset": "spec.systemPromptPreset.append",
    "agents": "spec.agents",
    "mcpServers": "spec.mcpServers",
    "outputFormat": "spec.outputFormat.schema",
    "allowedTools": "spec.allowedTools",
    "disallowedTools": "spec.disallowedTools",
    "sources": "spec.workspace.sources",
    "outputs": "spec.workspace.outputs",
}
"""The run config's parts that a spec can make large, by the spec field each comes from."""


def session_id_for(uid: str) -> str:
    """The SDK session id the operator assigns a new (or forked) session: stable per CR."""
    return str(uuid.uuid5(_SESSION_ID_NAMESPACE, uid))


def pod_name(session_name: str, attempt: int) -> str:
    """`<session>-<attempt>`, shortened with a hash when the session name is long."""
    suffix = f"-{attempt}"
    if len(session_name) + len(suffix) <= _NAME_MAX:
        return session_name + suffix
    digest = hashlib.sha256(session_name.encode()).hexdigest()[:8]
    head = session_name[: _NAME_MAX - len(suffix) - 9].rstrip("-.")
    return f"{head}-{digest}{suffix}"


def run_config_for(
    session: AgentSession,
    resume_session_id: str | None,
    settings: OperatorSettings,
    namespace_uid: str | None = None,
    from_sessions: Mapping[str, str] | None = None,
) -> RunConfig:
    """The runner contract for this session (see RunConfig.session_id for how retries resume);
    its store keys are scoped by `namespace_uid` (keys.store_scope); `from_sessions` resolves
    the fromSession sources (sources_config)."""
    spec = session.spec
    resume = spec.resume
    uid = session.metadata.uid or f"{session.metadata.namespace}/{session.metadata.name}"
    assigned = session_id_for(uid)
    # Resuming our own assigned id means a started fork whose source is gone: plain resume.
    fork = bool(resume and resume.fork) and resume_session_id != assigned
    own_session_id = assigned if resume_session_id is None or fork else resume_session_id
    return RunConfig(
        prompt=spec.prompt,
        model=spec.model or settings.default_model,
        fallback_model=spec.fallback_model,
        system_prompt=spec.system_prompt,
        system_prompt_preset=spec.system_prompt_preset,
        max_turns=spec.max_turns or settings.default_max_turns,
        max_budget_usd=spec.max_budget_usd or settings.default_max_budget_usd,
        timeout_seconds=spec.timeout_seconds or settings.default_timeout_seconds,
        allowed_tools=list(spec.allowed_tools or []),
        disallowed_tools=list(spec.disallowed_tools or []),
        permission_mode=spec.permission_mode,
        agents=spec.agents,
        mcp_servers=spec.mcp_servers,
        output_format=spec.output_format,
        store=settings.store_url,
        namespace=str(session.metadata.namespace),
        namespace_uid=namespace_uid,
        session_name=str(session.metadata.name),
        session_id=own_session_id,
        resume_session_id=resume_session_id,
        fork_session=fork,
        resume_at=resume.resume_at if resume else None,
        workspace=WORKSPACE,
        snapshot=snapshot_config(session, settings),
        sources=sources_config(session, from_sessions or {}),
        outputs=outputs_config(session, own_session_id),
    )


def sources_config(session: AgentSession, from_sessions: Mapping[str, str]) -> list[SourceConfig]:
    """spec.workspace.sources for the init step: fromSession names resolved to session ids
    (`from_sessions`, by AgentSession name), git refs pinned to the commit an earlier attempt
    resolved (status.workspace.sources), configMap/secret as where their volume is mounted."""
    workspace = session.spec.workspace
    if workspace is None or not workspace.sources:
        return []
    status = session.status.workspace if session.status else None
    resolved = {s.name: s.commit for s in (status.sources or [])} if status else {}
    configs = []
    for source in workspace.sources:
        config: dict[str, Any] = {"name": source.name, "path": source.path, "kind": source.kind}
        if source.git is not None:
            config["git"] = GitFetch(
                url=source.git.url,
                ref=source.git.ref,
                commit=resolved.get(source.name),
                depth=source.git.depth,
                credentials=source.git.credentials_secret_ref is not None,
                credentials_secret=(
                    source.git.credentials_secret_ref.name
                    if source.git.credentials_secret_ref
                    else None
                ),
            )
        elif source.config_map is not None or source.secret is not None:
            config["files_dir"] = f"{SOURCES_DIR}/{source.name}"
        elif source.inline is not None:
            config["inline"] = [
                InlineFileConfig(path=f.path, content=f.content) for f in source.inline.files
            ]
        elif source.from_session is not None:
            config["from_session_id"] = from_sessions.get(source.from_session.name)
            config["from_path"] = source.from_session.path
        configs.append(SourceConfig(**config))
    return configs


def render_branch(template: str, session: AgentSession, session_id: str | None) -> str:
    """A push branch template with `{{ .session }}`, `{{ .namespace }}`, `{{ .sessionId }}`."""
    values = {
        "session": str(session.metadata.name),
        "namespace": str(session.metadata.namespace),
        "sessionId": session_id or "",
    }
    return re.sub(r"\{\{ *\.(session|namespace|sessionId) *\}\}", lambda m: values[m[1]], template)


def outputs_config(session: AgentSession, session_id: str | None) -> OutputsConfig | None:
    outputs = session.spec.outputs
    if outputs is None:
        return None
    name = str(session.metadata.name)
    pushes = []
    for output in outputs.git or []:
        push = output.push
        author = push.author
        pushes.append(
            GitPushConfig(
                source=output.source,
                branch=render_branch(push.branch, session, session_id),
                author_name=author.name if author else f"AgentSession {name}",
                author_email=author.email if author else "agent@agents.dev",
                message=push.message
                or f"Changes made by AgentSession {session.metadata.namespace}/{name}",
            )
        )
    return OutputsConfig(
        artifacts=[ArtifactConfig(name=a.name, path=a.path) for a in outputs.artifacts or []],
        git=pushes,
    )


def snapshot_config(session: AgentSession, settings: OperatorSettings) -> SnapshotConfig | None:
    """Snapshots are on unless spec.workspace.snapshot.enabled is false; maxBytes is held to the
    operator's maximum (which is also the default)."""
    workspace = session.spec.workspace
    wanted = workspace.snapshot if workspace else None
    if wanted is not None and not wanted.enabled:
        return None
    most = settings.workspace_snapshot_max
    limit = most
    if wanted is not None and wanted.max_bytes is not None:
        limit = min(int(quantity_value(wanted.max_bytes)), most)
    return SnapshotConfig(
        max_bytes=limit, exclude=list(wanted.exclude or []) if wanted is not None else []
    )


def _otel_env(session: AgentSession, settings: OperatorSettings) -> list[dict[str, Any]]:
    if not settings.otel_exporter_otlp_endpoint:
        return []
    meta = session.metadata
    attributes = ",".join(
        [
            f"k8s.namespace.name={meta.namespace}",
            f"agentsession.name={meta.name}",
            f"agentsession.uid={meta.uid}",
        ]
    )
    values = {
        "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": settings.otel_exporter_otlp_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": settings.otel_exporter_otlp_protocol,
        "OTEL_METRICS_EXPORTER": settings.otel_metrics_exporter,
        "OTEL_LOGS_EXPORTER": settings.otel_logs_exporter,
        "OTEL_RESOURCE_ATTRIBUTES": attributes,
    }
    return [{"name": k, "value": v} for k, v in values.items()]


STORE_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def store_secret_name(pod: str) -> str:
    """The Secret holding one attempt's vended store credentials (the gateway's only)."""
    return f"{OPERATOR_SECRET_PREFIX}store-{pod}"


def store_secret(session: AgentSession, pod: str, credentials: Mapping[str, str]) -> dict[str, Any]:
    """The manifest of an attempt's credentials Secret, owned by the session (collected with it)."""
    meta = session.metadata
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": store_secret_name(pod),
            "namespace": meta.namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, SESSION_LABEL: str(meta.name)},
            "ownerReferences": [_owner(session)],
        },
        "stringData": {key: credentials[key] for key in STORE_CREDENTIAL_KEYS},
    }


def _store_env(settings: OperatorSettings, pod: str) -> list[dict[str, Any]]:
    """The gateway's S3 connection: endpoint, region and, when the operator vends them, the
    attempt's namespace-scoped credentials (never the agent's)."""
    env: list[dict[str, Any]] = []
    if settings.s3_endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": settings.s3_endpoint_url})
    if settings.s3_region:
        env.append({"name": "AWS_REGION", "value": settings.s3_region})
    if settings.store_role_arn:
        for key in STORE_CREDENTIAL_KEYS:
            ref = {"name": store_secret_name(pod), "key": key}
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def _mcp_header_env(session: AgentSession) -> list[dict[str, Any]]:
    """Secret-backed MCP headers, for the gateway to add (the agent never sees them)."""
    env: list[dict[str, Any]] = []
    for server_name, server in (session.spec.mcp_servers or {}).items():
        for header, ref in (server.headers_from or {}).items():
            env.append(
                {
                    "name": mcp_header_env(server_name, header),
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                }
            )
    return env


def _user_env(session: AgentSession) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    for var in session.spec.env or []:
        if var.value_from is None:
            env.append({"name": var.name, "value": var.value or ""})
            continue
        source = var.value_from
        if source.secret_key_ref is not None:
            ref = {"secretKeyRef": source.secret_key_ref.to_wire()}
        else:
            assert source.config_map_key_ref is not None
            ref = {"configMapKeyRef": source.config_map_key_ref.to_wire()}
        env.append({"name": var.name, "valueFrom": ref})
    return env


def _resources(session: AgentSession, settings: OperatorSettings) -> dict[str, Any]:
    """Per resource: what the spec sets on both sides; set on one side only, that value on both
    (as Kubernetes defaults a request to its limit: the operator's default on the other side
    could be larger than a limit, which the API server refuses); set on neither, the default."""
    defaults = {
        "cpu": settings.default_cpu,
        "memory": settings.default_memory,
        "ephemeral-storage": settings.default_ephemeral_storage,
    }
    wanted = session.spec.resources
    asked_requests: dict[str, str] = {}
    asked_limits: dict[str, str] = {}
    if wanted is not None:
        if wanted.requests is not None:
            asked_requests = {k: str(v) for k, v in wanted.requests.to_wire().items()}
        if wanted.limits is not None:
            asked_limits = {k: str(v) for k, v in wanted.limits.to_wire().items()}
    requests = {
        name: asked_requests.get(name, asked_limits.get(name, default))
        for name, default in defaults.items()
    }
    limits = {
        name: asked_limits.get(name, asked_requests.get(name, default))
        for name, default in defaults.items()
    }
    return {"requests": requests, "limits": limits}


def _hardened(uid: int) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _gateway_container(
    session: AgentSession, pod: str, settings: OperatorSettings
) -> dict[str, Any]:
    """The session gateway: a native sidecar (started first, stopped last) with every credential
    of the attempt; its termination message is the attempt's authoritative report."""
    spec = session.spec
    api_key_ref = {
        "name": spec.api_key_secret_ref.name
        if spec.api_key_secret_ref
        else settings.default_api_key_secret,
        "key": spec.api_key_secret_ref.key
        if spec.api_key_secret_ref
        else settings.default_api_key_secret_key,
    }
    env: list[dict[str, Any]] = [
        {"name": "ANTHROPIC_API_KEY", "valueFrom": {"secretKeyRef": api_key_ref}},
        {"name": "AGENTSESSION_ATTEMPT_ID", "value": pod},
        {"name": "AGENTSESSION_GATEWAY_DIR", "value": SHARED_DIR},
        {"name": "AGENTSESSION_GATEWAY_STATE_DIR", "value": GATEWAY_STATE_DIR},
    ]
    if settings.anthropic_base_url:
        env.append({"name": "AGENTSESSION_UPSTREAM_URL", "value": settings.anthropic_base_url})
    env += _store_env(settings, pod) + _mcp_header_env(session)
    pushed = _pushed_sources(session)
    if pushed:
        env += _git_credentials_env(session, pushed)
    quantities = {"cpu": settings.gateway_cpu, "memory": settings.gateway_memory}
    return {
        "name": GATEWAY_CONTAINER,
        "image": settings.gateway_image or settings.runner_image,
        "command": list(settings.gateway_command),
        # Native sidecar: the kubelet starts it before the agent and stops it after the agent
        # has exited. No startup probe: the runner waits for the endpoint file itself, so both
        # start at once instead of the agent waiting up to a probe period (1 s) longer.
        "restartPolicy": "Always",
        "env": env,
        "resources": {"requests": quantities, "limits": quantities},
        "terminationMessagePolicy": "File",
        "terminationMessagePath": "/dev/termination-log",
        "securityContext": _hardened(settings.gateway_uid),
        "volumeMounts": [
            {"name": "run-config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "gateway", "mountPath": SHARED_DIR},
            {"name": "gateway-state", "mountPath": GATEWAY_STATE_DIR},
            # The pushed git sources' bases, which the init step fetched.
            *([{"name": "git-state", "mountPath": GIT_STATE_DIR}] if pushed else []),
        ],
    }


def _git_credentials_env(
    session: AgentSession, sources: set[str] | None = None
) -> list[dict[str, Any]]:
    """The git sources' credentials Secrets, key by key (the init step's, and the gateway's for
    the sources it pushes): never the agent's. An http(s) source reads `username` (optional)
    and `password`; an ssh source `ssh-privatekey` and `known_hosts`, optional here so that a
    missing one is the init step's clear failure naming the key, not a pod that cannot start."""
    env: list[dict[str, Any]] = []
    workspace = session.spec.workspace
    for source in (workspace.sources or []) if workspace else []:
        if source.git is None or source.git.credentials_secret_ref is None:
            continue
        if sources is not None and source.name not in sources:
            continue
        secret = source.git.credentials_secret_ref.name
        keys = git_credential_keys(source.git.url)
        for key in keys:
            optional = key != "password"
            ref = {"name": secret, "key": key, **({"optional": True} if optional else {})}
            env.append(
                {"name": git_credential_env(source.name, key), "valueFrom": {"secretKeyRef": ref}}
            )
    return env


def _pushed_sources(session: AgentSession) -> set[str]:
    outputs = session.spec.outputs
    return {o.source for o in (outputs.git or [])} if outputs else set()


def _source_volumes(session: AgentSession) -> list[dict[str, Any]]:
    """configMap and secret sources as volumes (mounted in the init step only)."""
    volumes: list[dict[str, Any]] = []
    workspace = session.spec.workspace
    for source in (workspace.sources or []) if workspace else []:
        files = source.config_map or source.secret
        if files is None:
            continue
        items = [{"key": i.key, "path": i.path} for i in files.items or []]
        if source.config_map is not None:
            volume: dict[str, Any] = {"name": files.name, "defaultMode": 0o444}
            kind = "configMap"
        else:
            volume = {"secretName": files.name, "defaultMode": 0o444}
            kind = "secret"
        if items:
            volume["items"] = items
        volumes.append({"name": f"source-{source.name}", kind: volume})
    return volumes


def _workspace_init_container(
    session: AgentSession, settings: OperatorSettings, resources: dict[str, Any]
) -> dict[str, Any]:
    """The trusted init step: fetches the sources (it alone mounts them and holds the git
    credentials) after the gateway has started and before the agent exists."""
    mounts: list[dict[str, Any]] = [
        {"name": "workspace", "mountPath": WORKSPACE},
        {"name": "tmp", "mountPath": TMP_DIR},
        {"name": "run-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "gateway", "mountPath": SHARED_DIR, "readOnly": True},
        {"name": "git-state", "mountPath": GIT_STATE_DIR},
    ]
    for volume in _source_volumes(session):
        name = volume["name"].removeprefix("source-")
        mounts.append(
            {"name": volume["name"], "mountPath": f"{SOURCES_DIR}/{name}", "readOnly": True}
        )
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": f"{GIT_STATE_DIR}/home"},
        {"name": "TMPDIR", "value": TMP_DIR},
        {"name": "AGENTSESSION_GATEWAY_DIR", "value": SHARED_DIR},
        {"name": "AGENTSESSION_STATE_DIR", "value": f"{TMP_DIR}/agent-runner"},
    ]
    return {
        "name": INIT_CONTAINER,
        "image": settings.gateway_image or settings.runner_image,
        "command": list(settings.workspace_command),
        "env": env + _git_credentials_env(session),
        "resources": resources,
        "terminationMessagePolicy": "File",
        "terminationMessagePath": "/dev/termination-log",
        "securityContext": _hardened(settings.runner_uid),
        "volumeMounts": mounts,
    }


def build_pod(
    session: AgentSession, attempt: int, config: RunConfig, settings: OperatorSettings
) -> dict[str, Any]:
    """The manifest of attempt `attempt`'s runner pod: the agent container and its gateway."""
    meta = session.metadata
    spec = session.spec
    name = pod_name(str(meta.name), attempt)
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": RUNNER_HOME},
        {"name": "CLAUDE_CONFIG_DIR", "value": f"{RUNNER_HOME}/.claude"},
        {"name": "TMPDIR", "value": TMP_DIR},
        {"name": "AGENTSESSION_STATE_DIR", "value": f"{TMP_DIR}/agent-runner"},
        {"name": "AGENTSESSION_GATEWAY_DIR", "value": SHARED_DIR},
    ]
    if settings.cli_max_retries is not None:
        env.append({"name": "CLAUDE_CODE_MAX_RETRIES", "value": str(settings.cli_max_retries)})
    env += _otel_env(session, settings) + _user_env(session)
    timeout = config.timeout_seconds or settings.default_timeout_seconds
    labels = {
        "app.kubernetes.io/name": "agentsession-runner",
        "app.kubernetes.io/instance": str(meta.name),
        COMPONENT_LABEL: RUNNER_COMPONENT,
        MANAGED_BY_LABEL: MANAGED_BY,
        SESSION_LABEL: str(meta.name),
        ATTEMPT_LABEL: str(attempt),
    }
    uid = settings.runner_uid
    runtime_class = spec.runtime_class_name or settings.runtime_class_name
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": timeout + settings.deadline_grace_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "shareProcessNamespace": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            # The gateway writes its endpoint file into the shared volume for the agent to read.
            "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [_gateway_container(session, name, settings)],
        "containers": [
            {
                "name": RUNNER_CONTAINER,
                "image": spec.image or settings.runner_image,
                "command": list(settings.runner_command),
                "workingDir": WORKSPACE,
                "env": env,
                "resources": _resources(session, settings),
                "terminationMessagePolicy": "File",
                "terminationMessagePath": "/dev/termination-log",
                "securityContext": _hardened(uid),
                "volumeMounts": [
                    {"name": "workspace", "mountPath": WORKSPACE},
                    {"name": "home", "mountPath": RUNNER_HOME},
                    {"name": "tmp", "mountPath": TMP_DIR},
                    {"name": "run-config", "mountPath": CONFIG_DIR, "readOnly": True},
                    {"name": "gateway", "mountPath": SHARED_DIR, "readOnly": True},
                ],
            }
        ],
        "volumes": [
            {"name": "workspace", "emptyDir": {}},
            {"name": "home", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "gateway", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            {"name": "gateway-state", "emptyDir": {"sizeLimit": "16Mi"}},
            {
                "name": "run-config",
                "downwardAPI": {
                    "items": [
                        {
                            "path": CONFIG_FILE,
                            "fieldRef": {
                                "fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"
                            },
                        }
                    ]
                },
            },
        ],
    }
    if config.sources:
        pod_spec["initContainers"].append(
            _workspace_init_container(session, settings, _resources(session, settings))
        )
        pod_spec["volumes"].append({"name": "git-state", "emptyDir": {}})
        pod_spec["volumes"] += _source_volumes(session)
    if runtime_class:
        pod_spec["runtimeClassName"] = runtime_class
    if settings.runner_host_network:
        pod_spec["hostNetwork"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta.namespace,
            "labels": labels,
            "annotations": {CONFIG_ANNOTATION: encode_run_config(config)},
            "ownerReferences": [_owner(session)],
        },
        "spec": pod_spec,
    }


def _owner(session: AgentSession) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": session.metadata.name,
        "uid": session.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def run_config_too_large(pod: Mapping[str, Any], config: RunConfig) -> str | None:
    """Why the pod cannot carry its run config (the annotation would exceed what the API server
    allows), naming the spec fields that take the most room; None if it fits."""
    annotations: Mapping[str, str] = pod["metadata"].get("annotations") or {}
    size = sum(len(key.encode()) + len(value.encode()) for key, value in annotations.items())
    if size <= ANNOTATIONS_MAX_BYTES:
        return None
    wire = config.to_wire()
    parts = sorted(
        (
            (len(json.dumps(wire[key], ensure_ascii=False).encode()), field)
            for key, field in RUN_CONFIG_SOURCES.items()
            if key in wire
        ),
        reverse=True,
    )
    largest = ", ".join(f"{field} ({length:,} bytes of JSON)" for length, field in parts[:3])
    return (
        f"the run config does not fit the runner pod: compressed it takes {size:,} bytes of "
        f"annotation {CONFIG_ANNOTATION}, more than the {ANNOTATIONS_MAX_BYTES:,} the API server "
        f"allows; the largest parts: {largest}"
    )
