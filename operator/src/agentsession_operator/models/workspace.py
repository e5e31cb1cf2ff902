"""AgentSession.spec.workspace and .spec.outputs (files in, files kept, files out) and their status.

Part of the API models (the CRD's source): `spec.workspace.sources` (git, configMap, secret,
inline, fromSession) fetched into `/workspace` by the pod's trusted init step, `.snapshot` (the
workspace kept in the store across attempts and follow-up sessions), `spec.outputs` (artifacts to
the store, a git source's changes pushed to a branch). Paths are relative to the workspace and
never escape it: the API server refuses `..` segments and absolute paths (CEL rules with their
Python twins, as everywhere in models/).
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import Field, StrictBool, StringConstraints

from agentsession_contract.run import WireModel

from .markers import (
    LIST_ATOMIC,
    MAP_ATOMIC,
    ConfigKey,
    ObjectName,
    Quantity,
    Rule,
    RuledModel,
    list_map,
)

PATH_MAX_LENGTH: Final = 1024
PATH_PATTERN: Final = r"^[^/\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
"""Relative (no leading `/`), no control characters; `..` segments are refused by a CEL rule."""
DOTDOT_SEGMENT: Final = r"(^|/)[.][.](/|$)"
SOURCES_MAX: Final = 16
INLINE_FILES_MAX: Final = 32
INLINE_FILE_MAX_LENGTH: Final = 65_536
ITEMS_MAX: Final = 64
EXCLUDE_MAX: Final = 64
EXCLUDE_PATTERN_MAX_LENGTH: Final = 256
ARTIFACTS_MAX: Final = 32
GIT_OUTPUTS_MAX: Final = SOURCES_MAX
GIT_URL_MAX_LENGTH: Final = 2048
_URL_USER: Final = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_URL_HOST: Final = r"[A-Za-z0-9][A-Za-z0-9.-]*"
GIT_URL_PATTERN: Final = (
    r"^(https?://[^\s]+"
    rf"|ssh://{_URL_USER}@({_URL_HOST}|\[[0-9A-Fa-f:.]+\])(:[0-9]{{1,5}})?/[^\s]+"
    rf"|{_URL_USER}@{_URL_HOST}:[^\s]+)$"
)
"""`http(s)://...`, `ssh://user@host[:port]/path` or scp-like `user@host:path` (ssh names its
user; no password, no option-looking host)."""
GIT_HTTP_URL: Final = r"^https?://"
GIT_REF_MAX_LENGTH: Final = 256
GIT_REF_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._/+-]*$"
"""A branch, tag or commit as `git fetch` takes it; no spaces, `~^:?*[\\`, or leading `-`."""
BRANCH_TEMPLATE_PATTERN: Final = (
    r"^([A-Za-z0-9._+-]|/|\{\{ *[.](session|namespace|sessionId) *\}\})+$"
)
"""Branch names with `{{ .session }}`, `{{ .namespace }}` and `{{ .sessionId }}` placeholders."""
BRANCH_TEMPLATE_MAX_LENGTH: Final = 200
DEFAULT_BRANCH_TEMPLATE: Final = "agent/{{ .session }}"
DNS_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_LABEL_MAX_LENGTH: Final = 63
SOURCE_KINDS: Final = ("git", "configMap", "secret", "inline", "fromSession")

RelativePath = Annotated[
    str, StringConstraints(min_length=1, max_length=PATH_MAX_LENGTH, pattern=PATH_PATTERN)
]
SourceName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=DNS_LABEL_MAX_LENGTH, pattern=DNS_LABEL_PATTERN),
]


def escapes(path: str) -> bool:
    """Whether a relative path (as the API accepts it otherwise) climbs out with `..`."""
    return re.search(DOTDOT_SEGMENT, path) is not None


def no_escape_rule(wire: str, python: str, where: str, *, optional: bool = False) -> Rule:
    """A CEL rule (and its twin) refusing `..` segments in the string field `wire`."""
    guard = f"!has(self.{wire}) || " if optional else ""

    def holds(model: object) -> bool:
        value = getattr(model, python)
        return value is None or not escapes(value)

    return Rule(
        cel=f"{guard}!self.{wire}.matches('{DOTDOT_SEGMENT}')",
        message=(
            f"{where} must stay inside the workspace: a relative path without '..' segments "
            "(absolute paths are refused by its pattern)"
        ),
        field_path=f".{wire}",
        reason="FieldValueForbidden",
        holds=holds,
    )


class SecretName(WireModel):
    """A Secret in the session's namespace, by name."""

    name: ObjectName = Field(description="Name of the Secret.")


class GitSource(RuledModel):
    """A git repository cloned by the pod's init step (Tekton's git-init, in short)."""

    cel_rules = (
        Rule(
            cel="!self.url.matches('^https?://[^/]*@')",
            message=(
                "git.url must not carry credentials (user:password@): put them in a Secret "
                "and name it in git.credentialsSecretRef"
            ),
            field_path=".url",
            reason="FieldValueForbidden",
            holds=lambda s: re.match(r"^https?://[^/]*@", s.url) is None,
        ),
        Rule(
            cel=f"self.url.matches('{GIT_HTTP_URL}') || has(self.credentialsSecretRef)",
            message=(
                "an ssh git.url needs git.credentialsSecretRef: a Secret with the keys "
                "ssh-privatekey and known_hosts"
            ),
            field_path=".credentialsSecretRef",
            reason="FieldValueRequired",
            holds=lambda s: (
                re.match(GIT_HTTP_URL, s.url) is not None or s.credentials_secret_ref is not None
            ),
        ),
    )

    url: str = Field(
        min_length=1,
        max_length=GIT_URL_MAX_LENGTH,
        pattern=GIT_URL_PATTERN,
        description=(
            "The repository's URL: `https://` (or `http://`, e.g. inside the cluster), "
            "`ssh://user@host[:port]/path` or scp-like `user@host:path` (ssh needs "
            "credentialsSecretRef with a key and the server's host key). Other transports "
            "(file, ext, git) are refused."
        ),
    )
    ref: str | None = Field(
        default=None,
        max_length=GIT_REF_MAX_LENGTH,
        pattern=GIT_REF_PATTERN,
        description=(
            "Branch, tag or commit (full hex id) to check out. Omitted: the remote's default "
            "branch. The commit it resolved to is in status.workspace.sources[].commit."
        ),
    )
    depth: int = Field(
        default=1,
        ge=0,
        le=1_000_000,
        description="History to fetch: 1 (the default) is the commit alone, 0 the whole history.",
    )
    credentials_secret_ref: SecretName | None = Field(
        default=None,
        description=(
            "A Secret with the credentials to fetch and push. http(s): `username` and `password` "
            "(a `kubernetes.io/basic-auth` Secret; a token goes in `password`). ssh: "
            "`ssh-privatekey` (a `kubernetes.io/ssh-auth` Secret; no passphrase) and "
            "`known_hosts` (the server's host keys, required: unknown host keys are refused). "
            "Only the pod's init step and its gateway read it; the agent's container never does."
        ),
        json_schema_extra=MAP_ATOMIC,
    )


class KeyToPath(RuledModel):
    """One key of a ConfigMap or Secret, written to a file."""

    cel_rules = (no_escape_rule("path", "path", "items[].path"),)

    key: ConfigKey = Field(description="The key.")
    path: RelativePath = Field(description="The file, relative to the source's path.")


class ObjectFilesSource(WireModel):
    """The keys of a ConfigMap or Secret in the session's namespace, one file per key."""

    name: ObjectName = Field(description="Name of the object.")
    items: list[KeyToPath] | None = Field(
        default=None,
        max_length=ITEMS_MAX,
        description="Only these keys, to these files. Omitted: every key, as a file of its name.",
        json_schema_extra=LIST_ATOMIC,
    )


class InlineFile(RuledModel):
    """A small file written from the spec."""

    cel_rules = (no_escape_rule("path", "path", "inline.files[].path"),)

    path: RelativePath = Field(description="The file, relative to the source's path.")
    content: str = Field(
        max_length=INLINE_FILE_MAX_LENGTH, description="Its text (UTF-8), at most 64 KiB."
    )


class InlineSource(WireModel):
    """Files whose content is in the spec (bounded: they travel in the runner pod)."""

    files: list[InlineFile] = Field(
        min_length=1,
        max_length=INLINE_FILES_MAX,
        description=(
            "The files. Their contents count towards the 200,000 characters of text one spec "
            "may carry (with the prompts)."
        ),
        json_schema_extra=LIST_ATOMIC,
    )


class FromSessionSource(RuledModel):
    """The workspace another AgentSession left in the store (its last snapshot)."""

    cel_rules = (no_escape_rule("path", "path", "fromSession.path", optional=True),)

    name: ObjectName = Field(
        description=(
            "An AgentSession in this namespace. The operator waits until it has finished, then "
            "restores its last workspace snapshot."
        )
    )
    path: RelativePath | None = Field(
        default=None,
        description="Only this directory of its workspace. Omitted: all of it.",
    )


class WorkspaceSource(RuledModel):
    """One input of the workspace: where it goes, and exactly one of what it is."""

    cel_rules = (
        Rule(
            cel=(
                "[has(self.git), has(self.configMap), has(self.secret), has(self.inline),"
                " has(self.fromSession)].filter(x, x).size() == 1"
            ),
            message="a source sets exactly one of git, configMap, secret, inline or fromSession",
            reason="FieldValueRequired",
            holds=lambda s: (
                sum(
                    x is not None for x in (s.git, s.config_map, s.secret, s.inline, s.from_session)
                )
                == 1
            ),
        ),
        no_escape_rule("path", "path", "sources[].path"),
    )

    name: SourceName = Field(
        description="The source's name (a DNS label): status and spec.outputs.git refer to it."
    )
    path: RelativePath = Field(
        description=(
            "Where in the workspace it goes, relative to `/workspace` (`.` is the workspace "
            "itself); never absolute, never with `..`."
        )
    )
    git: GitSource | None = Field(default=None, description="Clone a git repository.")
    config_map: ObjectFilesSource | None = Field(
        default=None, description="The keys of a ConfigMap in the session's namespace, as files."
    )
    secret: ObjectFilesSource | None = Field(
        default=None,
        description=(
            "The keys of a Secret in the session's namespace, as files the agent can read "
            "(the API key Secret and the operator's own Secrets are refused)."
        ),
    )
    inline: InlineSource | None = Field(default=None, description="Files written from the spec.")
    from_session: FromSessionSource | None = Field(
        default=None, description="Another finished AgentSession's workspace."
    )

    @property
    def kind(self) -> str:
        """Which of the source kinds it is (its wire name)."""
        for kind, value in zip(
            SOURCE_KINDS,
            (self.git, self.config_map, self.secret, self.inline, self.from_session),
            strict=True,
        ):
            if value is not None:
                return kind
        raise AssertionError("a source has exactly one kind")


class SnapshotSpec(WireModel):
    """How the workspace is kept in the store between attempts and for follow-up sessions."""

    enabled: StrictBool = Field(
        default=True,
        description=(
            "Snapshot the workspace at the end of every attempt and on SIGTERM, and restore it "
            "before the next attempt (and before a session that resumes this one)."
        ),
    )
    max_bytes: Quantity | None = Field(
        default=None,
        description=(
            "Largest workspace to snapshot, e.g. `500Mi`: a larger one is not snapshotted (the "
            "previous snapshot stays) and status.workspace.snapshot says so. Omitted: the "
            "operator's maximum, which also caps it."
        ),
    )
    exclude: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] | None = Field(
        default=None,
        max_length=EXCLUDE_MAX,
        description=(
            "Paths left out of snapshots, in .gitignore syntax (`node_modules/`, `*.log`, "
            "`/build`)."
        ),
        json_schema_extra=LIST_ATOMIC,
    )


class WorkspaceSpec(RuledModel):
    """What `/workspace` starts with, and how it is kept."""

    cel_rules = (
        Rule(
            cel=(
                "!has(self.sources)"
                " || self.sources.all(s, self.sources.exists_one(t, t.path == s.path))"
            ),
            message="workspace.sources[].path must differ between sources",
            field_path=".sources",
            reason="FieldValueInvalid",
            holds=lambda s: len({x.path for x in s.sources or []}) == len(s.sources or []),
        ),
    )

    sources: list[WorkspaceSource] | None = Field(
        default=None,
        max_length=SOURCES_MAX,
        description=(
            "Inputs fetched into the workspace, in order, by the pod's init step before the "
            "agent starts (its credentials never reach the agent's container). Only the first "
            "attempt fetches them: later attempts restore the workspace's snapshot."
        ),
        json_schema_extra=list_map("name"),
    )
    snapshot: SnapshotSpec | None = Field(
        default=None,
        description="Continuity across attempts and follow-up sessions. Omitted: on, defaults.",
    )


class ArtifactSpec(RuledModel):
    """Files kept in the store when the session ends (named, like Argo's output artifacts)."""

    cel_rules = (no_escape_rule("path", "path", "artifacts[].path"),)

    name: SourceName = Field(description="The artifact's name (a DNS label).")
    path: RelativePath = Field(
        description=(
            "A file, a directory or a glob (`out/*.md`, `reports/**/*.json`), relative to the "
            "workspace. Symlinks are never followed."
        )
    )


class GitAuthor(WireModel):
    """The author and committer of a pushed commit."""

    name: str = Field(min_length=1, max_length=256, pattern=r"^[^<>\n]+$", description="Name.")
    email: str = Field(
        min_length=3, max_length=256, pattern=r"^[^<>\s]+@[^<>\s]+$", description="Email."
    )


class GitPush(WireModel):
    """Commit the source's working tree as the agent left it, and push it to a branch."""

    branch: str = Field(
        default=DEFAULT_BRANCH_TEMPLATE,
        min_length=1,
        max_length=BRANCH_TEMPLATE_MAX_LENGTH,
        pattern=BRANCH_TEMPLATE_PATTERN,
        description=(
            "The branch, a template: `{{ .session }}` (the AgentSession's name), "
            "`{{ .namespace }}` and `{{ .sessionId }}` are replaced. Default "
            "`agent/{{ .session }}`. A branch that exists is updated only if this session "
            "pushed it (a fast-forward); otherwise the push is refused and status says why."
        ),
    )
    author: GitAuthor | None = Field(
        default=None,
        description="Author and committer. Omitted: `AgentSession <session>`, `agent@agents.dev`.",
    )
    message: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="The commit message. Omitted: one naming the AgentSession.",
    )


class GitOutput(WireModel):
    """What happens to a git source when the session ends."""

    source: SourceName = Field(description="A git source of spec.workspace.sources, by name.")
    push: GitPush = Field(description="Push its changes to a branch.")


class OutputsSpec(WireModel):
    """What the session leaves behind besides its transcript and result."""

    artifacts: list[ArtifactSpec] | None = Field(
        default=None,
        max_length=ARTIFACTS_MAX,
        description=(
            "Files uploaded to the store when the session's run ends; status.outputs.artifacts "
            "lists each with its URI, size and sha256."
        ),
        json_schema_extra=list_map("name"),
    )
    git: list[GitOutput] | None = Field(
        default=None,
        max_length=GIT_OUTPUTS_MAX,
        description=(
            "Git sources whose changes are committed and pushed with the source's credentials "
            "when the session's run ends; a failed push keeps the work in the snapshot."
        ),
        json_schema_extra=list_map("source"),
    )


# ---- status ---------------------------------------------------------------------------------

SourceResult = Literal["Fetched", "Restored", "Failed"]
STATUS_MESSAGE_MAX_LENGTH: Final = 1024
SHA256_PATTERN: Final = r"^[0-9a-f]{64}$"
COMMIT_PATTERN: Final = r"^[0-9a-f]{40}([0-9a-f]{24})?$"
STATUS_ARTIFACTS_MAX: Final = 100
REF_MAX_LENGTH: Final = 2048


class SourceStatus(WireModel):
    """How one source was fetched."""

    name: str = Field(max_length=DNS_LABEL_MAX_LENGTH, description="The source's name.")
    path: str = Field(max_length=PATH_MAX_LENGTH, description="Where it went in the workspace.")
    result: SourceResult = Field(
        description=(
            "`Fetched` (the first attempt fetched it), `Restored` (its files came back from a "
            "snapshot) or `Failed` (see message)."
        )
    )
    commit: str | None = Field(
        default=None,
        pattern=COMMIT_PATTERN,
        max_length=64,
        description="For a git source: the commit its ref resolved to.",
    )
    message: str | None = Field(
        default=None, max_length=STATUS_MESSAGE_MAX_LENGTH, description="Detail or the error."
    )


class SnapshotStatus(WireModel):
    """The last snapshot of the workspace in the store."""

    uri: str | None = Field(
        default=None, max_length=REF_MAX_LENGTH, description="Where the snapshots are."
    )
    files: int | None = Field(default=None, ge=0, description="Files in the last snapshot.")
    bytes: int | None = Field(default=None, ge=0, description="Their total size.")
    uploaded_bytes: int | None = Field(
        default=None, ge=0, description="What the last snapshot uploaded (only changed files)."
    )
    message: str | None = Field(
        default=None,
        max_length=STATUS_MESSAGE_MAX_LENGTH,
        description=(
            "Warnings: paths skipped (symlinks out of the workspace), a size over maxBytes."
        ),
    )


class WorkspaceStatus(WireModel):
    """What the workspace was made of, and where it is kept."""

    sources: list[SourceStatus] | None = Field(
        default=None,
        max_length=SOURCES_MAX,
        description="Each source of spec.workspace.sources, once fetched (or failed).",
        json_schema_extra=list_map("name"),
    )
    snapshot: SnapshotStatus | None = Field(default=None, description="The last snapshot.")


class ArtifactStatus(WireModel):
    """One file of an artifact, as stored."""

    name: str = Field(max_length=DNS_LABEL_MAX_LENGTH, description="The artifact's name.")
    path: str = Field(
        max_length=PATH_MAX_LENGTH, description="The file, relative to the workspace."
    )
    uri: str = Field(max_length=REF_MAX_LENGTH, description="Where it is in the store.")
    size: int = Field(ge=0, description="Bytes.")
    sha256: str = Field(pattern=SHA256_PATTERN, max_length=64, description="Its SHA-256, in hex.")


class GitPushStatus(WireModel):
    """The push of one git source's changes."""

    source: str = Field(max_length=DNS_LABEL_MAX_LENGTH, description="The git source.")
    branch: str | None = Field(default=None, max_length=256, description="The branch pushed to.")
    commit: str | None = Field(
        default=None, pattern=COMMIT_PATTERN, max_length=64, description="The commit made."
    )
    pushed: bool = Field(description="Whether the branch now points at the commit.")
    message: str | None = Field(
        default=None,
        max_length=STATUS_MESSAGE_MAX_LENGTH,
        description="Why it was not pushed (no changes, the branch is someone else's, an error).",
    )


class OutputsStatus(WireModel):
    """What the session left behind (from its session gateway, which stored or pushed it)."""

    artifacts: list[ArtifactStatus] | None = Field(
        default=None,
        max_length=STATUS_ARTIFACTS_MAX,
        description="Every file of spec.outputs.artifacts, as stored.",
        json_schema_extra=LIST_ATOMIC,
    )
    git: list[GitPushStatus] | None = Field(
        default=None,
        max_length=GIT_OUTPUTS_MAX,
        description="Each push of spec.outputs.git.",
        json_schema_extra=list_map("source"),
    )
    message: str | None = Field(
        default=None,
        max_length=STATUS_MESSAGE_MAX_LENGTH,
        description="Artifact paths that matched nothing, files not listed (too many), ...",
    )
