"""Run a stage as independent work units into one artifact: resume finished units, report progress,
merge the units' files and counts.

Every data stage works this way: ingest over groups of input files, the later stages over the shards
of their input artifact. A unit's record ({"files": [...], "counts": {...}}) is stored under parts/
when it finishes, so an interrupted attempt resumes with the units still missing.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .artifacts import ArtifactWriter, fetch_verified, files_with_role
from .counts import merge_counts
from .parallel import map_units
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


def shard_units(manifest: dict, role: str = "documents") -> list[ShardUnit]:
    """A unit per data file of `role` in the manifest, in path order, keyed s00000, s00001, ...
    (the same input artifact always gives the same keys, so resumed units match)."""
    entries = sorted(files_with_role(manifest, role), key=lambda entry: entry["path"])
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


def run_units(writer: ArtifactWriter, units: Sequence[Unit], work: Callable[[Any, Unit], dict], job: Any, *,
              workers: int, name: str, progress: Callable[[str], None], every: float) -> list[dict]:
    """Do every unit not finished by an earlier attempt; returns all unit records in unit order."""
    records: dict[str, dict] = {}
    for unit in units:
        if (previous := writer.finished_unit(unit.key)) is not None:
            records[unit.key] = previous
    todo = [unit for unit in units if unit.key not in records]
    progress(f"{name}: {len(units)} units, {sum(u.size for u in units) / MB:.1f} MB; "
             f"{len(records)} already done by an earlier attempt, {len(todo)} to do")
    reporter = Progress(name, len(units), len(records), progress, every)

    def finished(unit: Unit, record: dict) -> None:
        writer.finish_unit(unit.key, record)
        records[unit.key] = record
        reporter.unit_done(unit, record)

    map_units(functools.partial(work, job), todo, workers, finished)
    reporter.report(final=True)
    return [records[unit.key] for unit in units]


def merge_records(records: list[dict], counts: dict) -> list[dict]:
    """Add every unit's counts into `counts`; returns all units' file entries."""
    files: list[dict] = []
    for record in records:
        merge_counts(counts, record["counts"])
        files.extend(record["files"])
    return files


class Progress:
    """One log line every `every` seconds: units done, documents out, input MB/s."""

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
        self.emit(f"{self.name}: {self.done}/{self.total} units{' (done)' if final else ''}, "
                  f"{self.documents} documents, {rate:.1f} MB/s")
