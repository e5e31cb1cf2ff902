"""The store as the agent's container sees it in a pod: a Backend that is a client of the gateway.

Used by `agentsession_runner.run` when the gateway's endpoint file exists (and by the workspace
init step, `agentsession_gateway.workspace_init`): TranscriptStore runs
here as everywhere, over this Backend, and the gateway (agentsession_gateway.store_service)
authorizes each key and moves the bytes to S3 with credentials the runner never holds.
Synchronous and thread-safe, like every Backend (TranscriptStore calls it from worker threads).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode

import urllib3

from agentsession_contract.gateway import ENDPOINT_FILE, STORE_PATH, TOKEN_HEADER, GatewayEndpoint
from agentsession_contract.store.backend import ObjectVersion, PreconditionFailed, StoredObject
from agentsession_contract.store.errors import StoreError
from agentsession_contract.store.keys import check_relative_key

# The gateway is on loopback: anything slower is a stuck gateway (retried by the caller).
TIMEOUT = urllib3.Timeout(connect=5.0, read=60.0)
PUSH_TIMEOUT = urllib3.Timeout(connect=5.0, read=900.0)
"""A git push through the gateway's workspace service goes over the network: minutes, not ms."""


class GatewayBackend:
    """Backend over the gateway's store service at 127.0.0.1:<endpoint.port>."""

    def __init__(self, endpoint: GatewayEndpoint, *, max_connections: int = 16) -> None:
        self._port = endpoint.port
        self._base = f"http://127.0.0.1:{endpoint.port}{STORE_PATH}"
        self._root_uri = endpoint.store_uri
        self._headers = {TOKEN_HEADER: endpoint.token}
        # No retries here: TranscriptStore's callers retry store actions with backoff. A push
        # (the workspace service) may take minutes: the read timeout is per read.
        self._pool = urllib3.PoolManager(
            maxsize=max_connections, block=True, retries=False, timeout=TIMEOUT
        )

    def _request(
        self,
        method: str,
        operation: str,
        query: dict[str, str],
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        url = f"{self._base}{operation}?{urlencode(query)}" if query else self._base + operation
        try:
            response = self._pool.request(
                method, url, body=body, headers={**self._headers, **(headers or {})}
            )
        except urllib3.exceptions.HTTPError as exc:
            raise StoreError(f"the session gateway did not answer {operation}: {exc}") from exc
        return response

    @staticmethod
    def _fail(response: urllib3.BaseHTTPResponse, what: str) -> StoreError:
        try:
            detail = json.loads(response.data)["error"]
        except (ValueError, KeyError, TypeError):
            detail = response.data[:200].decode(errors="replace")
        return StoreError(f"store {what} refused by the gateway: HTTP {response.status} {detail}")

    def uri(self, key: str) -> str:
        return self._root_uri + key

    def _list(self, prefix: str, recursive: bool) -> list[StoredObject]:
        check_relative_key(prefix)
        query = {"prefix": prefix, **({"recursive": "1"} if recursive else {})}
        response = self._request("GET", "list", query)
        if response.status != 200:
            raise self._fail(response, f"list of {prefix!r}")
        return [StoredObject(key=key, mtime_ms=int(mtime)) for key, mtime in response.json()]

    def list_children(self, prefix: str) -> list[StoredObject]:
        return self._list(prefix, recursive=False)

    def list_tree(self, prefix: str) -> list[StoredObject]:
        return self._list(prefix, recursive=True)

    def read(self, key: str) -> ObjectVersion | None:
        response = self._request("GET", "object", {"key": check_relative_key(key)})
        if response.status == 404:
            return None
        if response.status != 200:
            raise self._fail(response, f"read of {key!r}")
        return ObjectVersion(
            data=response.data,
            etag=response.headers["ETag"],
            mtime_ms=int(response.headers["X-Object-Mtime-Ms"]),
        )

    def write(self, key: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        response = self._request(
            "PUT", "object", {"key": check_relative_key(key)}, body=data, headers=headers
        )
        if response.status != 204:
            raise self._fail(response, f"write of {key!r}")

    def post_json(
        self, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, object]]:
        """A request to another of the gateway's services (the workspace service): status and
        its JSON answer."""
        url = f"http://127.0.0.1:{self._port}{path}?{urlencode(query)}"
        try:
            response = self._pool.request(
                "POST", url, body=body, headers=self._headers, timeout=PUSH_TIMEOUT
            )
        except urllib3.exceptions.HTTPError as exc:
            raise StoreError(f"the session gateway did not answer {path}: {exc}") from exc
        try:
            answer = json.loads(response.data)
        except ValueError:
            answer = {"error": response.data[:200].decode(errors="replace")}
        return response.status, answer if isinstance(answer, dict) else {}

    def get_json(self, path: str, query: dict[str, str]) -> tuple[int, dict[str, object]]:
        url = f"http://127.0.0.1:{self._port}{path}?{urlencode(query)}"
        try:
            response = self._pool.request("GET", url, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise StoreError(f"the session gateway did not answer {path}: {exc}") from exc
        try:
            answer = json.loads(response.data)
        except ValueError:
            answer = {"error": response.data[:200].decode(errors="replace")}
        return response.status, answer if isinstance(answer, dict) else {}

    def write_if(self, key: str, data: bytes, expected_etag: str | None) -> str:
        condition = {"If-None-Match": "*"} if expected_etag is None else {"If-Match": expected_etag}
        response = self._request(
            "PUT", "object", {"key": check_relative_key(key)}, body=data, headers=condition
        )
        if response.status == 412:
            raise PreconditionFailed(key)
        if response.status != 200:
            raise self._fail(response, f"conditional write of {key!r}")
        return str(response.headers["ETag"])

    def delete(self, keys: Sequence[str]) -> None:
        body = json.dumps({"keys": [check_relative_key(k) for k in keys]}).encode()
        response = self._request(
            "POST", "delete", {}, body=body, headers={"Content-Type": "application/json"}
        )
        if response.status != 204:
            raise self._fail(response, f"delete of {len(keys)} object(s)")

    def check(self) -> None:
        response = self._request("GET", "check", {})
        if response.status != 204:
            raise self._fail(response, "check")

    def close(self) -> None:
        self._pool.clear()


def wait_for_endpoint(directory: Path, timeout: float) -> GatewayEndpoint:
    """The gateway's endpoint from its shared directory, polling until the gateway has written
    it (the runner and the workspace init step call this before their first request)."""
    path = directory / ENDPOINT_FILE
    deadline = time.monotonic() + timeout
    while True:
        try:
            return GatewayEndpoint.model_validate_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            # A partial write shows as invalid JSON for an instant.
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"the session gateway's endpoint {path} is not usable: {exc}"
                ) from exc
        time.sleep(0.05)  # polls a file another container writes, within the deadline
