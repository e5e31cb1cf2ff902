"""A scripted Anthropic Messages API on loopback (SSE streaming) for the real `claude` CLI.

Used by the runner tests, the benchmarks and the offline demo: each test queues the replies the
"model" gives, points `ANTHROPIC_BASE_URL` at this server and inspects the requests it recorded.
"""

from __future__ import annotations

import hmac
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


@dataclass(frozen=True)
class Reply:
    """One scripted model reply: content blocks, usage, or an HTTP error instead."""

    blocks: tuple[dict[str, Any], ...] = ()
    stop_reason: str = "end_turn"
    input_tokens: int = 10
    output_tokens: int = 5
    error_status: int | None = None
    error_type: str = "api_error"
    chunk_delay_s: float = 0.0
    """Delay between streamed events, for slow-stream scenarios."""


def text(message: str, *, input_tokens: int = 10, output_tokens: int = 5) -> Reply:
    """A plain assistant answer that ends the turn."""
    return Reply(
        blocks=({"type": "text", "text": message},),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def tool_use(name: str, tool_input: dict[str, Any], *, input_tokens: int = 10) -> Reply:
    """An assistant reply that calls a tool (the CLI runs it and asks again)."""
    block = {"type": "tool_use", "id": f"toolu_{next(_ids):06d}", "name": name, "input": tool_input}
    return Reply(blocks=(block,), stop_reason="tool_use", input_tokens=input_tokens)


def bash(command: str) -> Reply:
    """A Bash tool call."""
    return tool_use("Bash", {"command": command, "description": "scripted"})


def http_error(status: int) -> Reply:
    """The API answers with an HTTP error status."""
    error_type = {
        400: "invalid_request_error",
        401: "authentication_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    return Reply(error_status=status, error_type=error_type)


def slow_text(message: str, *, chunk_delay_s: float) -> Reply:
    """A plain answer streamed word by word with a delay between events."""
    return Reply(blocks=({"type": "text", "text": message},), chunk_delay_s=chunk_delay_s)


@dataclass
class RecordedRequest:
    """A request the CLI sent, for assertions."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    authenticated: bool = True
    """Whether it carried `ScriptedAPI.required_key` (always True when none is required)."""

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    def first_user_text(self) -> str:
        """Text of the conversation's first user message (where the session's prompt is)."""
        for message in self.messages:
            if message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                return content
            return "\n".join(b.get("text", "") for b in content or [] if b.get("type") == "text")
        return ""

    def text_content(self) -> str:
        """Every text fragment in the request's messages, joined: handy for 'carries turn N'."""
        parts: list[str] = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
                continue
            for block in content or []:
                if block.get("type") == "text":
                    parts.append(block.get("text", ""))
                elif block.get("type") == "tool_result":
                    inner = block.get("content")
                    if isinstance(inner, str):
                        parts.append(inner)
                    else:
                        parts.extend(b.get("text", "") for b in inner or [] if isinstance(b, dict))
        return "\n".join(parts)


@dataclass
class ScriptedAPI:
    """The server's state: queued replies, a fallback, and every request received."""

    default: Reply = field(default_factory=lambda: text("(scripted default reply)"))
    queue: deque[Reply] = field(default_factory=deque)
    routes: dict[str, deque[Reply]] = field(default_factory=dict)
    """Replies for requests whose first user message contains the marker (see `route`)."""
    route_defaults: dict[str, Reply] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    on_request: Callable[[RecordedRequest], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    bind: tuple[str, int] = ("127.0.0.1", 0)
    """Where to listen; tests take a free loopback port."""
    required_key: str | None = None
    """If set, like the real API: requests without this key (x-api-key or Bearer) get 401."""
    unauthorized: list[RecordedRequest] = field(default_factory=list)
    """Requests refused for a missing or wrong key (never answered, never scripted)."""
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def script(self, *replies: Reply) -> None:
        """Queue replies, served in order to model requests; `default` once they run out."""
        with self._lock:
            self.queue.extend(replies)

    def route(self, marker: str, *replies: Reply, default: Reply | None = None) -> None:
        """Serve `replies` (then `default`, if given) to conversations that began with a
        prompt containing `marker`: lets concurrent sessions each follow their own script."""
        with self._lock:
            self.routes.setdefault(marker, deque()).extend(replies)
            if default is not None:
                self.route_defaults[marker] = default

    def requests_for(self, marker: str) -> list[RecordedRequest]:
        return [r for r in self.model_requests() if marker in r.first_user_text()]

    def model_requests(self) -> list[RecordedRequest]:
        """The recorded /v1/messages requests (not token counting or other side calls)."""
        with self._lock:
            return [r for r in self.requests if r.path.split("?")[0] == "/v1/messages"]

    def next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            first = request.first_user_text()
            marker = next((m for m in self.routes if m in first), None)
            if marker is not None:
                queue = self.routes[marker]
                reply = queue.popleft() if queue else self.route_defaults.get(marker, self.default)
            else:
                reply = self.queue.popleft() if self.queue else self.default
        if self.on_request is not None:
            self.on_request(request)
        return reply

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ScriptedAPI:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the recorded requests are the log

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length) if length else b"{}"
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = {}
                # Never keep credentials in the record, so a test can print it safely.
                headers = {
                    k.lower(): v
                    for k, v in self.headers.items()
                    if k.lower() not in ("x-api-key", "authorization")
                }
                path = self.path
                if api.required_key is not None:
                    offered = self.headers.get("x-api-key") or self.headers.get(
                        "authorization", ""
                    ).removeprefix("Bearer ")
                    if not hmac.compare_digest(offered.encode(), api.required_key.encode()):
                        api.unauthorized.append(RecordedRequest(path, body, headers, False))
                        self._send_json(
                            401,
                            {
                                "type": "error",
                                "error": {
                                    "type": "authentication_error",
                                    "message": "invalid x-api-key",
                                },
                            },
                        )
                        return
                if path.split("?")[0] == "/v1/messages/count_tokens":
                    api.requests.append(RecordedRequest(path, body, headers))
                    self._send_json(200, {"input_tokens": 10})
                    return
                if path.split("?")[0] != "/v1/messages":
                    self._send_json(404, {"type": "error", "error": {"type": "not_found_error"}})
                    return
                reply = api.next_reply(RecordedRequest(path, body, headers))
                if reply.error_status is not None:
                    self._send_json(
                        reply.error_status,
                        {
                            "type": "error",
                            "error": {"type": reply.error_type, "message": "scripted error"},
                        },
                    )
                    return
                if body.get("stream"):
                    self._stream(reply, body.get("model", "claude-sonnet-4-5"))
                else:
                    self._send_json(200, _message_object(reply, body.get("model", "")))

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def _send_json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if status in (429, 529):
                    self.send_header("retry-after", "0")
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, reply: Reply, model: str) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.end_headers()
                try:
                    for event, data in _sse_events(reply, model):
                        chunk = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        if reply.chunk_delay_s:
                            time.sleep(reply.chunk_delay_s)  # the scenario *is* a slow stream
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (killed runner): nothing to finish
                self.close_connection = True

        self._server = ThreadingHTTPServer(self.bind, Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ScriptedAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _message_object(reply: Reply, model: str) -> dict[str, Any]:
    return {
        "id": f"msg_{next(_ids):06d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": list(reply.blocks),
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
    }


def _sse_events(reply: Reply, model: str) -> Iterator[tuple[str, dict[str, Any]]]:
    message = _message_object(reply, model)
    message["content"] = []
    message["stop_reason"] = None
    message["usage"] = {"input_tokens": reply.input_tokens, "output_tokens": 1}
    yield "message_start", {"type": "message_start", "message": message}
    for index, block in enumerate(reply.blocks):
        if block["type"] == "text":
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            words = block["text"].split(" ")
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            yield (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {
                        "type": "input_json_delta",
                        "partial_json": json.dumps(block["input"]),
                    },
                },
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": reply.output_tokens},
        },
    )
    yield "message_stop", {"type": "message_stop"}


def main(argv: list[str] | None = None) -> int:
    """Serve one reply to every request, in the foreground (the kind path's offline API)."""
    import argparse

    parser = argparse.ArgumentParser(description="A scripted Anthropic Messages API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--reply", default="Hello from the scripted Messages API.")
    args = parser.parse_args(argv)
    api = ScriptedAPI(default=text(args.reply))
    api.bind = (args.host, args.port)
    api.start()
    print(f"Scripted Messages API on {api.base_url}", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
