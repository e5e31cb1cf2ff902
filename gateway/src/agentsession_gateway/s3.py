"""S3 backend of the transcript store (AWS, MinIO, R2...): only the gateway (and tests) use it.

`open_store(url, namespace)` opens s3:// (and, delegating, file://) stores as TranscriptStores.

Only PutObject (plain and conditional), GetObject, ListObjectsV2 and DeleteObjects (DeleteObject
for keys a batch refused) are used, so any server that implements conditional writes (If-Match /
If-None-Match) works. Endpoint, credentials, region and retry count come from boto3's standard
environment and config files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from agentsession_contract.store.backend import ObjectVersion, PreconditionFailed, StoredObject
from agentsession_contract.store.errors import StoreError
from agentsession_contract.store.keys import (
    S3Location,
    check_relative_key,
    parse_store_url,
    store_scope,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from agentsession_contract.store import TranscriptStore

DELETE_BATCH = 1000  # DeleteObjects' per-request maximum
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# 409 ConditionalRequestConflict: AWS's answer when another conditional write to the key is in
# flight; it means the same as 412 for a compare-and-swap loop: re-read and try again.
_CONDITION_FAILED_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_URL_USERINFO_RE = re.compile(r"//[^/@\s\"']+@")


def make_s3_client(max_pool_connections: int) -> S3Client:
    """A client configured only by boto3's standard sources plus transport settings."""
    config = Config(
        # Standard mode retries throttling, 5xx and connection errors with jittered backoff; the
        # attempt count still comes from AWS_MAX_ATTEMPTS / the config file when set.
        retries={"mode": "standard"},
        max_pool_connections=max_pool_connections,
        connect_timeout=10,
        read_timeout=60,
        # boto3 >= 1.36 adds CRC trailers to every upload by default, which several
        # S3-compatible servers reject; checksums only where the API requires them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", config=config)


def storage_time_ms(last_modified: datetime) -> int:
    """S3 LastModified in epoch ms, floored to whole seconds.

    GetObject reports Last-Modified with 1 s resolution while ListObjectsV2 may carry
    milliseconds; flooring both keeps list and read times of one object identical, so a summary
    sidecar written after a part never looks older than it.
    """
    return int(last_modified.timestamp()) * 1000


class S3Backend:
    """Backend storing every key under `s3://<bucket>/<root>`."""

    def __init__(self, bucket: str, root: str, client: S3Client) -> None:
        self.bucket = bucket
        self.root = root  # ends with '/'
        self.client = client

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.root}{key}"

    def _object_key(self, key: str) -> str:
        return self.root + check_relative_key(key)

    @contextmanager
    def _errors(self, operation: str, key: str) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            code = error.get("Code", "Unknown")
            message = error.get("Message", "")
            raise StoreError(
                f"S3 {operation} of {self.uri(key)} failed: {code} (HTTP {status}) {message}"
            ) from exc
        except BotoCoreError as exc:
            # Messages may quote the endpoint URL; strip any user:password@ from it, and then
            # drop the original exception too, as tracebacks would print it verbatim.
            detail = _URL_USERINFO_RE.sub("//***@", str(exc))
            failure = StoreError(f"S3 {operation} of {self.uri(key)} failed: {detail}")
            if detail != str(exc):
                raise failure from None
            raise failure from exc

    def _list(self, prefix: str, *, delimiter: str | None) -> list[StoredObject]:
        full_prefix = self._object_key(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        pages = (
            paginator.paginate(Bucket=self.bucket, Prefix=full_prefix, Delimiter=delimiter)
            if delimiter
            else paginator.paginate(Bucket=self.bucket, Prefix=full_prefix)
        )
        objects: list[StoredObject] = []
        with self._errors("list", prefix):
            for page in pages:
                for item in page.get("Contents", []):
                    objects.append(
                        StoredObject(
                            key=item["Key"][len(self.root) :],
                            mtime_ms=storage_time_ms(item["LastModified"]),
                        )
                    )
        return objects

    def list_children(self, prefix: str) -> list[StoredObject]:
        return self._list(prefix, delimiter="/")

    def list_tree(self, prefix: str) -> list[StoredObject]:
        return self._list(prefix, delimiter=None)

    def read(self, key: str) -> ObjectVersion | None:
        object_key = self._object_key(key)
        with self._errors("get", key):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=object_key)
                data = response["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES:
                    return None
                raise
        return ObjectVersion(
            data=data, etag=response["ETag"], mtime_ms=storage_time_ms(response["LastModified"])
        )

    def write(self, key: str, data: bytes) -> None:
        object_key = self._object_key(key)
        with self._errors("put", key):
            self.client.put_object(
                Bucket=self.bucket, Key=object_key, Body=data, ContentType=_content_type(key)
            )

    def write_if(self, key: str, data: bytes, expected_etag: str | None) -> str:
        object_key = self._object_key(key)
        with self._errors("conditional put", key):
            try:
                if expected_etag is None:
                    response = self.client.put_object(
                        Bucket=self.bucket,
                        Key=object_key,
                        Body=data,
                        ContentType=_content_type(key),
                        IfNoneMatch="*",
                    )
                else:
                    response = self.client.put_object(
                        Bucket=self.bucket,
                        Key=object_key,
                        Body=data,
                        ContentType=_content_type(key),
                        IfMatch=expected_etag,
                    )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                # If-Match on an object deleted meanwhile answers 404: the condition failed.
                if code in _CONDITION_FAILED_CODES or code in _NOT_FOUND_CODES:
                    raise PreconditionFailed(key) from exc
                raise
        return response["ETag"]

    def delete(self, keys: Sequence[str]) -> None:
        object_keys = [self._object_key(key) for key in keys]
        for start in range(0, len(object_keys), DELETE_BATCH):
            batch = object_keys[start : start + DELETE_BATCH]
            with self._errors("delete", keys[start]):
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            failures = [
                error for error in response.get("Errors", []) if error.get("Code") != "NoSuchKey"
            ]
            denied = [error for error in failures if error.get("Code") == "AccessDenied"]
            if failures and len(denied) == len(failures):
                # moto authorizes DeleteObjects against the bucket ARN, not per key, so
                # credentials scoped to our prefix get every key refused there, even our own
                # (docs/s3-isolation-moto.md). DeleteObject is authorized per key everywhere:
                # retry the refused keys one by one; a key still refused is refused for real.
                # AWS and MinIO authorize each key of a batch, so they refuse only what the
                # one-by-one delete would refuse too, and never take this path for our keys.
                asked = set(batch)
                for error in denied:
                    self._delete_one(error.get("Key", ""), asked)
            elif failures:
                first = failures[0]
                raise StoreError(
                    f"S3 delete of s3://{self.bucket}/{first.get('Key', '?')} failed: "
                    f"{first.get('Code', 'Unknown')} {first.get('Message', '')}"
                )

    def _delete_one(self, object_key: str, asked: set[str]) -> None:
        """DeleteObject of one key DeleteObjects refused (a missing key is no error: 204)."""
        if object_key not in asked:
            # Act only on keys we asked to delete, never on one the server's answer names.
            raise StoreError(f"S3 delete of s3://{self.bucket} reported an unknown key")
        with self._errors("delete", object_key[len(self.root) :]):
            self.client.delete_object(Bucket=self.bucket, Key=object_key)

    def check(self) -> None:
        with self._errors("list", ""):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.root, MaxKeys=1)

    def close(self) -> None:
        self.client.close()


def _content_type(key: str) -> str:
    return "application/x-ndjson" if key.endswith(".jsonl") else "application/json"


def open_store(url: str, namespace: str, namespace_uid: str | None = None) -> TranscriptStore:
    """The TranscriptStore at `url` (s3://bucket/prefix or file:///dir) for `namespace`, for tests
    and tools (the gateway itself serves a Backend, not a store).

    Everything it reads or writes lives under `<url>/<namespace>/<namespace_uid>/`
    (`keys.store_scope`). No I/O happens here.
    """
    # Imported here: TranscriptStore pulls in the SDK, which the gateway process never needs.
    from agentsession_contract.store import MAX_CONCURRENCY, TranscriptStore
    from agentsession_contract.store import open_store as open_file_store

    scope = store_scope(namespace, namespace_uid)
    location = parse_store_url(url)
    if not isinstance(location, S3Location):
        return open_file_store(url, namespace, namespace_uid)
    client = make_s3_client(max_pool_connections=MAX_CONCURRENCY)
    return TranscriptStore(S3Backend(location.bucket, f"{location.prefix}{scope}", client))
