"""Ingest stage: raw sources (WARC, JSONL, HTML folders; local or s3://) -> Parquet document shards.

One artifact per source, `ingest/<source>`, whose version derives from the input files' fingerprints
and the ingest settings: an unchanged source is skipped, a changed one is re-ingested. Input files
are grouped into work units processed in parallel; each finished unit is recorded, so a killed run
resumes with the units still missing. Records that cannot be used go to `quarantine/` with their
reason; non-document WARC records and blank lines are counted as skipped. A file that cannot be read
(a dangling link, permission denied, gone since it was listed) is quarantined as `unreadable_file`.

The core (`plan_units`, `ingest_unit`, `run_ingest`) knows nothing of Prefect; `ingest_task` at the
end is the thin task the flow calls.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline.artifacts import ArtifactWriter, StageSpec
from pipeline.config import HtmlSource, IngestConfig, JsonlSource, StorageConfig, WarcSource
from corpus.raw_formats import (Item, Limits, RawDoc, Reject, read_html_file, read_jsonl, read_warc,
                                without_compression_suffix)
from pipeline.shards import DOCUMENT_SCHEMA, QUARANTINE_SCHEMA, ShardWriter
from pipeline.sources import InputFile, list_inputs, local_copy, why_unreadable
from pipeline.storage import ObjectStore
from pipeline.units import UnitOutput, commit_units, resolve_writer_thread, run_units

from .stage import RunContext, execute_stage, stage_task

STAGE = "ingest"
CODE_VERSION = "3"  # 3: compressed HTML, missing_http_headers, unreadable_file
MB = 1024 * 1024

SourceConfig = WarcSource | JsonlSource | HtmlSource
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    key: str
    files: tuple[InputFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def plan_units(source: SourceConfig, files: list[InputFile], settings: IngestConfig) -> list[Unit]:
    """Group files into work units; the plan depends only on the files and settings, not on workers.

    A WARC file, or any file of at least unit_max_mb, is a unit of its own; smaller files (HTML
    pages, small JSONL files) are grouped in order until a unit reaches unit_max_mb.
    """
    limit = settings.unit_max_mb * MB
    groups: list[list[InputFile]] = []
    current: list[InputFile] = []
    current_size = 0
    for file in files:
        if source.kind == "warc" or file.size >= limit:
            groups.extend([current, [file]] if current else [[file]])
            current, current_size = [], 0
            continue
        if current and current_size + file.size > limit:
            groups.append(current)
            current, current_size = [], 0
        current.append(file)
        current_size += file.size
    if current:
        groups.append(current)
    return [Unit(f"u{index:05d}", tuple(group)) for index, group in enumerate(groups)]


def ingest_spec(source: SourceConfig, files: list[InputFile], settings: IngestConfig,
                rebuild: str | None = None) -> StageSpec:
    listing = [[f.relpath, f.fingerprint] for f in files]
    return StageSpec(
        stage=STAGE,
        artifact=f"{STAGE}/{source.name}",
        code_version=CODE_VERSION,
        config={"source": source.versioned(), "ingest": settings.versioned()},
        inputs={
            "files": len(files),
            "bytes": sum(f.size for f in files),
            "fingerprint": hashlib.sha256(json.dumps(listing).encode()).hexdigest(),
        },
        rebuild=rebuild,
    )


def document_id(source: str, relpath: str, doc: RawDoc) -> str:
    """Stable across reruns and re-shardings: the source's own id if it has one, else the position."""
    key = f"{source}\0id\0{doc.native_id}" if doc.native_id else f"{source}\0{relpath}\0{doc.locator}"
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def read_items(source: SourceConfig, path: Path, file: InputFile, limits: Limits) -> Iterator[Item]:
    if isinstance(source, WarcSource):
        return read_warc(path, limits)
    if isinstance(source, JsonlSource):
        return read_jsonl(path, limits, text_field=source.text_field, id_field=source.id_field,
                          url_field=source.url_field, date_field=source.date_field,
                          content_type=source.content_type)
    url = source.base_url.rstrip("/") + "/" + without_compression_suffix(file.relpath) if source.base_url else None
    return read_html_file(path, limits, url=url, charset=source.charset)


@dataclass(frozen=True)
class IngestJob:
    """What a worker process needs to ingest one unit into an uncommitted artifact."""

    source: SourceConfig
    settings: IngestConfig
    storage: StorageConfig
    store: ObjectStore
    prefix: str


def new_counts() -> dict[str, Any]:
    return {"files": 0, "bytes_in": 0, "records": 0, "documents": 0, "content_bytes": 0,
            "quarantined": {}, "skipped": {}}


def ingest_unit(job: IngestJob, unit: Unit) -> dict:
    """Read a unit's files, write its document and quarantine shards, upload them; return its record."""
    settings = job.settings
    limits = Limits(int(settings.max_record_mb * MB), tuple(settings.html_content_types),
                    settings.quarantine_sample_bytes, int(settings.max_decompressed_mb * MB),
                    settings.max_compression_ratio)
    counts = new_counts()
    with UnitOutput(job.store, job.prefix, unit.key, settings, STAGE) as out:
        documents = out.writer("data", DOCUMENT_SCHEMA, "documents", "content",
                               background=resolve_writer_thread(settings.writer_thread, settings.workers))
        quarantine = out.writer("quarantine", QUARANTINE_SCHEMA, "quarantine", "sample")
        for file in unit.files:
            counts["files"] += 1
            counts["bytes_in"] += file.size
            for item in read_file(job, file, limits):
                _route(item, job.source.name, file.relpath, documents, quarantine, counts)
        files = out.close()
    return {"unit": unit.key, "files": files, "counts": counts}


UNREADABLE = "unreadable_file"
S3_UNREADABLE = {"404", "NoSuchKey", "403", "AccessDenied"}
UNREADABLE_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ELOOP, errno.EISDIR, errno.ENOTDIR}


def read_file(job: IngestJob, file: InputFile, limits: Limits) -> Iterator[Item]:
    """The items of one input file; a file that cannot be read (now or since it was listed) is one Reject."""
    from botocore.exceptions import ClientError

    if file.error is not None:
        yield Reject("file", UNREADABLE, file.error)
        return
    try:
        with local_copy(file, job.source.endpoint_url or job.storage.endpoint_url, job.storage,
                        job.settings.scratch_dir) as path:
            yield from read_items(job.source, path, file, limits)
    except OSError as exc:
        if exc.errno not in UNREADABLE_ERRNOS:  # e.g. a full scratch disk: not the input's fault
            raise
        yield Reject("file", UNREADABLE, why_unreadable(Path(file.location), exc))
    except ClientError as exc:  # the S3 object is gone or forbidden since it was listed
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in S3_UNREADABLE:
            raise
        yield Reject("file", UNREADABLE, f"S3 {code}: the object vanished or is forbidden since it was listed")


def _route(item: Item, source: str, relpath: str, documents: ShardWriter, quarantine: ShardWriter,
           counts: dict) -> None:
    if isinstance(item, RawDoc):
        counts["records"] += 1
        counts["documents"] += 1
        counts["content_bytes"] += len(item.content)
        # DOCUMENT_SCHEMA order: id, source, url, fetch_date, content_type, charset, content, origin
        documents.add((document_id(source, relpath, item), source, item.url, item.fetch_date, item.content_type,
                       item.charset, item.content, f"{relpath}#{item.locator}"))
    elif isinstance(item, Reject):
        counts["records"] += 1
        counts["quarantined"][item.reason] = counts["quarantined"].get(item.reason, 0) + 1
        # QUARANTINE_SCHEMA order: source, origin, reason, detail, size, sample
        quarantine.add((source, f"{relpath}#{item.locator}", item.reason, item.detail, item.size, item.sample))
    else:
        counts["skipped"][item.reason] = counts["skipped"].get(item.reason, 0) + 1


def run_ingest(source: SourceConfig, settings: IngestConfig, storage: StorageConfig, store: ObjectStore,
               spec: StageSpec, files: list[InputFile], progress: Callable[[str], None] = log.info) -> dict:
    """Ingest one source into the artifact `spec` describes and commit it; returns the manifest."""
    started = time.monotonic()
    writer = ArtifactWriter(store, spec)
    units = plan_units(source, files, settings)
    job = IngestJob(source, settings, storage, store, spec.prefix)
    records = run_units(writer, units, ingest_unit, job, workers=settings.workers, name=f"ingest[{source.name}]",
                        progress=progress, every=settings.progress_every_seconds)
    with tempfile.TemporaryDirectory(dir=settings.scratch_dir) as scratch:
        listing = Path(scratch, "inputs.jsonl")
        listing.write_text("".join(
            json.dumps({"path": f.relpath, "bytes": f.size, "fingerprint": f.fingerprint}) + "\n" for f in files
        ))
        inputs = writer.put_file("inputs.jsonl", listing, "inputs", rows=len(files))
    return commit_units(writer, records, new_counts(), started, extra_files=[inputs],
                        source={"name": source.name, "kind": source.kind, "location": source.location})


# ---------------------------------------------------------------------------------------------
# The Prefect task


@stage_task("ingest", "ingest[{source_name}]")
def ingest_task(ctx: RunContext, source_name: str) -> Any:
    """Resolve the source's version from its files, then skip it (Cached) or ingest it."""
    source = ctx.config.source(source_name)
    files = list_inputs(source, ctx.config.storage, base_dir=ctx.base_dir)
    spec = ingest_spec(source, files, ctx.config.ingest, rebuild=ctx.rebuild_token(f"{STAGE}/{source.name}"))
    return execute_stage(
        ctx, spec,
        lambda emit: run_ingest(source, ctx.config.ingest, ctx.config.storage, ctx.store, spec, files, emit),
    )
