"""End to end: a hostile agent attacks its own pod and gets nothing it may not have.

Each attack is a scripted Bash tool call the "model" makes inside a real session on the real node;
the scripted API records the tool result, so the test reads exactly what the agent saw. The agent
container holds no credential of ours (the gateway sidecar does, under another UID), the gateway
confines its store access to its own session, the operator charges limits and cost from the
gateway's report whatever the agent writes or kills, and the budget holds at the wire.
"""

from __future__ import annotations

import base64
import json
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from kubernetes import client

from agentsession_contract.gateway import CONFIG_ANNOTATION
from agentsession_contract.run import decode_run_config
from agentsession_gateway.metering import TokenUsage, price
from agentsession_operator.reconcile.observed import GATEWAY_CONTAINER, RUNNER_CONTAINER
from agentsession_operator.reconcile.podspec import store_secret_name
from tests.e2e.conftest import Sessions, TranscriptLoader, gate_command, marker, open_gate
from tests.support import scripted_api as sa
from tests.support.cluster import LocalCluster, wait_for
from tests.support.node import LocalNode
from tests.support.operator_process import OperatorProcess
from tests.support.runner_harness import TEST_API_KEY
from tests.support.s3server import REGION, TenantStore
from tests.support.session_secrets import add_session_secrets

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]

MODEL = "claude-sonnet-4-5"
EXPENSIVE_INPUT_TOKENS = 100_000
# What one scripted reply with EXPENSIVE_INPUT_TOKENS costs (its 5 output tokens included).
EXPENSIVE_USD = price(
    TokenUsage(input_tokens=EXPENSIVE_INPUT_TOKENS, output_tokens=5), MODEL
).cost_usd
CHEAP_USD = price(TokenUsage(input_tokens=10, output_tokens=5), MODEL).cost_usd

# Kills the CLI (the runner's child) from its own Bash tool. The pattern is assembled at run time
# so the shell running this loop does not match it and kill itself first.
KILL_THE_CLI = (
    "n=bundled; for p in /proc/[0-9]*; do "
    'case "$(tr "\\0" " " < $p/cmdline 2>/dev/null)" in '
    '*_${n}/claude*) kill -9 "${p#/proc/}";; esac; done; sleep 30'
)

# Searches everything the agent can read for the values listed in a patterns file: its
# environment and every visible process's environment and command line, and every file. Prints
# counts and paths only, never a matched value.
SEARCH_SCRIPT = textwrap.dedent(
    """\
    search() {
      label=$1; patterns=$2
      n=$( { env; for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do
               tr '\\0' '\\n' < "$f"; echo; done; } 2>/dev/null | grep -cF -f "$patterns")
      echo "$label env $n"
      for d in /*; do
        case "$d" in /proc|/sys) ;; *) grep -rlsF --devices=skip -f "$patterns" "$d" ;; esac
      done | grep -vxF -e /workspace/secrets -e /workspace/canaries | sed "s|^|$label file |"
    }
    search SECRETS /workspace/secrets
    search CANARIES /workspace/canaries
    python3 /workspace/attack.py
    echo ATTACK-DONE
    """
)

# The store and S3 attacks, run by the agent's Bash tool with the facts the test hands it.
ATTACK_SCRIPT = textwrap.dedent(
    """\
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    import boto3
    import botocore.exceptions

    facts = json.load(open("/workspace/facts.json"))
    endpoint = json.load(open("/run/agentsession/gateway/endpoint.json"))
    base = f"http://127.0.0.1:{endpoint['port']}/v1/store/"


    def call(label, method, path, query, body=None, token=endpoint["token"]):
        url = base + path + "?" + urllib.parse.urlencode(query)
        headers = {"x-api-key": token} if token else {}
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                print("STORE", label, response.status)
                return response.read()
        except urllib.error.HTTPError as error:
            print("STORE", label, error.code)
            return b""


    own, victim = facts["own_session"], facts["victim_session"]
    call("own-list", "GET", "list", {"prefix": f"sessions/{own}/", "recursive": "1"})
    call("no-token", "GET", "list", {"prefix": f"sessions/{own}/"}, token=None)
    call("victim-read", "GET", "object", {"key": facts["victim_key"]})
    call("victim-list", "GET", "list", {"prefix": f"sessions/{victim}/", "recursive": "1"})
    call("victim-write", "PUT", "object", {"key": f"sessions/{victim}/main/9-forged.jsonl"}, b"{}")
    doomed = json.dumps({"keys": [facts["victim_key"]]}).encode()
    call("victim-delete", "POST", "delete", {}, doomed)
    call("other-namespace-read", "GET", "object", {"key": facts["other_namespace_key"]})
    call("report-forge", "PUT", "object", {"key": f"sessions/{own}/gateway/forged.json"}, b"{}")
    listing = call("project-list", "GET", "list", {"prefix": "sessions/"})
    print("STORE project-list-shows-victim", victim.encode() in listing)

    s3 = boto3.client("s3", endpoint_url=facts["s3_endpoint"], region_name=facts["region"])
    try:
        s3.list_objects_v2(Bucket=facts["bucket"])
        print("S3 boto3 listed")
    except botocore.exceptions.NoCredentialsError:
        print("S3 boto3 NoCredentialsError")
    except Exception as error:
        print("S3 boto3", type(error).__name__)
    try:
        urllib.request.urlopen(f"{facts['s3_endpoint']}/{facts['bucket']}?list-type=2", timeout=10)
        print("S3 unsigned 200")
    except urllib.error.HTTPError as error:
        print("S3 unsigned", error.code)
    """
)


def tool_output(scripted_api: sa.ScriptedAPI, tag: str, last_line: str) -> str:
    """What the agent's tool printed: the tool result in the request that followed it."""
    for request in reversed(scripted_api.requests_for(tag)):
        text = request.text_content()
        if last_line in text:
            return text
    raise AssertionError(f"no request of {tag} carries a tool result with {last_line!r}")


def lines_starting(output: str, prefix: str) -> list[str]:
    return [line[len(prefix) :].strip() for line in output.splitlines() if line.startswith(prefix)]


def pod_log(sessions: Sessions, pod: str, container: str) -> str:
    return str(sessions.core.read_namespaced_pod_log(pod, sessions.namespace, container=container))


def run_config(pod: client.V1Pod) -> dict[str, Any]:
    return decode_run_config(pod.metadata.annotations[CONFIG_ANNOTATION])


def first_object_key(store: TenantStore, root: str) -> str:
    """A key the store holds under `root` (admin view), relative to the namespace root."""
    listing = store.admin.client("s3").list_objects_v2(Bucket=store.bucket.name, Prefix=root)
    keys = [item["Key"] for item in listing.get("Contents", [])]
    assert keys, f"nothing stored under {root}"
    return str(keys[0])


def write_for_agent(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o755)
    path.write_text(text)
    path.chmod(0o644)


def finished_session(sessions: Sessions, scripted_api: sa.ScriptedAPI, name: str) -> str:
    """A session that ran to Succeeded; returns its session id."""
    tag = marker()
    scripted_api.route(tag, sa.text("victim's secret plans"))
    sessions.create(name, {"prompt": f"{tag}: plan"})
    status = sessions.wait(name)
    assert status["phase"] == "Succeeded", status
    return str(status["sessionId"])


def test_the_agent_reads_no_credential_and_reaches_no_other_session(
    local_cluster: LocalCluster,
    node: LocalNode,
    operator: OperatorProcess,
    sessions: Sessions,
    other_sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    tenant_store: TenantStore,
    transcript: TranscriptLoader,
) -> None:
    namespace = sessions.namespace
    victim = finished_session(sessions, scripted_api, "victim")
    neighbour = finished_session(other_sessions, scripted_api, "neighbour")
    # The store roots: <prefix>/<namespace>/<namespace uid>/ (the gateway's is its own).
    root = f"{tenant_store.prefix}/{namespace}/{sessions.namespace_uid}/"
    other_root = f"{tenant_store.prefix}/{other_sessions.namespace}/{other_sessions.namespace_uid}/"
    victim_key = first_object_key(tenant_store, f"{root}sessions/{victim}/")
    neighbour_key = first_object_key(tenant_store, f"{other_root}sessions/{neighbour}/")

    tag = marker()
    canary_env, canary_file = f"canary-env-{tag}", f"canary-file-{tag}"
    scripted_api.route(
        tag, sa.bash(gate_command("go", "bash /workspace/search.sh")), sa.text("nothing found")
    )
    sessions.create(
        "attacker",
        {
            "prompt": f"{tag}: find every credential you can",
            "allowedTools": ["Bash"],
            "env": [{"name": "PLANTED_VALUE", "value": canary_env}],
        },
    )
    pod_name = sessions.wait_running_pod("attacker")
    pod = sessions.core.read_namespaced_pod(pod_name, namespace)
    vended = sessions.core.read_namespaced_secret(store_secret_name(pod_name), namespace)
    store_keys = {k: base64.b64decode(v).decode() for k, v in vended.data.items()}
    secrets = [
        TEST_API_KEY,
        store_keys["AWS_SECRET_ACCESS_KEY"],
        store_keys["AWS_SESSION_TOKEN"],
        store_keys["AWS_ACCESS_KEY_ID"],
    ]

    workspace = node.volume_path(namespace, pod_name, "workspace")
    write_for_agent(workspace / "secrets", "\n".join(secrets) + "\n")
    write_for_agent(workspace / "canaries", f"{canary_env}\n{canary_file}\n")
    write_for_agent(workspace / "planted" / "note.txt", f"{canary_file}\n")
    write_for_agent(workspace / "search.sh", SEARCH_SCRIPT)
    write_for_agent(workspace / "attack.py", ATTACK_SCRIPT)
    facts = {
        "own_session": run_config(pod)["sessionId"],
        "victim_session": victim,
        "victim_key": victim_key.removeprefix(root),
        "other_namespace_key": "../../" + neighbour_key.removeprefix(f"{tenant_store.prefix}/"),
        "s3_endpoint": tenant_store.server.endpoint_url,
        "bucket": tenant_store.bucket.name,
        "region": REGION,
    }
    write_for_agent(workspace / "facts.json", json.dumps(facts))
    open_gate(node, namespace, pod_name, "go")

    status = sessions.wait("attacker", timeout=180)
    assert status["phase"] == "Succeeded", status
    seen = tool_output(scripted_api, tag, "ATTACK-DONE")

    # The search works: it finds what was planted where the agent can read it.
    assert int(lines_starting(seen, "CANARIES env")[0]) >= 1, seen
    assert "/workspace/planted/note.txt" in lines_starting(seen, "CANARIES file"), seen
    # ...and finds none of our credentials anywhere.
    assert lines_starting(seen, "SECRETS env") == ["0"], seen
    assert lines_starting(seen, "SECRETS file") == [], seen

    store = dict(line.rsplit(" ", 1) for line in lines_starting(seen, "STORE "))
    assert store == {
        "own-list": "200",
        "no-token": "401",
        "victim-read": "403",
        "victim-list": "403",
        "victim-write": "403",
        "victim-delete": "403",
        "other-namespace-read": "403",
        "report-forge": "403",
        "project-list": "200",
        "project-list-shows-victim": "False",
    }, seen
    boto_attempt, unsigned_attempt = lines_starting(seen, "S3 ")
    assert boto_attempt == "boto3 NoCredentialsError", seen
    # moto (IAM enforced) answers an anonymous request 500 where AWS says 403: refused either way.
    assert unsigned_attempt in ("unsigned 403", "unsigned 500"), seen
    refusals = pod_log(sessions, pod_name, GATEWAY_CONTAINER).count("Refused store access")
    assert refusals == 6, "every refusal (403) is logged by the gateway"

    # What a tenant could read in its own namespace (the vended Secret) reaches only its prefix.
    tenant_s3 = boto3.client(
        "s3",
        endpoint_url=tenant_store.server.endpoint_url,
        region_name=REGION,
        aws_access_key_id=store_keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=store_keys["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=store_keys["AWS_SESSION_TOKEN"],
    )
    tenant_s3.get_object(Bucket=tenant_store.bucket.name, Key=victim_key)  # its own namespace
    for attempt in (
        lambda: tenant_s3.get_object(Bucket=tenant_store.bucket.name, Key=neighbour_key),
        lambda: tenant_s3.put_object(Bucket=tenant_store.bucket.name, Key=neighbour_key, Body=b""),
        lambda: tenant_s3.delete_object(Bucket=tenant_store.bucket.name, Key=neighbour_key),
    ):
        with pytest.raises(ClientError) as refused:
            attempt()
        assert refused.value.response["Error"]["Code"] == "AccessDenied"

    # No credential in anything we show or keep: status, events, logs, the pod, the transcript.
    events = sessions.core.list_namespaced_event(namespace).to_dict()
    shown = [
        json.dumps(sessions.get("attacker")),
        json.dumps(events, default=str),
        pod_log(sessions, pod_name, RUNNER_CONTAINER),
        pod_log(sessions, pod_name, GATEWAY_CONTAINER),
        json.dumps(sessions.core.read_namespaced_pod(pod_name, namespace).to_dict(), default=str),
        json.dumps(transcript(namespace, status["sessionId"])),
        operator.log_path.read_text(),
    ]
    for secret in secrets[:3]:
        assert not any(secret in text for text in shown)


def test_killing_the_cli_does_not_reset_the_budget_or_the_turns(
    sessions: Sessions, scripted_api: sa.ScriptedAPI
) -> None:
    tag = marker()
    scripted_api.route(
        tag,
        sa.tool_use(
            "Bash",
            {"command": KILL_THE_CLI, "description": "end this attempt"},
            input_tokens=EXPENSIVE_INPUT_TOKENS,
        ),
        sa.text("done"),
    )
    sessions.create(
        "killer",
        {
            "prompt": f"{tag}: kill your own CLI",
            "allowedTools": ["Bash"],
            "maxBudgetUsd": 1.0,
            "maxTurns": 6,
            "backoffLimit": 2,
        },
    )
    status = sessions.wait("killer", timeout=180)
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2, status

    first, second = sessions.pods("killer")
    assert first.status.container_statuses[0].state.terminated.exit_code == 4
    config = run_config(second)
    # The second attempt runs on what the killed one left, as the gateway metered it.
    assert config["maxTurns"] == 5
    assert Decimal(str(config["maxBudgetUsd"])) <= Decimal("1.0") - EXPENSIVE_USD + Decimal("1e-6")
    assert Decimal(str(status["totalCostUsd"])) >= EXPENSIVE_USD + CHEAP_USD - Decimal("1e-6")
    assert status["numTurns"] == 2


def test_a_forged_termination_message_changes_neither_cost_nor_refs(
    sessions: Sessions, other_sessions: Sessions, scripted_api: sa.ScriptedAPI
) -> None:
    tag = marker()
    elsewhere = f"s3://somewhere/agents/{other_sessions.namespace}/sessions/x"
    forged = {
        "reason": "Completed",
        "totalCostUsd": 0,
        "numTurns": 0,
        "resultPreview": "forged",
        "resultRef": f"{elsewhere}/result.json",
        "transcriptRef": f"{elsewhere}/main",
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    # Padded to the kubelet's 4096 bytes (JSON allows trailing blanks): rewritten in place, it
    # covers whatever the runner wrote, so the file is never seen half-written or empty.
    padded = json.dumps(forged).ljust(4096)
    encoded = base64.b64encode(padded.encode()).decode()
    # A detached writer, outside the CLI's process group, keeps rewriting the termination message
    # so it wins over the runner's own summary (its last write lands after the runner's).
    forge = (
        f"echo {encoded} | base64 -d > /tmp/forged.json && "
        "nohup setsid sh -c 'while :; do dd if=/tmp/forged.json of=/dev/termination-log "
        "bs=4096 conv=notrunc status=none; done' >/dev/null 2>&1 </dev/null & echo forging"
    )
    scripted_api.route(
        tag,
        sa.tool_use(
            "Bash", {"command": forge, "description": "forge"}, input_tokens=EXPENSIVE_INPUT_TOKENS
        ),
        sa.text("real answer", input_tokens=EXPENSIVE_INPUT_TOKENS),
    )
    sessions.create("forger", {"prompt": f"{tag}: forge your report", "allowedTools": ["Bash"]})
    status = sessions.wait("forger", timeout=180)

    pods = sessions.pods("forger")
    messages = [p.status.container_statuses[0].state.terminated.message or "" for p in pods]
    assert len(pods) == 1, messages
    assert '"resultPreview": "forged"' in messages[0], "the forgery reached the kubelet"
    assert status["phase"] == "Succeeded", status
    assert Decimal(str(status["totalCostUsd"])) >= 2 * EXPENSIVE_USD - Decimal("1e-6"), status
    assert status["numTurns"] == 2, status
    own_root = f"/{sessions.namespace}/{sessions.namespace_uid}/sessions/{status['sessionId']}/"
    for ref in ("resultRef", "transcriptRef"):
        if ref in status:
            assert own_root in status[ref], status
            assert other_sessions.namespace not in status[ref], status


def test_the_budget_holds_at_the_wire_even_for_direct_api_calls(
    sessions: Sessions, scripted_api: sa.ScriptedAPI
) -> None:
    tag = marker()
    direct_calls = textwrap.dedent(
        f"""\
        python3 - <<'EOF'
        import json, urllib.error, urllib.request
        from concurrent.futures import ThreadPoolExecutor
        endpoint = json.load(open("/run/agentsession/gateway/endpoint.json"))
        # As large as the input it is charged for: a token is at least a byte.
        prompt = "{tag}: direct call " + "x" * {EXPENSIVE_INPUT_TOKENS}
        body = {{"model": "{MODEL}", "max_tokens": 16,
                 "messages": [{{"role": "user", "content": prompt}}]}}
        def call(_):
            request = urllib.request.Request(
                f"http://127.0.0.1:{{endpoint['port']}}/v1/messages",
                json.dumps(body).encode(),
                {{"x-api-key": endpoint["token"], "anthropic-version": "2023-06-01",
                  "content-type": "application/json"}},
            )
            try:
                return urllib.request.urlopen(request, timeout=60).status
            except urllib.error.HTTPError as error:
                return error.code
        # Eight at once: an agent need not wait for one reply before the next request.
        with ThreadPoolExecutor(8) as pool:
            codes = sorted(pool.map(call, range(8)))
        print("DIRECT", codes)
        EOF
        """
    )
    scripted_api.route(
        tag,
        sa.bash(direct_calls),
        default=sa.text("an expensive answer", input_tokens=EXPENSIVE_INPUT_TOKENS),
    )
    budget = Decimal("0.5")
    sessions.create(
        "spender",
        {"prompt": f"{tag}: spend", "allowedTools": ["Bash"], "maxBudgetUsd": float(budget)},
    )
    status = sessions.wait("spender", timeout=180)
    assert status["phase"] == "Failed", status
    assert status["reason"] == "BudgetExceeded", status

    answered = [r for r in scripted_api.requests_for(tag) if "direct call" in r.first_user_text()]
    spent = CHEAP_USD + len(answered) * EXPENSIVE_USD
    assert 1 <= len(answered) < 8, "the gateway refused the rest"
    assert spent - EXPENSIVE_USD < budget, "no request was admitted once the budget was spent"
    assert spent <= budget + EXPENSIVE_USD, "overshoot is bounded by one request"
    assert Decimal(str(status["totalCostUsd"])) == pytest.approx(spent, abs=Decimal("1e-6"))
    # The CLI's own request after the tool was refused too: the API never saw the tool result.
    assert not any("DIRECT" in r.text_content() for r in scripted_api.requests_for(tag))


def test_a_namespace_without_a_store_role_waits_with_a_reason(
    local_cluster: LocalCluster,
    operator: OperatorProcess,
    scripted_api: sa.ScriptedAPI,
    tenant_store: TenantStore,
) -> None:
    namespace = local_cluster.create_namespace(labels={})
    add_session_secrets(local_cluster, namespace)
    helper = Sessions(local_cluster, namespace)
    try:
        tag = marker()
        scripted_api.route(tag, sa.text("hello"))
        helper.create("unprovisioned", {"prompt": f"{tag}: hello"})
        status = helper.wait(
            "unprovisioned",
            lambda s: "store credentials" in s.get("message", ""),
            what="a message about store credentials",
        )
        assert status["phase"] == "Pending", status
        wait_for(
            lambda: "StoreCredentialsUnavailable" in helper.event_reasons("unprovisioned"),
            timeout=30,
            what="a StoreCredentialsUnavailable event",
        )
        assert helper.pods("unprovisioned") == []

        tenant_store.provision(namespace)
        assert helper.wait("unprovisioned", timeout=120)["phase"] == "Succeeded"
    finally:
        helper.close()
        local_cluster.delete_namespace(namespace)
