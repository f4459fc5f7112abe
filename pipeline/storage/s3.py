"""The S3 object store, through boto3: any S3-compatible server (SeaweedFS, MinIO, Ceph) or AWS.

Path-style addressing and SigV4 so it works against local servers and AWS alike; adaptive retries
so throttling (503 SlowDown) slows the pipeline down instead of failing it. On top of boto3's own
attempts (`max_attempts`: between about 10 and 30 seconds against a server that is down), a request
that failed on a transient error (connection refused or reset, timeout, 5xx, throttling) is sent again
with exponential backoff until `retry_seconds` have passed since its first failure, so a restarting or
briefly unreachable server delays a stage instead of failing it. Every request is safe to repeat:
whole-object puts, reads, listings (fetched whole before any key is returned), and the conditional
commit (a repeated commit whose first try landed finds its own manifest). Conditional create is
`PutObject` with `If-None-Match: *`. Credentials come only from boto3's own chain (environment,
profile, instance role); nothing here reads or logs them. The client is created lazily so a store
can be pickled into worker processes.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from .base import NotFound, ObjectStore, ObjectVersion, StoreError, join_key

log = logging.getLogger(__name__)
T = TypeVar("T")

_CONDITION_FAILED = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
# Error codes (and HTTP statuses) that say "try again later", not "this request is wrong".
_TRANSIENT_CODES = {
    "500", "502", "503", "504", "429", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
    "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests", "RequestLimitExceeded",
    "BandwidthLimitExceeded",
}


class S3Store(ObjectStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        max_attempts: int = 10,
        multipart_threshold_mb: int = 64,
        retry_seconds: float = 300.0,
        retry_backoff_seconds: float = 0.5,
        retry_max_backoff_seconds: float = 15.0,
        presigned_links: bool = True,
    ):
        self.bucket = bucket
        self.presigned_links = presigned_links
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.max_attempts = max_attempts
        self.multipart_threshold = multipart_threshold_mb * 1024 * 1024
        self.retry_seconds = retry_seconds
        self.retry_backoff_seconds = retry_backoff_seconds
        self.retry_max_backoff_seconds = retry_max_backoff_seconds
        self._client: Any = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    def __repr__(self) -> str:
        return f"S3Store({self.uri()!r}, endpoint={self.endpoint_url!r})"

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_s3_client(self.endpoint_url, self.region, self.max_attempts)
        return self._client

    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    def _retry(self, what: str, where: str, call: Callable[[], T]) -> T:
        """`call()`, sent again after a transient error with exponential backoff (doubling from
        retry_backoff_seconds up to retry_max_backoff_seconds, jittered) until retry_seconds have passed
        since the first failure; then a StoreError naming `where`. Other errors (a missing key, access
        denied, a failed condition) pass through at once."""
        deadline: float | None = None
        delay = self.retry_backoff_seconds
        attempt = 1
        while True:
            try:
                return call()
            except Exception as exc:  # noqa: BLE001 - classified just below
                if not _transient(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.retry_seconds
                if now >= deadline:
                    raise StoreError(
                        f"{where}: {what} failed {attempt} times over {self.retry_seconds:g} s of retries "
                        f"(storage.retry_seconds): {_describe(exc)}"
                    ) from None
                pause = min(delay * random.uniform(0.5, 1.0), deadline - now)
                log.warning("%s: %s failed (%s); attempt %d in %.1f s", where, what, _describe(exc), attempt + 1,
                            pause)
                time.sleep(pause)
                delay = min(delay * 2, self.retry_max_backoff_seconds)
                attempt += 1

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def http_link(self, key: str, expires_seconds: int = 7 * 24 * 3600) -> str | None:
        if not self.presigned_links:  # a presigned URL carries the access key ID (not the secret)
            return None
        try:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_seconds
            )
        except Exception:  # no credentials available: the s3:// URI is shown instead
            return None

    def ensure_bucket(self) -> None:
        """Create the bucket if missing and switch versioning on (ref history relies on it)."""
        from botocore.exceptions import ClientError

        where = f"s3://{self.bucket}"
        try:
            self._retry("head bucket", where, lambda: self.client.head_bucket(Bucket=self.bucket))
        except ClientError as exc:
            if _code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                raise StoreError(f"s3://{self.bucket}: cannot access bucket: {_code(exc)}") from None
            try:
                self._retry("create bucket", where, lambda: self.client.create_bucket(Bucket=self.bucket))
            except ClientError as create:  # a concurrent run may have created it first
                if _code(create) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise StoreError(f"s3://{self.bucket}: cannot create bucket: {_code(create)}") from None
        status = self._retry("get versioning", where,
                             lambda: self.client.get_bucket_versioning(Bucket=self.bucket)).get("Status")
        if status != "Enabled":
            self._retry("put versioning", where, lambda: self.client.put_bucket_versioning(
                Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
            ))

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        from botocore.exceptions import ClientError

        extra = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self._retry("put", self.uri(key),
                        lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra))
        except ClientError as exc:
            if if_absent and _code(exc) in _CONDITION_FAILED:
                return False
            raise StoreError(f"{self.uri(key)}: put failed: {_code(exc)}") from None
        return True

    def put_file(self, key: str, path: Path) -> None:
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import ClientError

        config = TransferConfig(multipart_threshold=self.multipart_threshold, multipart_chunksize=self.multipart_threshold)
        try:
            self._retry("upload", self.uri(key),
                        lambda: self.client.upload_file(str(path), self.bucket, self._key(key), Config=config))
        except (S3UploadFailedError, ClientError) as exc:
            raise StoreError(f"{self.uri(key)}: upload failed: {_code(exc) if isinstance(exc, ClientError) else exc}") \
                from None

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self._retry("get", self.uri(key),
                               lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise NotFound(self.uri(key)) from None
            raise StoreError(f"{self.uri(key)}: get failed: {_code(exc)}") from None

    def download(self, key: str, path: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self._retry("download", self.uri(key),
                        lambda: self.client.download_file(self.bucket, self._key(key), str(path)))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise NotFound(self.uri(key)) from None
            raise StoreError(f"{self.uri(key)}: download failed: {_code(exc)}") from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        from botocore.exceptions import ClientError

        span = f"bytes={start}-{start + length - 1}"
        try:
            return self._retry("get range", self.uri(key), lambda: self.client.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=span)["Body"].read())
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise NotFound(self.uri(key)) from None
            raise StoreError(f"{self.uri(key)}: get {span} failed: {_code(exc)}") from None

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self._retry("head", self.uri(key),
                               lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
            return int(head["ContentLength"])
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise StoreError(f"{self.uri(key)}: head failed: {_code(exc)}") from None

    def _paginate(self, operation: str, what: str, **params) -> Iterator[dict]:
        from botocore.exceptions import ClientError

        # The pages are fetched whole before any is returned, so a retry never repeats keys to the caller.
        where = f"s3://{self.bucket}/{params.get('Prefix', '')}"
        try:
            pages = self._retry(what, where, lambda: list(
                self.client.get_paginator(operation).paginate(Bucket=self.bucket, **params)))
        except ClientError as exc:
            raise StoreError(f"{where}: {what} failed: {_code(exc)}") from None
        yield from pages

    def list(self, prefix: str = "") -> Iterator[str]:
        # Like a directory listing: "a/b" means the key a/b itself or keys under a/b/, never a/bc.
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self._paginate("list_objects_v2", "list", Prefix=full):
            for item in page.get("Contents", []):
                key = item["Key"]
                if not full or key == full or key.startswith(full.rstrip("/") + "/"):
                    yield key[strip:]

    def list_children(self, prefix: str) -> list[str]:
        full = self._key(prefix) + "/"
        names: set[str] = set()
        for page in self._paginate("list_objects_v2", "list", Prefix=full, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                names.add(common["Prefix"][len(full):].rstrip("/"))
            for item in page.get("Contents", []):
                names.add(item["Key"][len(full):])
        return sorted(name for name in names if name)

    def versions(self, key: str) -> list[ObjectVersion]:
        full = self._key(key)
        found: list[ObjectVersion] = []
        for page in self._paginate("list_object_versions", "list versions", Prefix=full):
            for item in page.get("Versions", []):
                if item["Key"] == full:
                    found.append(
                        ObjectVersion(
                            version_id=item["VersionId"],
                            modified=item["LastModified"].isoformat(),
                            size=int(item["Size"]),
                            latest=bool(item.get("IsLatest")),
                        )
                    )
        return found

    def get_version(self, key: str, version_id: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            body = self._retry("get version", self.uri(key), lambda: self.client.get_object(
                Bucket=self.bucket, Key=self._key(key), VersionId=version_id)["Body"].read())
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise NotFound(f"{self.uri(key)} version {version_id}") from None
            raise StoreError(f"{self.uri(key)}: get version failed: {_code(exc)}") from None
        return body

    def delete(self, key: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self._retry("delete", self.uri(key),
                        lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))
        except ClientError as exc:
            raise StoreError(f"{self.uri(key)}: delete failed: {_code(exc)}") from None


def make_s3_client(endpoint_url: str | None, region: str, max_attempts: int = 10) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": max_attempts, "mode": "adaptive"},
        connect_timeout=10,
        read_timeout=120,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _transient(exc: BaseException) -> bool:
    """Whether a failed request may succeed if sent again: the server was unreachable, timed out, cut the
    connection short, or answered 5xx / throttled (after boto3's own attempts)."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        ClientError, ConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError,
    )
    from s3transfer.exceptions import RetriesExceededError

    if isinstance(exc, S3UploadFailedError):  # boto3 wraps an upload's ClientError in it
        return exc.__context__ is not None and _transient(exc.__context__)
    if isinstance(exc, ClientError):
        return _code(exc) in _TRANSIENT_CODES
    return isinstance(exc, (ConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError,
                            RetriesExceededError))


def _describe(exc: BaseException) -> str:
    """The error's type and code or message: never credentials (boto3 puts none in its messages)."""
    if hasattr(exc, "response"):
        return f"{type(exc).__name__} {_code(exc)}"
    return f"{type(exc).__name__}: {exc}"


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", {}) or {}
    code = response.get("Error", {}).get("Code")
    if code:
        return str(code)
    return str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", "unknown"))
