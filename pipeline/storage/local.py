"""A local-directory object store: the same contract as S3, for laptops and single machines.

Writes go to a temporary file in the target directory and are renamed into place, so readers never
see half an object. Conditional create uses a hard link, which fails if the name exists. An
overwritten key under a versioned prefix (refs/ by default) keeps its old content under `.history/`,
the local counterpart of S3 bucket versioning.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .base import NotFound, ObjectStore, ObjectVersion, join_key

HISTORY = ".history"


class LocalStore(ObjectStore):
    def __init__(self, root: str | Path, prefix: str = "", versioned_prefixes: tuple[str, ...] = ("refs/",)):
        self.root = Path(root).resolve()
        self.versioned_prefixes = versioned_prefixes
        self.prefix = prefix.strip("/")
        self.base = self.root / self.prefix if self.prefix else self.root
        self.base.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.base)!r})"

    def _path(self, key: str) -> Path:
        key = key.strip("/")
        if not key or ".." in key.split("/") or key.split("/")[0] == HISTORY:
            raise ValueError(f"invalid key {key!r}")
        return self.base / key

    def uri(self, key: str = "") -> str:
        return (self.base / key.strip("/")).as_uri() if key else self.base.as_uri()

    def http_link(self, key: str) -> str | None:
        return self.uri(key)

    def _staged(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        return Path(tmp)

    def _keep_history(self, key: str, path: Path) -> None:
        if path.exists() and key.strip("/").startswith(self.versioned_prefixes):
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            target = self.base / HISTORY / key.strip("/") / stamp
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        path = self._path(key)
        tmp = self._staged(path)
        try:
            tmp.write_bytes(data)
            if if_absent:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
                return True
            self._keep_history(key, path)
            os.replace(tmp, path)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        tmp = self._staged(target)
        try:
            shutil.copyfile(path, tmp)
            self._keep_history(key, target)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(self.uri(key)) from None

    def download(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise NotFound(self.uri(key))
        shutil.copyfile(source, path)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as handle:
                handle.seek(start)
                return handle.read(length)
        except FileNotFoundError:
            raise NotFound(self.uri(key)) from None

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def list(self, prefix: str = "") -> Iterator[str]:
        start = self.base / prefix.strip("/") if prefix.strip("/") else self.base
        if start.is_file():
            yield prefix.strip("/")
            return
        if not start.is_dir():
            return
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            if Path(dirpath) == self.base and HISTORY in dirnames:
                dirnames.remove(HISTORY)
            for name in filenames:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                keys.append(Path(dirpath, name).relative_to(self.base).as_posix())
        yield from sorted(keys)

    def list_children(self, prefix: str) -> list[str]:
        start = self.base / prefix.strip("/")
        if not start.is_dir():
            return []
        return sorted(
            entry.name for entry in start.iterdir()
            if entry.name != HISTORY and not (entry.name.startswith(".") and entry.name.endswith(".tmp"))
        )

    def versions(self, key: str) -> list[ObjectVersion]:
        found: list[ObjectVersion] = []
        current = self._path(key)
        if current.is_file():
            found.append(ObjectVersion("current", _mtime(current), current.stat().st_size, True))
        history = self.base / HISTORY / key.strip("/")
        if history.is_dir():
            for old in sorted(history.iterdir(), reverse=True):
                found.append(ObjectVersion(old.name, _mtime(old), old.stat().st_size, False))
        return found

    def get_version(self, key: str, version_id: str) -> bytes:
        if version_id == "current":
            return self.get_bytes(key)
        path = self.base / HISTORY / key.strip("/") / version_id
        if not path.is_file():
            raise NotFound(f"{self.uri(key)} version {version_id}")
        return path.read_bytes()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def _mtime(path: Path) -> str:
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).isoformat()


__all__ = ["LocalStore", "join_key"]
