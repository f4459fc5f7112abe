"""The object-store interface every backend implements: keys under one prefix, atomic whole-object
writes, conditional create for commits, and the version history of overwritten keys (refs)."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


class NotFound(KeyError):
    """The key does not exist."""


class StoreError(RuntimeError):
    """The backend refused or failed a request; the message says which key and why."""


@dataclass(frozen=True)
class ObjectVersion:
    version_id: str
    modified: str  # ISO 8601, UTC
    size: int
    latest: bool


class ObjectStore(abc.ABC):
    """Keys are '/'-separated paths relative to the store's root (bucket + prefix, or a directory)."""

    @abc.abstractmethod
    def uri(self, key: str = "") -> str:
        """A URI a person can paste (s3://bucket/prefix/key or file:///...)."""

    @abc.abstractmethod
    def http_link(self, key: str) -> str | None:
        """A link a browser can open (a presigned URL on S3), for the Prefect UI."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Write an object atomically. With if_absent, never overwrite: return False if it exists."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file atomically (readers see the old object or the whole new one)."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; raises NotFound."""

    @abc.abstractmethod
    def download(self, key: str, path: Path) -> None:
        """Copy the object to a local file; raises NotFound."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of the object from byte `start` (a ranged GET on S3); raises NotFound."""

    @abc.abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size, or None if it does not exist."""

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key under prefix (recursively), in lexicographic order."""

    @abc.abstractmethod
    def list_children(self, prefix: str) -> list[str]:
        """The names directly under prefix ('a/b/' -> ['c', 'd'] for keys a/b/c/x and a/b/d)."""

    @abc.abstractmethod
    def versions(self, key: str) -> list[ObjectVersion]:
        """The key's history, newest first (S3 bucket versioning; a kept history on local disk)."""

    @abc.abstractmethod
    def get_version(self, key: str, version_id: str) -> bytes:
        """The bytes of one past version of the key."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove a key (used for scratch objects only; committed artifacts are never deleted)."""


def join_key(*parts: str) -> str:
    return "/".join(part.strip("/") for part in parts if part and part.strip("/"))
