"""Versioned, immutable artifacts: content-derived versions, data first and manifest last, verified reads.

Layout in the store:

    artifacts/<artifact>/<version>/manifest.json   written last, with a conditional create
    artifacts/<artifact>/<version>/<files...>      data shards, side outputs (e.g. quarantine/)
    artifacts/<artifact>/<version>/parts/<unit>.json  bookkeeping of finished work units (resume)

`<artifact>` is the stage name, or `<stage>/<partition>` for stages that write one artifact per
partition (ingest writes one per source). The version is a hash of what determines the output:
stage, code version, the stage's config, and the versions of its inputs. A version directory
without manifest.json does not exist for readers. The manifest's `build` says who built it: git sha,
package version, commit time, and the flow run (`built_by`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import re
import resource
import subprocess
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .storage import NotFound, ObjectStore, join_key

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "pretrain-pipeline/manifest/v1"
VERSION_RE = re.compile(r"^[0-9a-f]{20}$")
ARTIFACTS = "artifacts"
# The stages in DAG order (flows/dag.py wires them so; Prefect artifact keys and reports sort by it).
STAGES = ("ingest", "clean", "langid", "dedup", "filter", "tokenizer", "tokens", "mixture", "pretrain", "cpt", "ift",
          "eval")

log = logging.getLogger(__name__)


class IntegrityError(RuntimeError):
    """A file read from an artifact does not match the size or sha256 its manifest records."""


class AlreadyCommitted(RuntimeError):
    """An attempt to write into a version that is already committed (artifacts are immutable)."""


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


@dataclass(frozen=True)
class StageSpec:
    """Everything that determines a stage's output; its hash is the artifact version."""

    stage: str
    artifact: str
    code_version: str
    config: dict[str, Any]
    inputs: dict[str, Any]
    rebuild: str | None = None  # set by a forced rebuild: a new version instead of overwriting

    def identity(self) -> dict[str, Any]:
        identity = {
            "stage": self.stage,
            "artifact": self.artifact,
            "code_version": self.code_version,
            "config": self.config,
            "inputs": self.inputs,
        }
        if self.rebuild:
            identity["rebuild"] = self.rebuild
        return identity

    @functools.cached_property
    def version(self) -> str:
        return hashlib.sha256(canonical_json(self.identity())).hexdigest()[:20]

    @property
    def prefix(self) -> str:
        return artifact_prefix(self.artifact, self.version)


def artifact_prefix(artifact: str, version: str) -> str:
    return join_key(ARTIFACTS, artifact, version)


def sha256_file(path: Path, chunk: int = 4 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def committed(store: ObjectStore, prefix: str) -> bool:
    return store.exists(join_key(prefix, MANIFEST))


def upload_file(store: ObjectStore, prefix: str, relpath: str, local: Path, role: str, **extra: Any) -> dict:
    """Upload one data file of an uncommitted artifact; returns its manifest entry.

    If the version got committed meanwhile (a concurrent run of the same stage finished first), nothing
    is written: a committed artifact is never modified, even by a build whose bytes would differ."""
    entry = {"path": relpath, "role": role, "bytes": local.stat().st_size, "sha256": sha256_file(local)}
    entry.update(extra)
    if committed(store, prefix):
        log.info("%s is already committed (by a concurrent run); %s not written", store.uri(prefix), relpath)
        return entry
    store.put_file(join_key(prefix, relpath), local)
    return entry


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children that ended and were waited for (a
    trainer subprocess, a launcher's ranks)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class ArtifactWriter:
    """Writes one version of an artifact: files and finished units first, the manifest last.

    The manifest's summary gets `cpu_s`: the CPU seconds spent from the writer's creation to the commit in
    this process and its waited-for subprocesses, plus `units_cpu_s` (what work units running in other
    processes reported, pipeline/units.py). A stage runs alone in its flow run's process, so that is the
    stage's cost (what the ablation reports, and what a Cached stage saved)."""

    def __init__(self, store: ObjectStore, spec: StageSpec):
        self.store = store
        self.spec = spec
        self.prefix = spec.prefix
        self._cpu_started = cpu_seconds()
        self.units_cpu_s = 0.0
        if store.exists(join_key(self.prefix, MANIFEST)):
            raise AlreadyCommitted(f"{store.uri(self.prefix)} is committed and immutable")

    def put_file(self, relpath: str, local: Path, role: str, **extra: Any) -> dict:
        return upload_file(self.store, self.prefix, relpath, local, role, **extra)

    def finished_unit(self, unit: str) -> dict | None:
        """The record of a work unit finished by an earlier, interrupted attempt, if any."""
        try:
            record = json.loads(self.store.get_bytes(join_key(self.prefix, "parts", f"{unit}.json")))
        except NotFound:
            return None
        for entry in record.get("files", []):
            if self.store.size(join_key(self.prefix, entry["path"])) != entry["bytes"]:
                return None
        return record

    def finish_unit(self, unit: str, record: dict) -> None:
        if committed(self.store, self.prefix):
            return  # a concurrent run committed this version first: its prefix is not written again
        self.store.put_bytes(join_key(self.prefix, "parts", f"{unit}.json"), canonical_json(record))

    def commit(self, files: list[dict], counts: dict, *, summary: dict | None = None, build: dict | None = None) -> dict:
        """Write manifest.json with a conditional create; the artifact becomes visible now."""
        summary = dict(summary or {})
        summary.setdefault("cpu_s", round(cpu_seconds() - self._cpu_started + self.units_cpu_s, 3))
        manifest = {
            "schema": MANIFEST_SCHEMA,
            **self.spec.identity(),
            "version": self.spec.version,
            "uri": self.store.uri(self.prefix),
            "files": sorted(files, key=lambda entry: entry["path"]),
            "counts": counts,
            "summary": summary,
            "build": {**build_info(), **(build or {})},
        }
        if not self.store.put_bytes(join_key(self.prefix, MANIFEST), _pretty_json(manifest), if_absent=True):
            # Another run committed the same version first; theirs stands (same inputs, same data), and
            # this build wrote nothing into it after its commit (upload_file, finish_unit).
            existing = read_manifest(self.store, self.spec.artifact, self.spec.version)
            assert existing is not None
            theirs = {(entry["path"], entry["sha256"]) for entry in existing["files"]}
            if theirs != {(entry["path"], entry["sha256"]) for entry in manifest["files"]}:
                log.warning("%s: a concurrent build committed this version first with different bytes (a "
                            "non-deterministic stage); the committed artifact stands", existing["uri"])
            return existing
        return manifest


def _pretty_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode()


@functools.lru_cache(maxsize=1)
def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


# What the caller knows about the build that the writer does not: the flow run building it
# (tasks/stage.py sets it around every stage's build).
_BUILT_BY: ContextVar[dict] = ContextVar("built_by", default={})


@contextlib.contextmanager
def built_by(**fields: Any) -> Iterator[None]:
    """Record `fields` (e.g. flow_run_id, flow_run_name) in the `build` of every manifest committed inside."""
    token = _BUILT_BY.set({**_BUILT_BY.get(), **fields})
    try:
        yield
    finally:
        _BUILT_BY.reset(token)


def build_info() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("pretrain-pipeline")
    except PackageNotFoundError:
        package = None
    return {
        "git_sha": _git_sha(),
        "package_version": package,
        "committed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **_BUILT_BY.get(),
    }


# ---------------------------------------------------------------------------------------------
# Reading


def read_manifest(store: ObjectStore, artifact: str, version: str) -> dict | None:
    """The manifest of a committed version, or None (an uncommitted prefix does not exist)."""
    try:
        return json.loads(store.get_bytes(join_key(artifact_prefix(artifact, version), MANIFEST)))
    except NotFound:
        return None


def list_versions(store: ObjectStore, artifact: str) -> list[dict]:
    """Committed versions of an artifact, oldest commit first."""
    manifests = []
    for name in store.list_children(join_key(ARTIFACTS, artifact)):
        if VERSION_RE.match(name) and (manifest := read_manifest(store, artifact, name)):
            manifests.append(manifest)
    return sorted(manifests, key=lambda m: m.get("build", {}).get("committed_at", ""))


def list_artifacts(store: ObjectStore) -> list[str]:
    """Artifact names (`stage` or `stage/partition`) that have at least one version directory."""
    names = []
    for stage in store.list_children(ARTIFACTS):
        children = store.list_children(join_key(ARTIFACTS, stage))
        if any(VERSION_RE.match(child) for child in children):
            names.append(stage)
        for child in children:
            if not VERSION_RE.match(child):
                names.append(f"{stage}/{child}")
    return names


def files_with_role(manifest: dict, role: str) -> Iterator[dict]:
    return (entry for entry in manifest["files"] if entry["role"] == role)


def fetch_verified(store: ObjectStore, manifest: dict, entry: dict, dest_dir: Path) -> Path:
    """Download one file of a committed artifact and check its size and sha256 against the manifest."""
    dest = Path(dest_dir) / entry["path"].replace("/", "__")
    store.download(join_key(artifact_prefix(manifest["artifact"], manifest["version"]), entry["path"]), dest)
    size = dest.stat().st_size
    digest = sha256_file(dest)
    if size != entry["bytes"] or digest != entry["sha256"]:
        dest.unlink(missing_ok=True)
        raise IntegrityError(
            f"{manifest['uri']}/{entry['path']}: expected {entry['bytes']} bytes sha256 {entry['sha256'][:12]}…, "
            f"got {size} bytes sha256 {digest[:12]}…"
        )
    return dest
