"""Gateway overhead: the Messages API proxy's added latency and lost streaming throughput.

Client -> gateway (`MessagesProxy` on aiohttp, metering every chunk) -> scripted API, against
client -> scripted API directly. The scripted API and the gateway each run in a process of their
own (as in a pod: no GIL shared with the client), the client is a bare socket so its own cost is
the same on both paths, and runs alternate between the paths so drift hits both alike.
(a) p50/p99 of a small streamed request (goal: <= 2 ms p50 added); (b) MB/s of a streamed reply
of 20,000 events / about 2.5 MB (goal: <= 2% lost), from the scripted API (one write per event,
like a live model) and from a bulk upstream (the whole reply in one write: the proxy's own
ceiling). Run: `make bench` or `.venv/bin/python bench/bench_gateway.py [--requests N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import gateway_harness as gh  # noqa: E402
from tests.support import scripted_api as sa  # noqa: E402

EVENTS = 20_000
BIG_MARKER = "THROUGHPUT"
TOKEN = gh.POD_TOKEN
LOW_WATER = 64 * 1024
BLOCK = 3


# --- The servers, each in a child process ------------------------------------------------------


def big_reply() -> sa.Reply:
    # One text_delta event per word: 20,000 events of about 125 bytes.
    return sa.text(" ".join(["tok"] * EVENTS), output_tokens=EVENTS)


def serve_scripted() -> None:
    api = sa.ScriptedAPI(default=sa.text("hi"))
    api.route(BIG_MARKER, default=big_reply())
    api.start()
    print(f"READY {api.base_url}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin


def serve_bulk() -> None:
    api = sa.ScriptedAPI(default=sa.text("hi"))
    reply = big_reply()
    api.route(BIG_MARKER, default=gh.MeteredReply(blocks=reply.blocks, bulk=True))
    upstream = gh.ScriptedUpstream(api).start()
    print(f"READY {upstream.base_url}", flush=True)
    sys.stdin.read()


def serve_gateway(upstream_url: str) -> None:
    from aiohttp import web

    from agentsession_gateway.main import _RewrittenFile
    from agentsession_gateway.metering import Meter
    from agentsession_gateway.proxy import MessagesProxy

    meter = Meter(budget=Decimal(10**9))
    directory = Path(tempfile.mkdtemp())
    state, termination = (_RewrittenFile(directory / n, 0o600) for n in ("state", "report"))

    def save_state() -> None:
        # What Gateway.save_state does before each request goes upstream (and after each
        # settles): the report to the state file and the termination message.
        report = meter.report("running")
        state.write(json.dumps({"report": report.to_wire()}))
        termination.write(report.to_termination_message())

    async def save_state_async() -> None:
        save_state()

    async def main() -> None:
        proxy = MessagesProxy(
            meter,
            upstream_url,
            {"x-api-key": "k"},
            TOKEN,
            on_charge=save_state_async,
            on_reserve=save_state,
        )
        app = web.Application()
        app.add_routes(proxy.routes())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        print(f"READY http://127.0.0.1:{port}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        report = proxy.meter.report("stopped")
        print(f"METERED {report.requests} {report.spent_usd}", flush=True)
        await runner.cleanup()
        await proxy.close()

    asyncio.run(main())


class Child:
    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"child {args} did not start: {line!r}")
        self.url = line.split()[1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self) -> str:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        rest = self.process.stdout.read()
        self.process.wait(timeout=30)
        return rest


# --- A bare HTTP/1.1 client --------------------------------------------------------------------


def request_bytes(prompt: str, keep_alive: bool) -> bytes:
    body = json.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 32000,
            "stream": True,
            "messages": [{"role": "user", "content": prompt}],
        }
    ).encode()
    head = (
        "POST /v1/messages?beta=true HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"x-api-key: {TOKEN}\r\nanthropic-version: 2023-06-01\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + body


class Client:
    """One connection per target, reused while the server keeps it open."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buffer = bytearray(1 << 20)

    def fetch(self, payload: bytes, *, low_water: int = 0) -> int:
        """Send one request, read the whole reply; returns the body's size in bytes.

        With `low_water`, each read waits for that many bytes (or the end of the connection),
        so the client's cost no longer depends on how the server split its writes: without it,
        a server that writes one event per segment is read 125 bytes at a time and the client,
        not the server, sets the pace."""
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.sock
        if low_water:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, low_water)
        sock.sendall(payload)
        data = bytearray()
        view = memoryview(self.buffer)
        while b"\r\n\r\n" not in data:
            n = sock.recv_into(view)
            if not n:
                raise ConnectionError("closed before the headers")
            data += view[:n]
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        headers = head.lower()
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        received = bytearray(body)
        if b"transfer-encoding: chunked" in headers and b"connection: close" not in headers:
            # The body ends with the zero-size chunk (SSE text never contains one).
            while not received.endswith(b"\r\n0\r\n\r\n"):
                n = sock.recv_into(view)
                if not n:
                    raise ConnectionError("closed mid-body")
                received += view[:n]
        else:  # the server ends the reply by closing the connection
            while n := sock.recv_into(view):
                received += view[:n]
            sock.close()
            self.sock = None
        return len(received)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def timed(action: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    size = action()
    return time.perf_counter() - started, size


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- Measurements ------------------------------------------------------------------------------


def latency(direct: Client, gateway: Client, requests: int) -> dict[str, float]:
    direct_request = request_bytes("hello", keep_alive=False)
    gateway_request = request_bytes("hello", keep_alive=True)
    for _ in range(20):  # warm up: connections, code paths
        direct.fetch(direct_request)
        gateway.fetch(gateway_request)
    direct_s, gateway_s = [], []
    for _ in range(requests):
        direct_s.append(timed(lambda: direct.fetch(direct_request))[0])
        gateway_s.append(timed(lambda: gateway.fetch(gateway_request))[0])
    return {
        "direct_p50_ms": percentile(direct_s, 0.5) * 1e3,
        "direct_p99_ms": percentile(direct_s, 0.99) * 1e3,
        "gateway_p50_ms": percentile(gateway_s, 0.5) * 1e3,
        "gateway_p99_ms": percentile(gateway_s, 0.99) * 1e3,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(direct: Client, gateway: Client, gateway_pid: int, rounds: int) -> dict[str, float]:
    # `connection: close` on both paths: every reply ends with the connection, so the same
    # low-water reads work for both (the gateway still pools its upstream connections).
    request = request_bytes(BIG_MARKER, keep_alive=False)
    direct.fetch(request, low_water=LOW_WATER)
    gateway.fetch(request, low_water=LOW_WATER)
    direct_s, gateway_s, sizes, gateway_cpu = [], [], [], 0.0
    # Short blocks in alternating order: on two cores, the scheduler's placement after one
    # path's run otherwise bills the other path's next run.
    for round_ in range(rounds):
        for path in ("direct", "gateway") if round_ % 2 else ("gateway", "direct"):
            for _ in range(BLOCK):
                if path == "direct":
                    seconds, size = timed(lambda: direct.fetch(request, low_water=LOW_WATER))
                    direct_s.append(seconds)
                    sizes.append(size)
                else:
                    before = cpu_seconds(gateway_pid)
                    gateway_s.append(timed(lambda: gateway.fetch(request, low_water=LOW_WATER))[0])
                    gateway_cpu += cpu_seconds(gateway_pid) - before
    mb = statistics.median(sizes) / 1e6
    return {
        "reply_mb": mb,
        "direct_mb_s": mb / statistics.median(direct_s),
        "gateway_mb_s": mb / statistics.median(gateway_s),
        "gateway_cpu_ms": gateway_cpu / len(gateway_s) * 1e3,
        "samples": len(gateway_s),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=6, help=f"throughput: {BLOCK} runs each")
    args = parser.parse_args()
    started = time.perf_counter()

    scripted = Child("--serve-scripted")
    bulk = Child("--serve-bulk")
    via_scripted = Child("--serve-gateway", scripted.url)
    via_bulk = Child("--serve-gateway", bulk.url)
    clients = [Client(c.port) for c in (scripted, via_scripted, bulk, via_bulk)]
    try:
        lat = latency(clients[0], clients[1], args.requests)
        live = throughput(clients[0], clients[1], via_scripted.process.pid, args.rounds)
        fast = throughput(clients[2], clients[3], via_bulk.process.pid, args.rounds)
    finally:
        for client in clients:
            client.close()
        metered = [via_scripted.stop(), via_bulk.stop()]
        scripted.stop()
        bulk.stop()

    added = lat["gateway_p50_ms"] - lat["direct_p50_ms"]
    print(f"\nsmall streamed request, {args.requests} per path (keep-alive to the gateway)")
    print(f"{'':<34}{'direct':>12}{'via gateway':>14}{'added':>10}")
    for q in ("p50", "p99"):
        d, g = lat[f"direct_{q}_ms"], lat[f"gateway_{q}_ms"]
        print(f"{'latency ' + q + ' (ms)':<34}{d:>12.2f}{g:>14.2f}{g - d:>10.2f}")
    print(f"goal: <= 2 ms p50 added -> {'met' if added <= 2 else 'MISSED'} ({added:.2f} ms)")
    samples = int(live["samples"])
    print(f"\nstreamed reply, {EVENTS} events, {live['reply_mb']:.2f} MB, median of {samples}")
    print(f"{'':<34}{'direct MB/s':>12}{'via gateway':>14}{'ratio':>8}{'gw CPU ms':>11}")
    for label, figures in (("scripted API (write per event)", live), ("bulk upstream", fast)):
        ratio = figures["gateway_mb_s"] / figures["direct_mb_s"]
        print(
            f"{label:<34}{figures['direct_mb_s']:>12.1f}{figures['gateway_mb_s']:>14.1f}"
            f"{ratio:>8.3f}{figures['gateway_cpu_ms']:>11.1f}"
        )
    live_ratio = live["gateway_mb_s"] / live["direct_mb_s"]
    print(
        f"goal: <= 2% throughput lost (scripted API) -> "
        f"{'met' if live_ratio >= 0.98 else 'MISSED'} ({(1 - live_ratio) * 100:.1f}% lost)"
    )
    for text in metered:
        print(f"gateway {text.strip().lower()} USD")  # every request was metered
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-scripted":
        serve_scripted()
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve-bulk":
        serve_bulk()
    elif len(sys.argv) > 2 and sys.argv[1] == "--serve-gateway":
        serve_gateway(sys.argv[2])
    else:
        sys.exit(main())
