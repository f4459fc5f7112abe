"""The artifact store, reopened inside the training processes for streaming token shards.

The training stages put `reader_settings(store)` into the run spec: the store's kind and its non-secret
settings (bucket, prefix, endpoint, region, retry budget; or a local root). Each rank calls
`open_reader(settings)` (named in the spec as `pipeline.storage.remote:open_reader`, so model/ imports
nothing of this package) and gets a store whose `download` and `get_range` are all the streaming loader
uses. S3 credentials come from the rank's environment through boto3's own chain; they are never in the
settings, the spec or a log line.
"""

from __future__ import annotations

from .base import ObjectStore
from .local import LocalStore
from .s3 import S3Store

READER = "pipeline.storage.remote:open_reader"


def reader_settings(store: ObjectStore) -> dict:
    """What a training process needs to reopen `store` (nothing secret)."""
    if isinstance(store, LocalStore):
        return {"kind": "local", "root": str(store.root), "prefix": store.prefix}
    if isinstance(store, S3Store):
        return {"kind": "s3", "bucket": store.bucket, "prefix": store.prefix, "endpoint_url": store.endpoint_url,
                "region": store.region, "max_attempts": store.max_attempts, "retry_seconds": store.retry_seconds,
                "retry_backoff_seconds": store.retry_backoff_seconds,
                "retry_max_backoff_seconds": store.retry_max_backoff_seconds}
    raise TypeError(f"cannot stream token shards from {store!r}")


def open_reader(settings: dict) -> ObjectStore:
    """The store `reader_settings` describes, credentials from this process's environment."""
    settings = dict(settings)
    kind = settings.pop("kind")
    if kind == "local":
        return LocalStore(settings["root"], settings["prefix"])
    if kind == "s3":
        store = S3Store(settings.pop("bucket"), settings.pop("prefix"), presigned_links=False, **settings)
        _ = store.client  # created once here: the loader's threads share it (boto3 clients are thread-safe)
        return store
    raise ValueError(f"unknown store kind {kind!r} in the run spec's data.stream.store")
