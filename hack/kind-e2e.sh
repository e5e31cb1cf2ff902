#!/usr/bin/env bash
# `make kind-e2e`: the install path on a real kind cluster, for machines with Docker (and CI).
# Builds both images, loads them into kind, helm-installs the chart, validates every example
# server-side, runs examples/hello.yaml to condition Succeeded and checks that an image outside the
# allowlist is refused. S3 (moto) and, without ANTHROPIC_API_KEY, the scripted Messages API run on
# the host; pods reach them through the kind network's gateway. Not run by our own CI (no Docker).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-agentsession-e2e}
REGISTRY=${IMAGE_REGISTRY:-local}
TAG=${IMAGE_TAG:-e2e}
PY=.venv/bin/python
NS=agentsession-system
AGENTS=agents
API_PORT=${API_PORT:-8089}

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "kind-e2e needs $tool on PATH" >&2; exit 1; }
done

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -z "${KEEP:-}" ]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

echo ">> kind cluster $CLUSTER"
kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
kubectl config use-context "kind-$CLUSTER" >/dev/null

echo ">> images"
make images IMAGE_REGISTRY="$REGISTRY" IMAGE_TAG="$TAG"
kind load docker-image --name "$CLUSTER" \
  "$REGISTRY/agentsession-operator:$TAG" "$REGISTRY/agentsession-runner:$TAG"

HOST_IP=$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 '\.')
echo ">> S3 (moto, IAM enforced, a store role for namespace $AGENTS) on $HOST_IP"
STORE_FACTS=$(mktemp)
"$PY" -m tests.support.s3server tenant-store --bucket agentsessions --provision "$AGENTS" \
  --write "$STORE_FACTS" >/tmp/kind-e2e-moto.log 2>&1 & pids+=($!)
for _ in $(seq 120); do [ -s "$STORE_FACTS" ] && break; sleep 0.5; done
fact() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$STORE_FACTS" "$1"; }
S3_URL="http://$HOST_IP:$(fact port)"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic agentsession-operator-aws \
  --from-literal=AWS_ACCESS_KEY_ID="$(fact AWS_ACCESS_KEY_ID)" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$(fact AWS_SECRET_ACCESS_KEY)" \
  --dry-run=client -o yaml | kubectl apply -f -

api_args=()
if [ -z "${ANTHROPIC_API_KEY:-}" ]; then
  echo ">> no ANTHROPIC_API_KEY: scripted Messages API on $HOST_IP:$API_PORT"
  "$PY" -m tests.support.scripted_api --host 0.0.0.0 --port "$API_PORT" \
    --reply "Hello, Hola, Bonjour, Hallo, Ciao." >/tmp/kind-e2e-api.log 2>&1 & pids+=($!)
  api_args=(--set "anthropic.baseUrl=http://$HOST_IP:$API_PORT" --set runner.defaultModel=claude-sonnet-4-5
    --set-json "networkPolicy.runners.anthropic.to=[{\"ipBlock\":{\"cidr\":\"$HOST_IP/32\"}}]"
    --set-json "networkPolicy.runners.anthropic.ports=[{\"port\":$API_PORT}]")
fi

echo ">> helm install"
helm upgrade --install agentsession-operator charts/agentsession-operator \
  --namespace "$NS" --wait --timeout 5m \
  --set image.repository="$REGISTRY/agentsession-operator" --set image.tag="$TAG" \
  --set image.pullPolicy=Never \
  --set runner.image="$REGISTRY/agentsession-runner:$TAG" \
  --set store.url=s3://agentsessions/agents \
  --set store.s3.endpointUrl="$S3_URL" --set store.s3.region=us-east-1 \
  --set store.credentials.roleArn="$(fact roleArn)" --set store.credentials.stsEndpointUrl="$S3_URL" \
  --set store.credentials.operatorSecret=agentsession-operator-aws \
  --set limits.maxBudgetUsd.default=0.25 \
  --set-json "networkPolicy.runners.s3.to=[{\"ipBlock\":{\"cidr\":\"$HOST_IP/32\"}}]" \
  --set-json "networkPolicy.runners.s3.ports=[{\"port\":$(fact port)}]" \
  "${api_args[@]}"

echo ">> a namespace for sessions (Pod Security restricted) with its API-key Secret"
kubectl create namespace "$AGENTS" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$AGENTS" pod-security.kubernetes.io/enforce=restricted --overwrite
kubectl -n "$AGENTS" create secret generic anthropic-api-key \
  --from-literal=ANTHROPIC_API_KEY="${ANTHROPIC_API_KEY:-sk-ant-offline-not-a-key}" \
  --dry-run=client -o yaml | kubectl apply -f -

echo ">> every example passes server-side validation"
for example in examples/*.yaml; do kubectl apply --dry-run=server -n "$AGENTS" -f "$example" >/dev/null; done

echo ">> examples/hello.yaml runs to Succeeded"
kubectl apply -n "$AGENTS" -f examples/hello.yaml
kubectl wait -n "$AGENTS" --for=condition=Succeeded agentsession/hello --timeout=300s
kubectl get ags -n "$AGENTS"

echo ">> an image outside the allowlist is refused"
kubectl apply -n "$AGENTS" -f examples/image-override.yaml
kubectl wait -n "$AGENTS" --for=condition=Succeeded=False agentsession/image-override --timeout=120s
kubectl get ags -n "$AGENTS" image-override -o jsonpath='{.status.reason}{": "}{.status.message}{"\n"}'
echo ">> kind e2e passed"
