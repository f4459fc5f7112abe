"""Resolve a configured source (local path or s3:// URI) into its input files, with content fingerprints.

The fingerprints feed the ingest artifact's version, so a changed, added or removed input file gives
a new version and an unchanged source is skipped. Local files are fingerprinted by sha256 of their
bytes (a clone or copy of the same data gets the same version); S3 objects by ETag and size, which
S3 derives from the content.

A listed name that cannot be read (a dangling symbolic link, a loop of links, permission denied) is
not skipped: it is listed with its `error`, and ingest quarantines it as `unreadable_file`, like a
file that vanishes between listing and reading. `check_location` is what `validate` runs: whether a
source's location exists and can be read, before any work starts.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .artifacts import sha256_file
from .config import HtmlSource, JsonlSource, StorageConfig, WarcSource

DEFAULT_INCLUDE = {
    "warc": ["*.warc", "*.warc.gz"],
    "jsonl": ["*.jsonl", "*.jsonl.gz", "*.jsonl.zst", "*.json.gz", "*.json.zst", "*.ndjson"],
    # saved pages, and the same compressed as crawl dumps store them (decoded under ingest's caps)
    "html": [f"*.{ext}{suffix}" for ext in ("html", "htm", "xhtml", "shtml") for suffix in ("", ".gz", ".zst")],
}


class SourceError(RuntimeError):
    """A source cannot be read at all (missing location, no matching files, access denied)."""


@dataclass(frozen=True)
class InputFile:
    relpath: str
    location: str  # an absolute local path or s3://bucket/key
    size: int
    fingerprint: str
    error: str | None = None  # why the file cannot be read (it is quarantined as unreadable_file)

    @property
    def is_s3(self) -> bool:
        return self.location.startswith("s3://")


def _matches(relpath: str, patterns: list[str]) -> bool:
    name = relpath.rsplit("/", 1)[-1]
    if name.startswith("."):
        return False
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(relpath, p) for p in patterns)


def split_s3_uri(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise SourceError(f"{uri}: not an s3://bucket/prefix URI")
    return bucket, key


def list_inputs(source: WarcSource | JsonlSource | HtmlSource, storage: StorageConfig,
                base_dir: Path | None = None) -> list[InputFile]:
    """Every input file of a source, sorted by relative path. Raises SourceError if there are none."""
    patterns = source.include or DEFAULT_INCLUDE[source.kind]
    try:
        if source.location.startswith("s3://"):
            files = _list_s3(source.location, patterns, source.endpoint_url or storage.endpoint_url, storage)
        else:
            files = _list_local(source.location, patterns, base_dir)
    except SourceError as exc:
        raise SourceError(f"sources.{source.name}.location: {exc}") from None
    if not files:
        raise SourceError(f"sources.{source.name}.location: no input files matching {patterns} at {source.location}")
    return files


def check_location(source: WarcSource | JsonlSource | HtmlSource, storage: StorageConfig,
                   base_dir: Path | None = None) -> None:
    """Raise SourceError, naming `sources.<name>.location`, unless the location exists and can be read: a
    local file or directory, or an s3:// prefix that lists at least one object. Missing S3 credentials
    raise botocore's NoCredentialsError."""
    key = f"sources.{source.name}.location"
    if source.location.startswith("s3://"):
        from botocore.exceptions import ClientError

        from .storage.s3 import make_s3_client

        bucket, prefix = split_s3_uri(source.location)
        client = make_s3_client(source.endpoint_url or storage.endpoint_url, storage.region, storage.max_attempts)
        try:
            listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            problem = f"the bucket {bucket!r} does not exist" if code == "NoSuchBucket" else f"cannot list it: {code}"
            raise SourceError(f"{key}: {source.location}: {problem}") from None
        if not listing.get("KeyCount"):
            raise SourceError(f"{key}: {source.location}: no objects under this prefix")
        return
    root = Path(source.location)
    if not root.is_absolute() and base_dir is not None:
        root = base_dir / root
    if not root.exists():
        raise SourceError(f"{key}: {source.location} does not exist (resolved to {root.resolve()})")
    if not os.access(root, os.R_OK | (os.X_OK if root.is_dir() else 0)):
        raise SourceError(f"{key}: {source.location} is not readable (permission denied)")


def why_unreadable(path: Path, exc: OSError) -> str:
    """A short reason a listed file cannot be read."""
    if exc.errno == errno.ENOENT and path.is_symlink():
        return f"a dangling symbolic link (to {os.readlink(path)}: no such file)"
    if exc.errno == errno.ENOENT:
        return "no such file (it vanished between listing and reading)"
    if exc.errno == errno.ELOOP:
        return "a loop of symbolic links"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"{exc.strerror or type(exc).__name__} (errno {exc.errno})"


def _local_file(path: Path, relpath: str) -> InputFile:
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        return InputFile(relpath, str(path), path.stat().st_size, sha256_file(path))
    except OSError as exc:
        reason = why_unreadable(path, exc)
        return InputFile(relpath, str(path), 0, f"unreadable:{reason}", error=reason)


def _list_local(location: str, patterns: list[str], base_dir: Path | None) -> list[InputFile]:
    root = Path(location)
    if not root.is_absolute() and base_dir is not None:
        root = base_dir / root
    root = root.resolve()
    if root.is_file():
        return [_local_file(root, root.name)]
    if not root.is_dir():
        raise SourceError(f"{location}: no such file or directory (resolved to {root})")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath, name)
            relpath = path.relative_to(root).as_posix()
            if _matches(relpath, patterns):
                found.append(_local_file(path, relpath))
    return sorted(found, key=lambda f: f.relpath)


def _list_s3(location: str, patterns: list[str], endpoint_url: str | None, storage: StorageConfig) -> list[InputFile]:
    from botocore.exceptions import ClientError

    from .storage.s3 import make_s3_client

    bucket, prefix = split_s3_uri(location)
    client = make_s3_client(endpoint_url, storage.region, storage.max_attempts)
    found = []
    base = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key == prefix:  # the location names one object
                    relpath = key.rsplit("/", 1)[-1]
                elif key.startswith(base):  # an object under the location, never a sibling like crawl-old/
                    relpath = key[len(base):]
                else:
                    continue
                if relpath and _matches(relpath, patterns):
                    fingerprint = f"etag:{item['ETag'].strip(chr(34))}:{item['Size']}"
                    found.append(InputFile(relpath, f"s3://{bucket}/{key}", int(item["Size"]), fingerprint))
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise SourceError(f"{location}: cannot list: {code}") from None
    return sorted(found, key=lambda f: f.relpath)


@contextlib.contextmanager
def local_copy(file: InputFile, endpoint_url: str | None, storage: StorageConfig,
               scratch_dir: str | None = None) -> Iterator[Path]:
    """A local path holding the file's bytes (the file itself, or a temporary download from S3)."""
    if not file.is_s3:
        yield Path(file.location)
        return
    from .storage.s3 import make_s3_client

    bucket, key = split_s3_uri(file.location)
    client = make_s3_client(endpoint_url, storage.region, storage.max_attempts)
    suffix = "".join(Path(key).suffixes[-2:])
    with tempfile.NamedTemporaryFile(dir=scratch_dir, suffix=suffix) as handle:
        client.download_file(bucket, key, handle.name)
        yield Path(handle.name)
