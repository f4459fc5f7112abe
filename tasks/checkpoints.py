"""What a model phase (cpt, ift, eval) starts from: a model artifact of ours, or the user's transformers
checkpoint directory — local, or an s3:// prefix copied once into a local cache. Not a stage itself.

A user's checkpoint is checked before any work (`check_base_checkpoint`, run by the flow and by
`pretrain-pipeline validate`): a supported family, safetensors weights, a fast tokenizer, a context at
least `tokenize.seq_len` long (model/checkpoint.py says why it refuses). Its identity — one digest of
every file's sha256 — is what the versions of the stages starting from it depend on, and the
manifests record the files with their sha256 (lineage).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from model.checkpoint import CheckpointError, CheckpointInfo, inspect_checkpoint
from pipeline.artifacts import fetch_verified, files_with_role
from pipeline.config import ConfigError, PipelineConfig, StorageConfig
from pipeline.storage import ObjectStore


@dataclass(frozen=True)
class StartingModel:
    """Where a phase starts: a model artifact (`manifest`), or a checkpoint directory on disk (`checkpoint`)."""

    name: str                   # e.g. pretrain@<version>, or the directory / URI
    identity: str               # what versions depend on: an artifact version or the files' digest
    manifest: dict | None = None
    checkpoint: CheckpointInfo | None = None

    @property
    def config(self) -> dict:
        """The model's transformers config (config.json)."""
        if self.checkpoint is not None:
            return self.checkpoint.config
        return self.manifest["summary"]["model_config"]

    def lineage(self) -> dict:
        if self.checkpoint is not None:
            return {"checkpoint": self.name, "files": self.checkpoint.files}
        return {"artifact": self.manifest["artifact"], "version": self.manifest["version"]}

    def hf_dir(self, store: ObjectStore, work: Path) -> Path:
        """A local HF directory of the model (downloaded and verified for an artifact)."""
        if self.checkpoint is not None:
            return self.checkpoint.directory
        return fetch_hf_dir(store, self.manifest, work / f"{self.manifest['artifact']}-{self.manifest['version']}")


def fetch_hf_dir(store: ObjectStore, manifest: dict, directory: Path) -> Path:
    """A model artifact's hf/ files, verified, in `directory`."""
    (directory / ".download").mkdir(parents=True, exist_ok=True)
    for entry in files_with_role(manifest, "hf"):
        target = directory / entry["path"].removeprefix("hf/")
        if not target.is_file():
            fetch_verified(store, manifest, entry, directory / ".download").rename(target)
    (directory / ".download").rmdir()
    return directory


def artifact_model(manifest: dict) -> StartingModel:
    return StartingModel(f"{manifest['artifact']}@{manifest['version']}", manifest["version"], manifest=manifest)


def cache_root(work_dir: str | None) -> Path:
    root = os.environ.get("PRETRAIN_PIPELINE_CACHE") or (Path(work_dir) / "cache" if work_dir else
                                                         Path.home() / ".cache" / "pretrain-pipeline")
    return Path(root) / "checkpoints"


def local_checkpoint(reference: str, base_dir: Path, storage: StorageConfig, work_dir: str | None) -> Path:
    """The checkpoint as a local directory: a path (relative to pipeline.yaml's directory), or an s3:// prefix
    copied into the cache (once per content: the cache key includes every object's ETag)."""
    if not reference.startswith("s3://"):
        return Path(reference) if Path(reference).is_absolute() else base_dir / reference
    from pipeline.sources import split_s3_uri
    from pipeline.storage.s3 import make_s3_client

    bucket, prefix = split_s3_uri(reference)
    client = make_s3_client(storage.endpoint_url, storage.region, storage.max_attempts)
    base = prefix.rstrip("/") + "/" if prefix else ""
    listing = []  # the directory's own files, with their ETags
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        listing += [(item["Key"], item["ETag"], item["Size"]) for item in page.get("Contents", [])
                    if "/" not in item["Key"][len(base):]]
    if not listing:
        raise CheckpointError(f"{reference}: no objects under this prefix")
    digest = hashlib.sha256(json.dumps([reference, sorted(listing)]).encode()).hexdigest()[:20]
    target = cache_root(work_dir) / digest
    if not (target / ".complete").is_file():
        target.mkdir(parents=True, exist_ok=True)
        for key, _, _ in listing:
            client.download_file(bucket, key, str(target / key[len(base):]))
        (target / ".complete").write_text(reference)
    return target


def checkpoint_model(reference: str, key: str, base_dir: Path, storage: StorageConfig, seq_len: int,
                     work_dir: str | None = None) -> StartingModel:
    """The user's checkpoint as a starting model; ConfigError names `key` and the reason."""
    try:
        info = inspect_checkpoint(local_checkpoint(reference, base_dir, storage, work_dir), seq_len)
    except CheckpointError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return StartingModel(reference, f"sha256:{info.identity()}", checkpoint=info)


def base_checkpoint_key(config: PipelineConfig) -> str | None:
    """The config key naming the user's checkpoint (cpt.init or ift.init), if the run starts from one."""
    if config.base_checkpoint() is None:
        return None
    return "cpt.init" if config.cpt.enabled else "ift.init"


def check_base_checkpoint(config: PipelineConfig, base_dir: Path) -> StartingModel | None:
    """Before any work: the run's base checkpoint can be used (raises ConfigError naming the key)."""
    key = base_checkpoint_key(config)
    if key is None:
        return None
    return checkpoint_model(config.base_checkpoint(), key, base_dir, config.storage, config.tokenize.seq_len,
                            config.train.work_dir)
