"""Run a stage as independent work units into one artifact: resume finished units, report progress,
merge the units' files and counts.

Every data stage works this way: ingest over groups of input files, the later stages over the shards
of their input artifact. A unit's record ({"files": [...], "counts": {...}}) is stored under parts/
when it finishes, so an interrupted attempt resumes with the units still missing.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .artifacts import ArtifactWriter, fetch_verified, files_with_role, upload_file
from .counts import merge_counts
from .parallel import map_units
from .shards import ShardWriter
from .storage import ObjectStore

MB = 1024 * 1024


class Unit(Protocol):
    key: str

    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class ShardUnit:
    """One data file of an input artifact, processed as one work unit."""

    key: str
    entry: dict  # the file's entry in the input manifest

    @property
    def size(self) -> int:
        return self.entry["bytes"]


def shard_units(manifest: dict, role: str = "documents", source: str | None = None) -> list[ShardUnit]:
    """A unit per data file of `role` in the manifest (of one source, where files are tagged with theirs), in
    path order, keyed s00000, s00001, ... (the same input artifact always gives the same keys, so resumed
    units match)."""
    entries = sorted((entry for entry in files_with_role(manifest, role)
                      if source is None or entry.get("source", source) == source), key=lambda entry: entry["path"])
    return [ShardUnit(f"s{index:05d}", entry) for index, entry in enumerate(entries)]


def read_shard(store: ObjectStore, manifest: dict, entry: dict, scratch: Path, columns: list[str] | None = None,
               batch_rows: int = 512) -> Iterator[pa.RecordBatch]:
    """The record batches of one verified input shard (downloaded to scratch, read a batch at a time)."""
    path = fetch_verified(store, manifest, entry, scratch)
    try:
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)
    finally:
        path.unlink(missing_ok=True)


def resolve_writer_thread(setting: str | bool, workers: int) -> bool:
    """`auto`: a writer thread per worker only when the machine has a spare core for each."""
    if setting == "auto":
        return (os.cpu_count() or 1) >= 2 * workers
    return bool(setting)


class UnitOutput:
    """The output of one work unit: shard writers in a scratch directory, each shard uploaded into
    the artifact as soon as it is complete; `close()` returns the uploaded files' manifest entries."""

    def __init__(self, store: ObjectStore, prefix: str, unit_key: str, settings: Any, stage: str):
        self.store, self.prefix, self.unit_key, self.settings = store, prefix, unit_key, settings
        self._scratch = tempfile.TemporaryDirectory(dir=settings.scratch_dir, prefix=f"{stage}-")
        self.scratch = Path(self._scratch.name)
        self.files: list[dict] = []
        self._writers: list[ShardWriter] = []

    def writer(self, folder: str, schema: pa.Schema, role: str, size_column: str, *, background: bool = False,
               **extra: Any) -> ShardWriter:
        """Shards `<folder>/<unit>-NNNN.parquet` of the given role (`extra` goes into their entries)."""
        def upload(path: Path, rows: int) -> None:
            self.files.append(upload_file(self.store, self.prefix, f"{folder}/{path.name}", path, role,
                                          rows=rows, **extra))

        writer = ShardWriter(self.scratch / folder, self.unit_key, schema, max_bytes=self.settings.shard_max_mb * MB,
                             max_rows=self.settings.shard_max_docs, compression_level=self.settings.compression_level,
                             size_column=size_column, background=background, on_closed=upload)
        self._writers.append(writer)
        return writer

    def close(self) -> list[dict]:
        try:
            for writer in self._writers:
                writer.close()
        finally:
            self._scratch.cleanup()
        return self.files

    def __enter__(self) -> "UnitOutput":
        return self

    def __exit__(self, *exc_info) -> None:
        self._scratch.cleanup()


def commit_units(writer: ArtifactWriter, records: list[dict], counts: dict, started: float, *,
                 extra_files: Sequence[dict] = (), **summary: Any) -> dict:
    """Merge the units' files and counts, add timing figures to the summary, commit the manifest."""
    files = merge_records(records, counts) + list(extra_files)
    seconds = time.monotonic() - started
    summary.update(units=len(records), seconds=round(seconds, 3))
    if seconds:
        documents = counts.get("documents_in", counts.get("documents", 0))
        summary["docs_per_s"] = round(documents / seconds, 1)
        if "bytes_in" in counts:
            summary["mb_per_s"] = round(counts["bytes_in"] / MB / seconds, 2)
    return writer.commit(files, counts, summary=summary)


def run_shard_stage(writer: ArtifactWriter, upstream: dict, work: Callable[[Any, ShardUnit], dict], job: Any,
                    settings: Any, counts: dict, *, name: str, progress: Callable[[str], None],
                    source: str | None = None, **summary: Any) -> dict:
    """A stage that maps `work` over every document shard (of `source`) of its input artifact, then commits."""
    started = time.monotonic()
    records = run_units(writer, shard_units(upstream, source=source), work, job, workers=settings.workers, name=name,
                        progress=progress, every=settings.progress_every_seconds)
    return commit_units(writer, records, counts, started, **summary)


class TimedUnit:
    """`work(job, unit)` whose record also says the CPU seconds the unit took and the process it ran in
    (`cpu`), so that the artifact's manifest can count the CPU its units spent in other processes.
    `func` is the work function (the local pool preloads its module)."""

    def __init__(self, work: Callable[[Any, Unit], dict], job: Any):
        self.func, self.job = work, job

    def __call__(self, unit: Unit) -> dict:
        started = time.process_time()
        record = self.func(self.job, unit)
        return {**record, "cpu": {"seconds": round(time.process_time() - started, 3), "pid": os.getpid()}}


def unit_cpu_elsewhere(record: dict) -> float:
    """The CPU seconds of a unit that ran in another process (an in-process unit counts in the writer's own)."""
    cpu = record.get("cpu") or {}
    return cpu.get("seconds", 0.0) if cpu.get("pid") != os.getpid() else 0.0


def run_units(writer: ArtifactWriter, units: Sequence[Unit], work: Callable[[Any, Unit], dict], job: Any, *,
              workers: int, name: str, progress: Callable[[str], None], every: float) -> list[dict]:
    """Do every unit not finished by an earlier attempt; returns all unit records in unit order."""
    records: dict[str, dict] = {}
    for unit in units:
        if (previous := writer.finished_unit(unit.key)) is not None:
            records[unit.key] = previous  # its CPU was an earlier attempt's: not counted in this build's cpu_s
    todo = [unit for unit in units if unit.key not in records]
    progress(f"{name}: {len(units)} units, {sum(u.size for u in units) / MB:.1f} MB; "
             f"{len(records)} already done by an earlier attempt, {len(todo)} to do")
    reporter = Progress(name, len(units), len(records), progress, every)

    def finished(unit: Unit, record: dict) -> None:
        # parts/ keeps what the unit produced, not what it cost: two attempts write the same bytes there
        writer.finish_unit(unit.key, {key: value for key, value in record.items() if key != "cpu"})
        records[unit.key] = record
        writer.units_cpu_s += unit_cpu_elsewhere(record)
        reporter.unit_done(unit, record)

    map_units(TimedUnit(work, job), todo, workers, finished)
    reporter.report(final=True)
    return [records[unit.key] for unit in units]


def merge_records(records: list[dict], counts: dict) -> list[dict]:
    """Add every unit's counts into `counts`; returns all units' file entries."""
    files: list[dict] = []
    for record in records:
        merge_counts(counts, record["counts"])
        files.extend(record["files"])
    return files


def report_fraction(progress: Callable[[str], None], done: float) -> None:
    """Move the UI progress bar of `progress` if it keeps one (tasks/stage.py StageProgress)."""
    fraction = getattr(progress, "fraction", None)
    if fraction is not None:
        fraction(done)


def text_bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Progress:
    """One log line every `every` seconds — a text bar, units done, documents out, input MB/s — and the
    stage's progress artifact in the UI."""

    def __init__(self, name: str, total: int, done: int, emit: Callable[[str], None], every: float):
        self.name, self.total, self.done, self.emit, self.every = name, total, done, emit, every
        self.documents = self.bytes = 0
        self.started = self.last = time.monotonic()

    def unit_done(self, unit: Unit, record: dict) -> None:
        self.done += 1
        self.documents += record["counts"].get("documents", 0)
        self.bytes += unit.size
        if time.monotonic() - self.last >= self.every:
            self.report()

    def report(self, final: bool = False) -> None:
        self.last = time.monotonic()
        rate = self.bytes / MB / max(self.last - self.started, 1e-9)
        self.emit(f"{self.name}: {text_bar(self.done, self.total)} {self.done}/{self.total} units"
                  f"{' (done)' if final else ''}, {self.documents} documents, {rate:.1f} MB/s")
        report_fraction(self.emit, self.done / self.total if self.total else 1.0)
