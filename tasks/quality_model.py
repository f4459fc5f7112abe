"""Train the fastText quality classifier into a versioned artifact, and find a trained one for the filter.

`train_quality_model` reads the positive (high-quality) and negative examples from document artifacts
(`filter/docs`, `filter/docs@<version>`) or local files (.jsonl with a `text` field, or .txt with
one document per line; either may be .gz or .zst compressed), trains with `corpus.quality_classifier` and commits
`quality-model/<name>` with the model file and its holdout metrics; the ref `quality-model/<name>` then
points at it. The version is content-derived like every stage's, so training again on the same inputs
and settings returns the committed model. `resolve_classifier_model` turns the filter's
`classifier.model` setting into a local model file and its sha256.

Run by `pretrain-pipeline quality-model train`; no Prefect here.
"""

from __future__ import annotations

import io
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from pipeline.artifacts import (VERSION_RE, ArtifactWriter, StageSpec, fetch_verified, files_with_role, list_versions,
                                read_manifest, sha256_file)
from pipeline.config import QualityModelConfig
from corpus.quality_classifier import train_classifier
from corpus.raw_formats import open_text_stream
from pipeline.runs import get_ref, set_ref
from pipeline.storage import ObjectStore
from pipeline.units import read_shard

STAGE = "quality-model"
CODE_VERSION = "1"
TEXT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".txt", ".txt.gz", ".txt.zst")
MODEL_SUFFIXES = (".bin", ".ftz")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ExampleSource:
    """One --positive/--negative spec, resolved: a committed document artifact or a local file."""

    spec: str
    manifest: dict | None = None
    path: Path | None = None

    def identity(self) -> dict:
        if self.manifest is not None:
            return {"artifact": self.manifest["artifact"], "version": self.manifest["version"]}
        assert self.path is not None
        return {"file": self.path.name, "sha256": sha256_file(self.path)}


def resolve_example_source(store: ObjectStore, spec: str, base_dir: Path) -> ExampleSource:
    if spec.endswith(TEXT_SUFFIXES):
        path = base_dir / spec  # an absolute spec stays as it is
        if not path.is_file():
            raise FileNotFoundError(f"training examples {spec!r}: no such file {path}")
        return ExampleSource(spec, path=path)
    artifact, _, version = spec.partition("@")
    manifest = committed_manifest(store, artifact, version or None)
    if manifest is None:
        raise ValueError(f"training examples {spec!r}: no committed artifact {spec} in {store.uri()} "
                         f"(and not a file ending in {', '.join(TEXT_SUFFIXES)})")
    return ExampleSource(spec, manifest=manifest)


def committed_manifest(store: ObjectStore, artifact: str, version: str | None) -> dict | None:
    """The given version of an artifact, or its latest committed one."""
    if version is None:
        versions = list_versions(store, artifact)
        return versions[-1] if versions else None
    return read_manifest(store, artifact, version) if VERSION_RE.match(version) else None


def example_texts(store: ObjectStore, source: ExampleSource, scratch: Path) -> Iterator[str]:
    if source.path is not None:
        yield from file_texts(source.path)
        return
    manifest = source.manifest
    for entry in sorted(files_with_role(manifest, "documents"), key=lambda entry: entry["path"]):
        for batch in read_shard(store, manifest, entry, scratch, columns=["text"]):
            if "text" not in batch.schema.names:
                raise ValueError(f"training examples {source.spec!r}: {manifest['uri']} has no text column "
                                 f"(use a clean, langid, dedup or filter artifact)")
            yield from (text for text in batch.column("text").to_pylist() if text)


def file_texts(path: Path) -> Iterator[str]:
    is_jsonl = ".jsonl" in path.name
    with io.TextIOWrapper(open_text_stream(path), encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not is_jsonl:
                yield line
            elif line.strip():
                try:
                    text = json.loads(line).get("text")
                except (json.JSONDecodeError, AttributeError):
                    raise ValueError(f"{path}:{number}: not a JSON object") from None
                if isinstance(text, str):
                    yield text


def quality_model_spec(name: str, positive: list[ExampleSource], negative: list[ExampleSource],
                       settings: QualityModelConfig) -> StageSpec:
    return StageSpec(stage=STAGE, artifact=f"{STAGE}/{name}", code_version=CODE_VERSION, config=settings.versioned(),
                     inputs={"positive": [source.identity() for source in positive],
                             "negative": [source.identity() for source in negative]})


def train_quality_model(store: ObjectStore, name: str, positive: list[str], negative: list[str],
                        settings: QualityModelConfig, base_dir: Path, progress: Callable[[str], None] = print) -> dict:
    """Train `quality-model/<name>` (or find it committed), point the ref of that name at it; returns the manifest."""
    if not NAME_RE.match(name):
        raise ValueError(f"quality model name {name!r}: use letters, digits, '.', '_' and '-' (no '/')")
    if not positive or not negative:
        raise ValueError("a quality model needs at least one positive and one negative source")
    positives = [resolve_example_source(store, spec, base_dir) for spec in positive]
    negatives = [resolve_example_source(store, spec, base_dir) for spec in negative]
    spec = quality_model_spec(name, positives, negatives, settings)
    manifest = read_manifest(store, spec.artifact, spec.version)
    if manifest is not None:
        progress(f"{spec.artifact}@{spec.version} is already committed: {manifest['uri']}")
    else:
        manifest = build_quality_model(store, spec, positives, negatives, settings, progress)
    point_ref(store, manifest)
    return manifest


def build_quality_model(store: ObjectStore, spec: StageSpec, positives: list[ExampleSource],
                        negatives: list[ExampleSource], settings: QualityModelConfig,
                        progress: Callable[[str], None]) -> dict:
    writer = ArtifactWriter(store, spec)
    with tempfile.TemporaryDirectory(prefix="quality-model-") as tmp:
        scratch = Path(tmp)

        def texts(sources: list[ExampleSource]) -> Iterator[str]:
            for source in sources:
                progress(f"{spec.artifact}: reading {source.spec}")
                yield from example_texts(store, source, scratch)

        model_path, metrics = train_classifier(texts(positives), texts(negatives), settings, scratch / "train")
        metrics_path = scratch / "metrics.json"
        metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        files = [writer.put_file(model_path.name, model_path, "model"),
                 writer.put_file(metrics_path.name, metrics_path, "metrics")]
    documents = metrics["documents"]
    counts = {"positive": documents["hq"]["train"] + documents["hq"]["holdout"],
              "negative": documents["lq"]["train"] + documents["lq"]["holdout"]}
    manifest = writer.commit(files, counts, summary=metrics)
    progress(f"{spec.artifact}@{spec.version} committed: {manifest['uri']}")
    return manifest


def point_ref(store: ObjectStore, manifest: dict) -> None:
    current = get_ref(store, manifest["artifact"]) or {}
    if (current.get("artifact"), current.get("version")) != (manifest["artifact"], manifest["version"]):
        set_ref(store, manifest["artifact"], {"artifact": manifest["artifact"], "version": manifest["version"],
                                              "uri": manifest["uri"]})


def resolve_classifier_model(store: ObjectStore, reference: str, base_dir: Path, scratch: Path) -> tuple[Path, str]:
    """The filter's `classifier.model` -> (local model file, its sha256). `reference` is a local .bin/.ftz
    path, `quality-model/<name>@<version>`, a bare version of `quality-model/default`, or a ref name."""
    if reference.endswith(MODEL_SUFFIXES):
        path = base_dir / reference
        if not path.is_file():
            raise FileNotFoundError(f"quality model {reference!r}: no such file {path}")
        return path, sha256_file(path)
    manifest = model_manifest(store, reference)
    entry = next(files_with_role(manifest, "model"), None)
    if entry is None:
        raise ValueError(f"quality model {reference!r}: {manifest['uri']} has no file with role 'model'")
    return fetch_verified(store, manifest, entry, scratch), entry["sha256"]


def model_manifest(store: ObjectStore, reference: str) -> dict:
    if VERSION_RE.match(reference):
        reference = f"{STAGE}/default@{reference}"
    if "@" in reference:
        artifact, _, version = reference.partition("@")
    else:
        ref = get_ref(store, reference)
        if ref is None:
            raise ValueError(f"quality model {reference!r}: no ref of that name in {store.uri()} (expected a ref such "
                             f"as quality-model/default, quality-model/<name>@<version> or a .bin/.ftz path)")
        artifact, version = ref["artifact"], ref["version"]
    manifest = read_manifest(store, artifact, version) if VERSION_RE.match(version) else None
    if manifest is None:
        raise ValueError(f"quality model {reference!r}: {artifact}@{version} is not committed in {store.uri()}")
    return manifest
