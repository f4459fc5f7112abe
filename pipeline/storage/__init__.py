"""Object storage for artifacts: one interface (ObjectStore), an S3 and a local-directory backend."""

from __future__ import annotations

from ..config import StorageConfig
from .base import NotFound, ObjectStore, ObjectVersion, StoreError, join_key
from .local import LocalStore
from .s3 import S3Store


def open_store(config: StorageConfig, *, ensure: bool = True) -> ObjectStore:
    """The store pipeline.yaml's storage section describes (the bucket is created if allowed)."""
    if config.backend == "local":
        return LocalStore(config.local_root, config.prefix)
    store = S3Store(
        config.bucket,
        config.prefix,
        endpoint_url=config.endpoint_url,
        region=config.region,
        max_attempts=config.max_attempts,
        multipart_threshold_mb=config.multipart_threshold_mb,
        retry_seconds=config.retry_seconds,
        retry_backoff_seconds=config.retry_backoff_seconds,
        retry_max_backoff_seconds=config.retry_max_backoff_seconds,
        presigned_links=config.presigned_links,
    )
    if ensure and config.create_bucket:
        store.ensure_bucket()
    return store


__all__ = [
    "LocalStore", "NotFound", "ObjectStore", "ObjectVersion", "S3Store", "StoreError", "join_key", "open_store",
]
