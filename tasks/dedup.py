"""Dedup stage: the langid documents of every source -> one artifact without exact or near duplicates.

Three passes, each resumable:

1. signatures (parallel, one unit per input shard): per document the exact key (128-bit hash of its
   normalised tokens) and the MinHash LSH band keys, written to `signatures/<unit>.parquet`, one
   column per band;
2. clusters (one process): band by band, the keys of all documents (and of the index of earlier runs
   named by `against`) are sorted and equal keys are joined in a union-find; each cluster keeps one
   representative (`keep`: first, longest or earliest; documents of earlier runs always win) and the
   others are listed in `duplicates.parquet` with their cluster id (the representative's id), its
   source and the cluster's size;
3. write (parallel): the kept documents go to `data/<source>/`, the removed ones to `removed/` with
   the reason (`exact_duplicate`, `near_duplicate`, `duplicate_of_earlier_run`) and their cluster, and
   the kept documents' keys to `index/`, which later runs dedup against.

Memory: pass 2 reads one band at a time, holding about 40 bytes per document (a band's keys, their
sort order, the union-find parents and the representative sort keys); signatures stay on disk.

The core (`run_dedup` and the pass functions) knows nothing of Prefect; `dedup_task` is the thin task.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.artifacts import ArtifactWriter, StageSpec, fetch_verified, files_with_role, read_manifest, upload_file
from pipeline.config import DedupConfig
from corpus.minhash import MinHasher, exact_key, token_hashes
from pipeline.runs import get_ref
from pipeline.shards import LANGID_SCHEMA, QUARANTINE_SCHEMA
from pipeline.storage import ObjectStore
from pipeline.units import UnitOutput, commit_units, read_shard, resolve_writer_thread, run_units, shard_units
from prefect import task
from prefect.cache_policies import NO_CACHE

from .stage import RunContext, execute_stage, upstream_manifest

STAGE = "dedup"
CODE_VERSION = "1"
EXACT = "exact_duplicate"
NEAR = "near_duplicate"
EARLIER = "duplicate_of_earlier_run"
CLUSTERS_PART = "clusters"
DUPLICATES_FILE = "duplicates.parquet"


def band_columns(bands: int) -> list[str]:
    return [f"band_{index:03d}" for index in range(bands)]


def signature_schema(bands: int) -> pa.Schema:
    return pa.schema([
        pa.field("row", pa.int64(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("length", pa.int64(), nullable=False),
        pa.field("fetch_date", pa.timestamp("us", tz="UTC")),
        pa.field("exact", pa.binary(16), nullable=False),
        pa.field("has_signature", pa.bool_(), nullable=False),
        *[pa.field(name, pa.uint64(), nullable=False) for name in band_columns(bands)],
    ])


DUPLICATES_SCHEMA = pa.schema([
    pa.field("unit", pa.string(), nullable=False),
    pa.field("row", pa.int64(), nullable=False),
    pa.field("id", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("cluster", pa.string(), nullable=False),
    pa.field("representative_source", pa.string(), nullable=False),
    pa.field("cluster_size", pa.int64(), nullable=False),
])


@dataclass(frozen=True)
class DedupUnit:
    """One langid shard of one source."""

    key: str
    source: str
    manifest: dict
    entry: dict

    @property
    def size(self) -> int:
        return self.entry["bytes"]


def dedup_units(inputs: dict[str, dict]) -> list[DedupUnit]:
    """Units in input order: sources as configured, then shards in path order (this order is `first`)."""
    return [DedupUnit(f"{source}.{unit.key}", source, manifest, unit.entry)
            for source, manifest in inputs.items() for unit in shard_units(manifest)]


@dataclass(frozen=True)
class DedupJob:
    settings: DedupConfig
    store: ObjectStore
    spec: StageSpec

    @property
    def prefix(self) -> str:
        return self.spec.prefix

    def own(self) -> dict:
        """Enough of this artifact's manifest for fetch_verified to read its files before the commit."""
        return {"artifact": self.spec.artifact, "version": self.spec.version, "uri": self.store.uri(self.prefix)}


def hasher(settings: DedupConfig) -> MinHasher:
    return MinHasher(num_perm=settings.num_perm, bands=settings.bands, rows=settings.rows, ngram=settings.ngram,
                     seed=settings.seed, scheme=settings.scheme)


# ---------------------------------------------------------------------------------------------
# Pass 1: signatures


def signature_unit(job: DedupJob, unit: DedupUnit) -> dict:
    settings = job.settings
    minhash = hasher(settings)
    schema = signature_schema(settings.bands)
    columns: dict[str, list] = {name: [] for name in schema.names}
    empty_bands = [0] * settings.bands
    with tempfile.TemporaryDirectory(dir=settings.scratch_dir, prefix="dedup-") as scratch:
        row = 0
        for batch in read_shard(job.store, unit.manifest, unit.entry, Path(scratch),
                                columns=["id", "source", "fetch_date", "text", "lang"]):
            for doc in batch.to_pylist():
                hashes = token_hashes(doc["text"], chars=doc["lang"] in settings.char_ngram_languages)
                signature = minhash.signature_of_hashes(hashes) if settings.near else None
                keys = minhash.band_keys(signature) if signature is not None else empty_bands
                for name, value in (("row", row), ("id", doc["id"]), ("source", doc["source"]),
                                    ("length", len(doc["text"])), ("fetch_date", doc["fetch_date"]),
                                    ("exact", exact_key(hashes)), ("has_signature", signature is not None)):
                    columns[name].append(value)
                for name, key in zip(band_columns(settings.bands), keys):
                    columns[name].append(key)
                row += 1
        path = Path(scratch) / f"{unit.key}.parquet"
        pq.write_table(pa.table(columns, schema=schema), path, compression="zstd")
        entry = upload_file(job.store, job.prefix, f"signatures/{unit.key}.parquet", path, "signatures",
                            rows=row, source=unit.source, unit=unit.key)
    return {"unit": unit.key, "files": [entry], "counts": {"documents_in": row}}


# ---------------------------------------------------------------------------------------------
# Pass 2: clusters


@dataclass
class IndexPart:
    """A signature or index file, downloaded: its rows get global numbers offset..offset+rows-1."""

    path: Path
    unit: str | None  # None for a file of an earlier run's index
    rows: int
    offset: int = 0


def earlier_index(store: ObjectStore, version: str | None) -> list[dict]:
    """The index/ entries of the dedup artifact `version` and of every earlier run it was deduped against."""
    manifests = []
    while version:
        manifest = read_manifest(store, STAGE, version)
        if manifest is None:
            raise RuntimeError(f"dedup.against: dedup artifact version {version} is not committed in {store.uri()}")
        manifests.append(manifest)
        version = manifest["inputs"].get("against")
    return [dict(entry, manifest=manifest) for manifest in manifests for entry in files_with_role(manifest, "index")]


class UnionFind:
    def __init__(self, size: int):
        self.parent = np.arange(size, dtype=np.int64)

    def find(self, node: int) -> int:
        parent = self.parent
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def union_runs(self, keys: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Join every group of equal keys (rows where `valid` is False take no part)."""
        candidates = np.flatnonzero(valid) if valid is not None else np.arange(len(keys))
        order = candidates[np.argsort(keys[candidates], kind="stable")]
        sorted_keys = keys[order]
        same = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
        for position in same:
            first, second = self.find(int(order[position])), self.find(int(order[position + 1]))
            if first != second:
                self.parent[max(first, second)] = min(first, second)

    def roots(self) -> np.ndarray:
        parent = self.parent
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent = grand


def read_column(parts: list[IndexPart], column: str) -> np.ndarray:
    return np.concatenate([pq.read_table(part.path, columns=[column]).column(0).to_numpy(zero_copy_only=False)
                           for part in parts]) if parts else np.zeros(0)


def names_of(parts: list[IndexPart], numbers: np.ndarray) -> dict[int, tuple[str, str]]:
    """(id, source) of the given global row numbers, reading only the files that hold them."""
    names: dict[int, tuple[str, str]] = {}
    for part in parts:
        wanted = numbers[(numbers >= part.offset) & (numbers < part.offset + part.rows)]
        if len(wanted):
            table = pq.read_table(part.path, columns=["id", "source"]).take(pa.array(wanted - part.offset))
            for number, doc_id, source in zip(wanted.tolist(), table.column(0).to_pylist(),
                                              table.column(1).to_pylist()):
                names[number] = (doc_id, source)
    return names


def exact_keys(parts: list[IndexPart]) -> np.ndarray:
    """The 128-bit exact keys as one sortable uint64 pair per row, viewed as a structured array."""
    raw = b"".join(b"".join(pq.read_table(part.path, columns=["exact"]).column(0).to_pylist()) for part in parts)
    return np.frombuffer(raw, dtype=np.dtype([("high", "<u8"), ("low", "<u8")]))


def find_clusters(settings: DedupConfig, parts: list[IndexPart], new_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(root of every row, representative of every row's cluster); rows >= new_rows are earlier runs'."""
    total = sum(part.rows for part in parts)
    union = UnionFind(total)
    if settings.exact:
        keys = exact_keys(parts)
        union.union_runs(keys)
    if settings.near:
        valid = read_column(parts, "has_signature").astype(bool)  # texts without tokens have no signature
        for column in band_columns(settings.bands):
            union.union_runs(read_column(parts, column).astype(np.uint64), valid)
    roots = union.roots()
    earlier = np.arange(total) >= new_rows
    if settings.keep == "longest":
        rank = -read_column(parts, "length").astype(np.int64)
    elif settings.keep == "earliest":
        dates = pa.chunked_array([pq.read_table(p.path, columns=["fetch_date"]).column(0) for p in parts])
        rank = dates.cast(pa.int64()).fill_null(np.iinfo(np.int64).max).to_numpy()
    else:
        rank = np.zeros(total, dtype=np.int64)
    # Per cluster, the first row ordered by (earlier run first, rule, input order) is kept.
    order = np.lexsort((np.arange(total), rank, ~earlier, roots))
    first_of_cluster = np.ones(total, dtype=bool)
    first_of_cluster[1:] = roots[order][1:] != roots[order][:-1]
    representative = np.empty(total, dtype=np.int64)
    representative[roots[order][first_of_cluster]] = order[first_of_cluster]
    return roots, representative[roots]


def cluster_pass(job: DedupJob, writer: ArtifactWriter, signature_entries: list[dict],
                 progress: Callable[[str], None], against: str | None) -> dict:
    """Find the clusters, upload duplicates.parquet; returns its manifest entry and the cluster counts."""
    if (done := writer.finished_unit(CLUSTERS_PART)) is not None:
        progress("dedup: clusters already found by an earlier attempt")
        return done
    started = time.monotonic()
    settings = job.settings
    with tempfile.TemporaryDirectory(dir=settings.scratch_dir, prefix="dedup-clusters-") as scratch:
        scratch_path = Path(scratch)
        parts: list[IndexPart] = []
        for entry in signature_entries:
            parts.append(IndexPart(fetch_verified(job.store, job.own(), entry, scratch_path), entry["unit"],
                                   entry["rows"]))
        new_rows = sum(part.rows for part in parts)
        for entry in earlier_index(job.store, against):
            # one folder per earlier version: runs over the same units have files of the same name
            earlier = scratch_path / "earlier" / entry["manifest"]["version"]
            earlier.mkdir(parents=True, exist_ok=True)
            parts.append(IndexPart(fetch_verified(job.store, entry["manifest"], entry, earlier), None, entry["rows"]))
        offset = 0
        for part in parts:
            part.offset, offset = offset, offset + part.rows
        roots, representative = find_clusters(settings, parts, new_rows)
        sizes = np.bincount(roots, minlength=offset)
        duplicates = np.flatnonzero(representative[:new_rows] != np.arange(new_rows))
        named = names_of(parts, np.union1d(duplicates, representative[duplicates]))
        exact = exact_keys(parts)
        rows: dict[str, list] = {name: [] for name in DUPLICATES_SCHEMA.names}
        counts: dict[str, Any] = {"clusters": int(np.count_nonzero((sizes > 1) & (np.arange(offset) == roots))),
                                  "earlier_index_documents": offset - new_rows}
        part_of = np.searchsorted([part.offset for part in parts], duplicates, side="right") - 1
        for number, part_index in zip(duplicates.tolist(), part_of.tolist()):
            part = parts[part_index]
            keeper = int(representative[number])
            reason = EARLIER if keeper >= new_rows else (EXACT if exact[keeper] == exact[number] else NEAR)
            for name, value in (("unit", part.unit), ("row", number - part.offset), ("id", named[number][0]),
                                ("reason", reason), ("cluster", named[keeper][0]),
                                ("representative_source", named[keeper][1]),
                                ("cluster_size", int(sizes[roots[number]]))):
                rows[name].append(value)
        path = scratch_path / DUPLICATES_FILE
        pq.write_table(pa.table(rows, schema=DUPLICATES_SCHEMA), path, compression="zstd")
        entry = writer.put_file(DUPLICATES_FILE, path, "duplicates", rows=len(rows["id"]))
    record = {"files": [entry], "counts": counts}
    writer.finish_unit(CLUSTERS_PART, record)
    progress(f"dedup: {counts['clusters']} clusters, {len(rows['id'])} duplicates among {new_rows} documents "
             f"(+{offset - new_rows} from earlier runs) in {time.monotonic() - started:.1f} s")
    return record


# ---------------------------------------------------------------------------------------------
# Pass 3: write


@dataclass(frozen=True)
class WriteUnit:
    key: str
    unit: DedupUnit
    signatures: dict  # the unit's signature file entry
    duplicates: dict  # the artifact's duplicates.parquet entry

    @property
    def size(self) -> int:
        return self.unit.size


def duplicates_of(path: Path, unit: str) -> dict[int, dict]:
    table = pq.read_table(path, filters=[("unit", "=", unit)])
    return {row["row"]: row for row in table.to_pylist()}


def write_unit(job: DedupJob, work: WriteUnit) -> dict:
    settings = job.settings
    unit = work.unit
    counts: dict[str, Any] = {"documents_in": 0, "documents": 0, "removed": {}, "sources": {}}
    per_source = counts["sources"].setdefault(unit.source, {"documents_in": 0, "documents": 0})
    with UnitOutput(job.store, job.prefix, unit.key, settings, STAGE) as out:
        removed_rows = duplicates_of(fetch_verified(job.store, job.own(), work.duplicates, out.scratch), unit.key)
        kept = out.writer(f"data/{unit.source}", LANGID_SCHEMA, "documents", "text",
                          background=resolve_writer_thread("auto", settings.workers), source=unit.source)
        removed = out.writer("removed", QUARANTINE_SCHEMA, "removed", "sample")
        row = 0
        for batch in read_shard(job.store, unit.manifest, unit.entry, out.scratch):
            for doc in batch.to_pylist():
                counts["documents_in"] += 1
                per_source["documents_in"] += 1
                duplicate = removed_rows.get(row)
                row += 1
                if duplicate is None:
                    counts["documents"] += 1
                    per_source["documents"] += 1
                    kept.add(tuple(doc[name] for name in LANGID_SCHEMA.names))
                    continue
                reason = duplicate["reason"]
                counts["removed"][reason] = counts["removed"].get(reason, 0) + 1
                removed.add((doc["source"], doc["id"], reason,
                             f"cluster {duplicate['cluster']} (kept in {duplicate['representative_source']}, "
                             f"{duplicate['cluster_size']} documents)",
                             len(doc["text"]), doc["text"].encode()[: settings.removed_sample_bytes]))
        signatures = pq.read_table(fetch_verified(job.store, job.own(), work.signatures, out.scratch))
        keep = np.ones(signatures.num_rows, dtype=bool)
        keep[list(removed_rows)] = False
        index_path = out.scratch / f"index-{unit.key}.parquet"
        pq.write_table(signatures.filter(pa.array(keep)), index_path, compression="zstd")
        index = upload_file(job.store, job.prefix, f"index/{unit.key}.parquet", index_path, "index",
                            rows=int(keep.sum()), source=unit.source)
        files = out.close() + [index]
    return {"unit": work.key, "files": files, "counts": counts}


# ---------------------------------------------------------------------------------------------
# The stage


def resolve_against(store: ObjectStore, against: str | None) -> str | None:
    """`dedup.against` as a committed dedup version (a version, or a ref name pointing at one)."""
    if against is None:
        return None
    import re

    if re.fullmatch(r"[0-9a-f]{20}", against):
        version = against
    else:
        ref = get_ref(store, against)
        if ref is None:
            raise RuntimeError(f"dedup.against: no ref named {against!r} in {store.uri()} (and not a version)")
        if ref.get("artifact") != STAGE:
            raise RuntimeError(f"dedup.against: ref {against!r} points at {ref.get('artifact')}, not at a dedup "
                               f"artifact")
        version = ref["version"]
    if read_manifest(store, STAGE, version) is None:
        raise RuntimeError(f"dedup.against: dedup version {version} is not committed in {store.uri()}")
    return version


def dedup_spec(settings: DedupConfig, inputs: dict[str, dict], against: str | None,
               rebuild: str | None = None) -> StageSpec:
    config = settings.versioned()
    config.pop("against")  # the resolved version is an input instead
    return StageSpec(stage=STAGE, artifact=STAGE, code_version=CODE_VERSION, config=config,
                     inputs={**{manifest["artifact"]: manifest["version"] for manifest in inputs.values()},
                             "against": against},
                     rebuild=rebuild)


def run_dedup(settings: DedupConfig, store: ObjectStore, spec: StageSpec, inputs: dict[str, dict],
              progress: Callable[[str], None] = print) -> dict:
    """Dedup the documents of `inputs` ({source: langid manifest}) and commit; returns the manifest."""
    started = time.monotonic()
    writer = ArtifactWriter(store, spec)
    against = spec.inputs["against"]
    job = DedupJob(settings, store, spec)
    units = dedup_units(inputs)
    every = settings.progress_every_seconds
    signature_records = run_units(writer, units, signature_unit, job, workers=settings.workers,
                                  name="dedup[signatures]", progress=progress, every=every)
    signature_entries = [record["files"][0] for record in signature_records]
    clusters = cluster_pass(job, writer, signature_entries, progress, against)
    duplicates = clusters["files"][0]
    work = [WriteUnit(f"write.{unit.key}", unit, entry, duplicates) for unit, entry in zip(units, signature_entries)]
    records = run_units(writer, work, write_unit, job, workers=settings.workers, name="dedup[write]",
                        progress=progress, every=every)
    counts: dict[str, Any] = {"documents_in": 0, "documents": 0, "removed": {}, "sources": {}, **clusters["counts"]}
    threshold = round(settings.threshold(), 3)
    return commit_units(writer, records, counts, started, extra_files=signature_entries + [duplicates],
                        lsh_threshold=threshold, against=against)


@task(name="dedup", task_run_name="dedup", cache_policy=NO_CACHE, persist_result=False)
def dedup_task(ctx: RunContext, langid_results: dict[str, dict], against: str | None = None) -> Any:
    """Resolve the version from every source's langid artifact, `against` (default: `dedup.against`) and
    the config; skip or dedup."""
    inputs = {source: upstream_manifest(ctx, result) for source, result in langid_results.items()}
    settings = ctx.config.dedup
    spec = dedup_spec(settings, inputs, resolve_against(ctx.store, against or settings.against),
                      rebuild=ctx.rebuild_token(STAGE))
    return execute_stage(ctx, spec, lambda emit: run_dedup(settings, ctx.store, spec, inputs, emit))
