#!/usr/bin/env python3
"""Builds the operator and runner images on any machine, and imports them into a containerd.

Called by `make images`, by the local node (tests/support/node.py) before pods run, and by the
demo. Standard library only: it runs before any virtualenv exists.

- With a Docker engine that answers, `docker build` on the pinned official Python base.
- Without one, buildah/podman (Debian packages, installed when missing and we are root) on a
  Python base made from Debian packages with mmdebstrap. That base may carry the host's extra CA
  certificates (an intercepting proxy's), so every image built on it is tagged `-local` and must
  never be pushed; releases are built by .github/workflows/release.yaml from the official base.
- Builds are cached by their inputs (Dockerfile, pyproject.toml, uv.lock, sources, base image):
  each image carries the inputs' hash as a label, and an image whose label matches is not
  rebuilt. Imports into containerd are skipped the same way.

Usage:
  hack/images.py build [--engine auto|docker|buildah] [--base official|local]
  hack/images.py import --address SOCKET [--namespace k8s.io]   # the images `build` made
  hack/images.py pause --binary PATH --address SOCKET             # the pod sandbox image
The last line `build` prints is JSON: {"runner": ref, "operator": ref, "engine": ..., ...}.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("AGENTSESSION_CACHE", Path.home() / ".cache" / "agentsession-operator"))
CONTAINERS = CACHE / "containers"
INPUTS_LABEL = "dev.agentsession.inputs"
SOURCE_URL = "https://github.com/agentsession/agentsession-operator"
DEFAULT_REGISTRY = "ghcr.io/agentsession"
LOCAL_REGISTRY = "localhost"
# runc explicitly: podman pulls in crun, which refuses this machine's hybrid cgroup layout.
BUILD_PACKAGES = [
    "buildah",
    "podman",
    "runc",
    "mmdebstrap",
    "fuse-overlayfs",
    "golang-github-containers-common",
]
# The Debian base: what the Dockerfiles expect of the official python image (`python` on PATH,
# venv, useradd) and nothing more. Bump BASE_RECIPE when the way it is made changes.
BASE_SUITE = "bookworm"
BASE_PACKAGES = [
    "python3.11",
    "python3.11-venv",
    "python-is-python3",
    "ca-certificates",
    "passwd",
    "netbase",
    "tzdata",
]
BASE_RECIPE = 1
HOST_EXTRA_CAS = Path("/usr/local/share/ca-certificates")


@dataclass(frozen=True)
class Image:
    """One project image: its Dockerfile, and the repository paths it reads."""

    name: str
    dockerfile: str
    inputs: tuple[str, ...] = (
        "pyproject.toml",
        "uv.lock",
        "contract/src",
        "operator/src",
        "runner-image/src",
        "gateway/src",
    )


IMAGES = (
    Image("agentsession-runner", "runner-image/Dockerfile"),
    Image("agentsession-operator", "operator/Dockerfile"),
)


def log(message: str) -> None:
    print(f">> {message} ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    print(f"!! {message}", file=sys.stderr)
    raise SystemExit(1)


def run(
    argv: list[str], *, env: dict[str, str] | None = None, capture: bool = False, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv,
        env=env,
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE if capture else sys.stderr,
        stderr=subprocess.PIPE if capture else None,
        check=False,
    )
    if check and result.returncode != 0:
        detail = f": {result.stderr.strip()[-2000:]}" if capture and result.stderr else ""
        fail(f"{' '.join(argv[:4])} ... failed with exit code {result.returncode}{detail}")
    return result


def ensure_packages(packages: list[str]) -> None:
    script = REPO / "hack" / "ensure-packages.sh"
    if subprocess.run([str(script), *packages], check=False).returncode != 0:
        raise SystemExit(1)


def project_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def input_files(image: Image) -> list[Path]:
    files: list[Path] = [REPO / image.dockerfile, REPO / ".dockerignore"]
    for entry in image.inputs:
        path = REPO / entry
        if path.is_file():
            files.append(path)
            continue
        for found in sorted(path.rglob("*")):
            if found.is_file() and "__pycache__" not in found.parts and found.suffix != ".pyc":
                files.append(found)
    return files


def revision(paths: list[Path]) -> str:
    """The last commit that changed these paths, `-dirty` if they differ from it; else unknown."""
    relative = [str(p.relative_to(REPO)) for p in paths]
    found = subprocess.run(
        ["git", "log", "-1", "--format=%H", "--", *relative],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    commit = found.stdout.strip()
    if found.returncode != 0 or not commit:
        return "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", *relative],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{commit}-dirty" if dirty else commit


def digest(parts: list[bytes]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()


# ---- engines ------------------------------------------------------------------------------------


class Engine:
    """docker or buildah/podman: build, look up a label, save an image for containerd."""

    name = ""

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def label(self, ref: str, key: str) -> str | None:
        raise NotImplementedError

    def image_id(self, ref: str) -> str | None:
        raise NotImplementedError

    def build(self, dockerfile: str, ref: str, build_args: dict[str, str], label: str) -> None:
        raise NotImplementedError

    def save(self, ref: str, target: Path) -> None:
        raise NotImplementedError

    def import_rootfs(self, tar: Path, ref: str, changes: list[str]) -> None:
        raise NotImplementedError


class Docker(Engine):
    name = "docker"

    def _inspect(self, ref: str, template: str) -> str | None:
        result = run(
            ["docker", "image", "inspect", "--format", template, ref], capture=True, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else None

    def label(self, ref: str, key: str) -> str | None:
        value = self._inspect(ref, f'{{{{index .Config.Labels "{key}"}}}}')
        return value or None

    def image_id(self, ref: str) -> str | None:
        return self._inspect(ref, "{{.Id}}")

    def build(self, dockerfile: str, ref: str, build_args: dict[str, str], label: str) -> None:
        argv = ["docker", "build", "-f", dockerfile, "-t", ref, "--label", label]
        for key, value in build_args.items():
            argv += ["--build-arg", f"{key}={value}"]
        run([*argv, "."], env={**os.environ, "DOCKER_BUILDKIT": "1"})

    def save(self, ref: str, target: Path) -> None:
        run(["docker", "save", "-o", str(target), ref])

    def import_rootfs(self, tar: Path, ref: str, changes: list[str]) -> None:
        argv = ["docker", "import"]
        for change in changes:
            argv += ["--change", change]
        run([*argv, str(tar), ref])


class Buildah(Engine):
    """buildah builds, podman looks up and saves; both on our own storage and settings."""

    name = "buildah"

    def __init__(self) -> None:
        CONTAINERS.mkdir(parents=True, exist_ok=True)
        storage = CONTAINERS / "storage.conf"
        storage.write_text(
            "# Written by hack/images.py: the project's own image storage.\n"
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{CONTAINERS / "storage"}"\n'
            'runroot = "/run/agentsession-containers"\n'
        )
        settings = CONTAINERS / "containers.conf"
        # crun refuses this machine's hybrid cgroup layout; root here may lack CAP_SYS_RESOURCE,
        # so build containers keep limits they can set; builds use the host's network.
        settings.write_text(
            "# Written by hack/images.py.\n"
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            'netns = "host"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
        )
        self._env = {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(storage),
            "CONTAINERS_CONF": str(settings),
        }

    def env(self) -> dict[str, str]:
        return self._env

    def _inspect(self, ref: str, template: str) -> str | None:
        result = run(
            ["podman", "image", "inspect", "--format", template, ref],
            env=self._env,
            capture=True,
            check=False,
        )
        return result.stdout.strip() if result.returncode == 0 else None

    def label(self, ref: str, key: str) -> str | None:
        value = self._inspect(ref, f'{{{{index .Labels "{key}"}}}}')
        return value if value and value != "<no value>" else None

    def image_id(self, ref: str) -> str | None:
        return self._inspect(ref, "{{.Id}}")

    def build(self, dockerfile: str, ref: str, build_args: dict[str, str], label: str) -> None:
        argv = [
            "buildah",
            "bud",
            "--layers",
            "--force-rm",  # a failed step leaves no working container (nor its mount) behind
            "--network=host",
            "--pull=false",
            "-f",
            dockerfile,
            "-t",
            ref,
            "--label",
            label,
        ]
        for key, value in build_args.items():
            argv += ["--build-arg", f"{key}={value}"]
        run([*argv, "."], env=self._env)
        # Intermediate images of superseded builds; the layer cache of the current one stays.
        run(["podman", "image", "prune", "-f"], env=self._env, capture=True, check=False)

    def save(self, ref: str, target: Path) -> None:
        run(["podman", "save", "--format", "docker-archive", "-o", str(target), ref], env=self._env)

    def import_rootfs(self, tar: Path, ref: str, changes: list[str]) -> None:
        argv = ["podman", "import"]
        for change in changes:
            argv += ["--change", change]
        run([*argv, str(tar), ref], env=self._env, capture=True)


def docker_usable() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def pick_engine(choice: str) -> Engine:
    if choice == "docker" or (choice == "auto" and docker_usable()):
        if not docker_usable():
            fail("--engine docker: no Docker engine answers `docker info`")
        return Docker()
    if os.geteuid() != 0:
        fail(
            "no Docker engine answers, and building with buildah here needs root "
            "(its storage and the mmdebstrap base); run as root or with Docker"
        )
    ensure_packages(BUILD_PACKAGES)
    return Buildah()


# ---- the local Debian base -----------------------------------------------------------------------


def host_cas() -> list[Path]:
    return sorted(HOST_EXTRA_CAS.glob("*.crt")) if HOST_EXTRA_CAS.is_dir() else []


def local_base(engine: Engine) -> str:
    """The Debian-made Python base (built once per recipe and CA set); returns its reference."""
    cas = host_cas()
    key = digest(
        [
            json.dumps([BASE_SUITE, BASE_PACKAGES, BASE_RECIPE]).encode(),
            *[ca.name.encode() + ca.read_bytes() for ca in cas],
        ]
    )
    ref = f"{LOCAL_REGISTRY}/agentsession-python-base:{BASE_SUITE}-py3.11-{key[:12]}-local"
    if engine.image_id(ref):
        return ref
    ensure_packages(["mmdebstrap"])
    log(f"Making the Debian base {ref} with mmdebstrap ({len(cas)} host CA certificate(s))")
    with tempfile.TemporaryDirectory(prefix="agentsession-base-") as scratch:
        rootfs = Path(scratch) / "base.tar"
        argv = [
            "mmdebstrap",
            "--variant=minbase",
            "--quiet",
            f"--include={','.join(BASE_PACKAGES)}",
            # Slim like the official image: no docs, man pages or apt lists in the base.
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin',
        ]
        for ca in cas:
            argv.append(f"--customize-hook=copy-in {ca} /usr/local/share/ca-certificates/")
        if cas:
            argv.append('--customize-hook=chroot "$1" update-ca-certificates')
        run([*argv, BASE_SUITE, str(rootfs)])
        engine.import_rootfs(
            rootfs,
            ref,
            [
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                'CMD ["python3"]',
            ],
        )
    return ref


# ---- build ---------------------------------------------------------------------------------------


def refs(base_kind: str) -> dict[str, str]:
    """The references `build` produces (and `import` loads), by image name."""
    version = project_version()
    if base_kind == "local":
        registry, tag = LOCAL_REGISTRY, f"{version}-local"
    else:
        registry = os.environ.get("IMAGE_REGISTRY", DEFAULT_REGISTRY)
        tag = os.environ.get("IMAGE_TAG", "dev")
    return {image.name: f"{registry}/{image.name}:{tag}" for image in IMAGES}


def build(engine: Engine, base_kind: str) -> dict[str, object]:
    base_arg: dict[str, str] = {}
    base_id = "official"
    if base_kind == "local":
        base_ref = local_base(engine)
        base_arg = {"PYTHON_IMAGE": base_ref}
        base_id = engine.image_id(base_ref) or base_ref
    targets = refs(base_kind)
    version = project_version()
    built: dict[str, object] = {}
    for image in IMAGES:
        ref = targets[image.name]
        files = input_files(image)
        rev = revision(files)
        build_args = {**base_arg, "VERSION": version, "REVISION": rev, "SOURCE": SOURCE_URL}
        key = digest(
            [
                json.dumps([base_id, build_args]).encode(),
                *[str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() for f in files],
            ]
        )
        if engine.label(ref, INPUTS_LABEL) == key:
            log(f"{ref} is up to date")
        else:
            started = time.monotonic()
            log(f"Building {ref} with {engine.name} (revision {rev[:12]})")
            engine.build(image.dockerfile, ref, build_args, f"{INPUTS_LABEL}={key}")
            log(f"Built {ref} in {time.monotonic() - started:.0f}s")
        built[image.name] = ref
        built[f"{image.name}.inputs"] = key
    built["engine"] = engine.name
    built["local"] = base_kind == "local"
    return built


# ---- containerd ----------------------------------------------------------------------------------


def ctr(address: str, namespace: str, *args: str, capture: bool = True) -> str:
    result = run(["ctr", "--address", address, "--namespace", namespace, *args], capture=capture)
    return result.stdout or ""


def containerd_label(address: str, namespace: str, ref: str) -> str | None:
    """The inputs label containerd holds for `ref`, or None if it lacks the image."""
    listing = ctr(address, namespace, "images", "list", f"name=={ref}")
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == ref:
            for label in fields[-1].split(","):
                name, _, value = label.partition("=")
                if name == INPUTS_LABEL:
                    return value
            return ""
    return None


def import_image(engine: Engine, address: str, namespace: str, ref: str, key: str) -> None:
    if containerd_label(address, namespace, ref) == key:
        log(f"containerd already has {ref}")
        return
    started = time.monotonic()
    log(f"Importing {ref} into containerd")
    with tempfile.TemporaryDirectory(prefix="agentsession-import-") as scratch:
        archive = Path(scratch) / "image.tar"
        engine.save(ref, archive)
        ctr(address, namespace, "images", "import", "--snapshotter", "overlayfs", str(archive))
    ctr(address, namespace, "images", "label", ref, f"{INPUTS_LABEL}={key}")
    log(f"Imported {ref} in {time.monotonic() - started:.0f}s")


def pause_image(engine: Engine, binary: Path, version: str) -> tuple[str, str]:
    """An image holding only Kubernetes' pause binary (the pod sandbox); returns (ref, key)."""
    key = digest([binary.read_bytes()])
    ref = f"{LOCAL_REGISTRY}/agentsession-pause:{version}"
    if engine.label(ref, INPUTS_LABEL) == key:
        return ref, key
    with tempfile.TemporaryDirectory(prefix="agentsession-pause-") as scratch:
        rootfs = Path(scratch) / "pause.tar"
        with tarfile.open(rootfs, "w") as tar:
            info = tar.gettarinfo(str(binary), arcname="pause")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755
            with open(binary, "rb") as handle:
                tar.addfile(info, handle)
        engine.import_rootfs(
            rootfs,
            ref,
            ['ENTRYPOINT ["/pause"]', "USER 65535:65535", f"LABEL {INPUTS_LABEL}={key}"],
        )
    return ref, key


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="build both images (cached by inputs)")
    import_cmd = sub.add_parser("import", help="build if needed, then import into containerd")
    pause_cmd = sub.add_parser("pause", help="make and import the pause (sandbox) image")
    for command in (build_cmd, import_cmd, pause_cmd):
        command.add_argument(
            "--engine",
            choices=["auto", "docker", "buildah"],
            default=os.environ.get("ENGINE", "auto"),
        )
    for command in (build_cmd, import_cmd):
        command.add_argument(
            "--base",
            choices=["auto", "official", "local"],
            default=os.environ.get("BASE", "auto"),
            help="auto: official with docker, local (mmdebstrap) with buildah",
        )
    for command in (import_cmd, pause_cmd):
        command.add_argument("--address", required=True, help="containerd socket")
        command.add_argument("--namespace", default="k8s.io")
    pause_cmd.add_argument("--binary", type=Path, required=True)
    pause_cmd.add_argument("--version", default="3.10")
    args = parser.parse_args()

    # One build at a time per cache (make and pytest may both start one).
    CACHE.mkdir(parents=True, exist_ok=True)
    lock = open(CACHE / "images.lock", "w")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("another image build is running; waiting for it")
        fcntl.flock(lock, fcntl.LOCK_EX)
    engine = pick_engine(args.engine)
    if args.command == "pause":
        ref, key = pause_image(engine, args.binary, args.version)
        import_image(engine, args.address, args.namespace, ref, key)
        print(json.dumps({"pause": ref}))
        return 0
    base_kind = args.base
    if base_kind == "auto":
        base_kind = "official" if engine.name == "docker" else "local"
    built = build(engine, base_kind)
    if args.command == "import":
        for image in IMAGES:
            ref, key = str(built[image.name]), str(built[f"{image.name}.inputs"])
            import_image(engine, args.address, args.namespace, ref, key)
    print(json.dumps({k: v for k, v in built.items() if not k.endswith(".inputs")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
