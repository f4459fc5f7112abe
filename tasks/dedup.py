"""Dedup stage: the langid documents of every source -> one artifact without exact or near duplicates.

Every document langid wrote is deduplicated: the kept ones (`data/`) and the routed partitions
(`routed/lang=<xx>/`, below-threshold documents under `und`). With `partition: language` (the default,
as FineWeb-2 does) documents only cluster with documents of the same language (a routed document's
language is its partition), globally within it: across sources and earlier runs.

Three passes, each resumable:

1. signatures (parallel, one unit per input shard): per document the exact key (128-bit hash of its
   normalised tokens), the MinHash LSH band keys, its language group and (with `url_dedup`) the hash
   of its normalised URL, written to `signatures/<unit>.parquet`, one column per band. A document is
   hashed a bounded piece at a time (corpus.minhash.MinHasher.sketch), so memory does not grow with
   the longest document;
2. clusters (one process): with `url_dedup`, one document per normalised URL is kept (`url_keep`:
   the longest text or the newest fetch_date) and the others are removed as `duplicate_url`; then band
   by band, the keys of the remaining documents (and of the index of earlier runs named by `against`)
   are sorted and equal keys of the same group are joined in a union-find; each cluster keeps one
   representative (`keep`: first, longest or earliest; documents of earlier runs always win) and the
   others are listed in `duplicates.parquet` with their cluster id (the representative's id), its
   source and the cluster's size; `clusters.parquet` lists the size of every kept representative's
   cluster of more than one document;
3. write (parallel): the kept documents go to `data/<source>/` (routed ones to
   `routed/lang=<xx>/<source>/`) with `minhash_cluster_size` (1 for a document without duplicates),
   the removed ones to `removed/` with the reason (`exact_duplicate`, `near_duplicate`,
   `duplicate_of_earlier_run`, `duplicate_url`) and their cluster, and the kept documents' keys to
   `index/`, which later runs dedup against.

Memory: pass 2 reads one band at a time, holding about 50 bytes per document (a band's keys, the
groups, their sort order, the union-find parents and the representative sort keys); signatures stay
on disk.

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
from corpus.minhash import MinHasher
from corpus.urls import url_key
from pipeline.runs import get_ref
from pipeline.shards import DEDUP_SCHEMA, LANGID_SCHEMA, QUARANTINE_SCHEMA
from pipeline.storage import ObjectStore
from pipeline.units import UnitOutput, commit_units, read_shard, resolve_writer_thread, run_units, shard_units

from .stage import RunContext, execute_stage, stage_task, upstream_manifest

STAGE = "dedup"
CODE_VERSION = "2"  # 2: routed partitions, language groups, minhash_cluster_size, URL dedup
EXACT = "exact_duplicate"
NEAR = "near_duplicate"
EARLIER = "duplicate_of_earlier_run"
URL = "duplicate_url"
CLUSTERS_PART = "clusters"
DUPLICATES_FILE = "duplicates.parquet"
CLUSTER_SIZES_FILE = "clusters.parquet"


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
        pa.field("group", pa.string(), nullable=False),  # documents cluster only within their group
        pa.field("url_key", pa.uint64()),  # the normalised URL's hash (url_dedup), else null
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

CLUSTER_SIZES_SCHEMA = pa.schema([
    pa.field("unit", pa.string(), nullable=False),
    pa.field("row", pa.int64(), nullable=False),
    pa.field("cluster_size", pa.int64(), nullable=False),
])


@dataclass(frozen=True)
class DedupUnit:
    """One langid shard of one source: of its kept documents, or of a routed language partition."""

    key: str
    source: str
    manifest: dict
    entry: dict
    partition: str | None = None  # the routed partition's language; None for data/

    @property
    def size(self) -> int:
        return self.entry["bytes"]

    @property
    def output_folder(self) -> str:
        return f"data/{self.source}" if self.partition is None else f"routed/lang={self.partition}/{self.source}"


def dedup_units(inputs: dict[str, dict]) -> list[DedupUnit]:
    """Units in input order: sources as configured, per source its kept shards then its routed ones, each in
    path order (this order is `first`)."""
    units = []
    for source, manifest in inputs.items():
        units += [DedupUnit(f"{source}.{unit.key}", source, manifest, unit.entry) for unit in shard_units(manifest)]
        units += [DedupUnit(f"{source}.routed.{unit.key}", source, manifest, unit.entry, unit.entry["lang"])
                  for unit in shard_units(manifest, role="routed")]
    return units


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


def group_of(settings: DedupConfig, unit: DedupUnit, lang: str) -> str:
    """The group a document clusters within: its language (a routed partition's, for routed documents)."""
    if settings.partition == "none":
        return ""
    return unit.partition if unit.partition is not None else lang


def signature_unit(job: DedupJob, unit: DedupUnit) -> dict:
    settings = job.settings
    minhash = hasher(settings)
    schema = signature_schema(settings.bands)
    columns: dict[str, list] = {name: [] for name in schema.names}
    empty_bands = [0] * settings.bands
    with tempfile.TemporaryDirectory(dir=settings.scratch_dir, prefix="dedup-") as scratch:
        row = 0
        for batch in read_shard(job.store, unit.manifest, unit.entry, Path(scratch),
                                columns=["id", "source", "url", "fetch_date", "text", "lang"]):
            for doc in batch.to_pylist():
                signature, exact = minhash.sketch(doc["text"], chars=doc["lang"] in settings.char_ngram_languages,
                                                  signature=settings.near)
                keys = minhash.band_keys(signature) if signature is not None else empty_bands
                for name, value in (("row", row), ("id", doc["id"]), ("source", doc["source"]),
                                    ("length", len(doc["text"])), ("fetch_date", doc["fetch_date"]),
                                    ("exact", exact), ("has_signature", signature is not None),
                                    ("group", group_of(settings, unit, doc["lang"])),
                                    ("url_key", url_key(doc["url"]) if settings.url_dedup else None)):
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

    def union_runs(self, keys: np.ndarray | list[np.ndarray], valid: np.ndarray | None = None) -> None:
        """Join every group of rows equal in all key columns (rows where `valid` is False take no part)."""
        columns = keys if isinstance(keys, list) else [keys]
        candidates = np.flatnonzero(valid) if valid is not None else np.arange(len(columns[0]))
        order = candidates[np.lexsort([column[candidates] for column in columns])]
        same = np.ones(max(len(order) - 1, 0), dtype=bool)
        for column in columns:
            ordered = column[order]
            same &= ordered[1:] == ordered[:-1]
        for position in np.flatnonzero(same):
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


def read_arrow(parts: list[IndexPart], column: str) -> pa.ChunkedArray:
    return pa.chunked_array([pq.read_table(part.path, columns=[column]).column(0) for part in parts])


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


def grouped(settings: DedupConfig, parts: list[IndexPart]) -> bool:
    """Whether documents cluster within language groups: partition: language, and every index has groups (an
    earlier run's index written before language groups existed has none: then every language together)."""
    return settings.partition == "language" and bool(parts) and \
        all("group" in pq.read_schema(part.path).names for part in parts)


def group_ids(parts: list[IndexPart]) -> np.ndarray:
    """A small integer per row for its language group."""
    groups = read_arrow(parts, "group").combine_chunks().dictionary_encode()
    return groups.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def rank_of(parts: list[IndexPart], rule: str) -> np.ndarray:
    """Sort keys that put the preferred document first: longest text, earliest or newest fetch_date."""
    if rule == "longest":
        return -read_column(parts, "length").astype(np.int64)
    if rule in ("earliest", "newest") and parts:
        column = read_arrow(parts, "fetch_date").cast(pa.int64())
        dates = column.fill_null(0).to_numpy().astype(np.int64)
        dates = dates if rule == "earliest" else -dates
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        return np.where(valid, dates, np.iinfo(np.int64).max)  # a document without a date comes last
    return np.zeros(sum(part.rows for part in parts), dtype=np.int64)


def url_keepers(settings: DedupConfig, parts: list[IndexPart]) -> tuple[np.ndarray, np.ndarray]:
    """(the row kept for each row's normalised URL: itself if it is kept or has no URL, the size of its URL
    group), over the rows of `parts` (this run's documents)."""
    total = sum(part.rows for part in parts)
    keeper, sizes = np.arange(total), np.ones(total, dtype=np.int64)
    if not settings.url_dedup or not total:
        return keeper, sizes
    column = read_arrow(parts, "url_key")
    candidates = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
    keys = column.fill_null(0).to_numpy().astype(np.uint64)[candidates]
    rank = rank_of(parts, "longest" if settings.url_keep == "longest" else "newest")[candidates]
    order = np.lexsort((candidates, rank, keys))  # per URL: the preferred document first, ties in input order
    rows, keys = candidates[order], keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    lengths = np.diff(np.r_[starts, len(rows)])
    first = np.repeat(rows[starts], lengths)
    keeper[rows] = first
    sizes[rows] = np.repeat(lengths, lengths)
    return keeper, sizes


def find_clusters(settings: DedupConfig, parts: list[IndexPart], new_rows: int,
                  taking_part: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(root of every row, representative of every row's cluster); rows >= new_rows are earlier runs'. Rows
    where `taking_part` is False (removed as URL duplicates) stay clusters of their own."""
    total = sum(part.rows for part in parts)
    union = UnionFind(total)
    extra = [group_ids(parts)] if grouped(settings, parts) else []
    if settings.exact:
        keys = exact_keys(parts)
        union.union_runs([keys["low"], keys["high"], *extra], taking_part)
    if settings.near:
        valid = read_column(parts, "has_signature").astype(bool)  # texts without tokens have no signature
        if taking_part is not None:
            valid &= taking_part
        for column in band_columns(settings.bands):
            union.union_runs([read_column(parts, column).astype(np.uint64), *extra], valid)
    roots = union.roots()
    earlier = np.arange(total) >= new_rows
    rank = rank_of(parts, settings.keep)
    # Per cluster, the first row ordered by (earlier run first, rule, input order) is kept.
    order = np.lexsort((np.arange(total), rank, ~earlier, roots))
    first_of_cluster = np.ones(total, dtype=bool)
    first_of_cluster[1:] = roots[order][1:] != roots[order][:-1]
    representative = np.empty(total, dtype=np.int64)
    representative[roots[order][first_of_cluster]] = order[first_of_cluster]
    return roots, representative[roots]


def cluster_pass(job: DedupJob, writer: ArtifactWriter, signature_entries: list[dict],
                 progress: Callable[[str], None], against: str | None) -> dict:
    """Find the clusters, upload duplicates.parquet and clusters.parquet; returns their manifest entries and
    the cluster counts."""
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
        url_keeper, url_sizes = url_keepers(settings, parts)
        for entry in earlier_index(job.store, against):
            # one folder per earlier version: runs over the same units have files of the same name
            earlier = scratch_path / "earlier" / entry["manifest"]["version"]
            earlier.mkdir(parents=True, exist_ok=True)
            parts.append(IndexPart(fetch_verified(job.store, entry["manifest"], entry, earlier), None, entry["rows"]))
        offset = 0
        for part in parts:
            part.offset, offset = offset, offset + part.rows
        if settings.partition == "language" and not grouped(settings, parts) and parts:
            progress("dedup: an earlier run's index has no language groups (written before them): this run "
                     "clusters every language together")
        taking_part = np.ones(offset, dtype=bool)
        taking_part[:new_rows] = url_keeper == np.arange(new_rows)
        roots, representative = find_clusters(settings, parts, new_rows, taking_part)
        # a URL duplicate points at what was kept in place of its URL's document
        representative[:new_rows] = np.where(taking_part[:new_rows], representative[:new_rows],
                                             representative[url_keeper])
        sizes = np.bincount(roots, minlength=offset)
        duplicates = np.flatnonzero(representative[:new_rows] != np.arange(new_rows))
        named = names_of(parts, np.union1d(duplicates, representative[duplicates]))
        exact = exact_keys(parts)
        rows: dict[str, list] = {name: [] for name in DUPLICATES_SCHEMA.names}
        is_root = np.arange(offset) == roots
        counts: dict[str, Any] = {"clusters": int(np.count_nonzero((sizes > 1) & is_root)),
                                  "earlier_index_documents": offset - new_rows}
        part_of = np.searchsorted([part.offset for part in parts], duplicates, side="right") - 1
        for number, part_index in zip(duplicates.tolist(), part_of.tolist()):
            part = parts[part_index]
            keeper = int(representative[number])
            if not taking_part[number]:
                reason, size = URL, int(url_sizes[number])
            else:
                reason = EARLIER if keeper >= new_rows else (EXACT if exact[keeper] == exact[number] else NEAR)
                size = int(sizes[roots[number]])
            for name, value in (("unit", part.unit), ("row", number - part.offset), ("id", named[number][0]),
                                ("reason", reason), ("cluster", named[keeper][0]),
                                ("representative_source", named[keeper][1]), ("cluster_size", size)):
                rows[name].append(value)
        path = scratch_path / DUPLICATES_FILE
        pq.write_table(pa.table(rows, schema=DUPLICATES_SCHEMA), path, compression="zstd")
        entries = [writer.put_file(DUPLICATES_FILE, path, "duplicates", rows=len(rows["id"]))]
        # the kept representatives of clusters of more than one document, with their size
        kept = np.flatnonzero((representative[:new_rows] == np.arange(new_rows)) & (sizes[roots[:new_rows]] > 1))
        part_of = np.searchsorted([part.offset for part in parts], kept, side="right") - 1
        table = pa.table({"unit": [parts[index].unit for index in part_of.tolist()],
                          "row": kept - np.array([parts[index].offset for index in part_of.tolist()], dtype=np.int64),
                          "cluster_size": sizes[roots[kept]].astype(np.int64)}, schema=CLUSTER_SIZES_SCHEMA)
        path = scratch_path / CLUSTER_SIZES_FILE
        pq.write_table(table, path, compression="zstd")
        entries.append(writer.put_file(CLUSTER_SIZES_FILE, path, "cluster_sizes", rows=table.num_rows))
    record = {"files": entries, "counts": counts}
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
    clusters: tuple[dict, ...]  # the artifact's duplicates.parquet and clusters.parquet entries

    @property
    def size(self) -> int:
        return self.unit.size


def rows_of(path: Path, unit: str) -> dict[int, dict]:
    table = pq.read_table(path, filters=[("unit", "=", unit)])
    return {row["row"]: row for row in table.to_pylist()}


def new_counts() -> dict[str, Any]:
    """documents_in: every document read (kept and routed partitions); documents: the kept ones that go on
    to filter; routed: the routed ones left per language; removed: per reason."""
    return {"documents_in": 0, "documents": 0, "routed": {}, "removed": {}, "sources": {}}


def write_unit(job: DedupJob, work: WriteUnit) -> dict:
    settings = job.settings
    unit = work.unit
    counts = new_counts()
    prefix = "" if unit.partition is None else "routed_"
    per_source = counts["sources"].setdefault(unit.source, {f"{prefix}documents_in": 0, f"{prefix}documents": 0})
    with UnitOutput(job.store, job.prefix, unit.key, settings, STAGE) as out:
        duplicates, clusters = (fetch_verified(job.store, job.own(), entry, out.scratch) for entry in work.clusters)
        removed_rows = rows_of(duplicates, unit.key)
        cluster_sizes = {row: values["cluster_size"] for row, values in rows_of(clusters, unit.key).items()}
        extra = {"source": unit.source} if unit.partition is None else {"source": unit.source, "lang": unit.partition}
        kept = out.writer(unit.output_folder, DEDUP_SCHEMA, "documents" if unit.partition is None else "routed",
                          "text", background=resolve_writer_thread("auto", settings.workers), **extra)
        removed = out.writer("removed", QUARANTINE_SCHEMA, "removed", "sample")
        row = 0
        for batch in read_shard(job.store, unit.manifest, unit.entry, out.scratch):
            for doc in batch.to_pylist():
                counts["documents_in"] += 1
                per_source[f"{prefix}documents_in"] += 1
                duplicate = removed_rows.get(row)
                size = cluster_sizes.get(row, 1)
                row += 1
                if duplicate is None:
                    if unit.partition is None:
                        counts["documents"] += 1
                    else:
                        counts["routed"][unit.partition] = counts["routed"].get(unit.partition, 0) + 1
                    per_source[f"{prefix}documents"] += 1
                    kept.add((*(doc[name] for name in LANGID_SCHEMA.names), size))
                    continue
                reason = duplicate["reason"]
                counts["removed"][reason] = counts["removed"].get(reason, 0) + 1
                sample = doc["text"][: settings.removed_sample_bytes].encode()[: settings.removed_sample_bytes]
                removed.add((doc["source"], doc["id"], reason,
                             f"cluster {duplicate['cluster']} (kept in {duplicate['representative_source']}, "
                             f"{duplicate['cluster_size']} documents)", len(doc["text"]), sample))
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
    cluster_files = tuple(clusters["files"])
    work = [WriteUnit(f"write.{unit.key}", unit, entry, cluster_files) for unit, entry in zip(units, signature_entries)]
    records = run_units(writer, work, write_unit, job, workers=settings.workers, name="dedup[write]",
                        progress=progress, every=every)
    counts: dict[str, Any] = {**new_counts(), **clusters["counts"]}
    threshold = round(settings.threshold(), 3)
    return commit_units(writer, records, counts, started, extra_files=signature_entries + list(cluster_files),
                        lsh_threshold=threshold, against=against)


@stage_task("dedup", "dedup")
def dedup_task(ctx: RunContext, langid_results: dict[str, dict], against: str | None = None) -> Any:
    """Resolve the version from every source's langid artifact, `against` (default: `dedup.against`) and
    the config; skip or dedup."""
    inputs = {source: upstream_manifest(ctx, result) for source, result in langid_results.items()}
    settings = ctx.config.dedup
    spec = dedup_spec(settings, inputs, resolve_against(ctx.store, against or settings.against),
                      rebuild=ctx.rebuild_token(STAGE))
    return execute_stage(ctx, spec, lambda emit: run_dedup(settings, ctx.store, spec, inputs, emit))
