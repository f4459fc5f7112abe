"""Parquet shards of bounded size: the document schema, the quarantine schema, and a rolling writer.

Rows are buffered into row groups and written as they fill, so a worker holds at most one row group
in memory; a shard is closed once it reaches the configured bytes or rows and the next one opens.
Output bytes depend only on the rows and the settings (no timestamps), so reruns are byte-identical.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("fetch_date", pa.timestamp("us", tz="UTC")),
        pa.field("content_type", pa.string(), nullable=False),
        pa.field("charset", pa.string()),
        pa.field("content", pa.binary(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
    ]
)

CLEAN_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("fetch_date", pa.timestamp("us", tz="UTC")),
        pa.field("title", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("charset", pa.string()),
    ]
)

LANG_TOPK = pa.list_(pa.struct([pa.field("lang", pa.string()), pa.field("score", pa.float32())]))
LANGID_SCHEMA = pa.schema(
    list(CLEAN_SCHEMA)
    + [
        pa.field("lang", pa.string(), nullable=False),
        pa.field("lang_score", pa.float32(), nullable=False),
        pa.field("lang_topk", LANG_TOPK),
    ]
)

# After dedup (and filter): the size of the duplicate cluster each kept document stood for (1 for a
# document without duplicates; null where no dedup ran), which the mixture's rehydration reads.
DEDUP_SCHEMA = pa.schema(list(LANGID_SCHEMA) + [pa.field("minhash_cluster_size", pa.int64())])

# Documents a stage removes, with the reason (the quarantine of ingest, the removed/ of later stages).
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("sample", pa.binary()),
    ]
)

ROW_GROUP_BYTES = 4 << 20
ROW_GROUP_ROWS = 4096
# Columns with few distinct values are dictionary-encoded; statistics are kept for the small columns
# only (on the content column they cost ~15% of the write and no reader uses them).
DICTIONARY_COLUMNS = ["source", "content_type", "charset", "reason", "lang"]
STATISTICS_COLUMNS = ["id", "source", "url", "fetch_date", "content_type", "charset", "reason", "origin", "size",
                      "lang", "lang_score"]


class ShardWriter:
    """Writes rows into `<stem>-0000.parquet`, `<stem>-0001.parquet`, ... in a local directory.

    A row is a tuple in the schema's column order (the hot path of every data stage: no dict per row).
    """

    def __init__(self, directory: Path, stem: str, schema: pa.Schema, *, max_bytes: int, max_rows: int,
                 compression_level: int, size_column: str | None = None, background: bool = False,
                 on_closed: Callable[[Path, int], None] | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stem = stem
        self.schema = schema
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self.compression_level = compression_level
        self._size_index = schema.names.index(size_column) if size_column else None
        self._on_closed = on_closed  # called with (path, rows) once a shard is complete, on the writer's thread
        self.finished: list[tuple[Path, int]] = []
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._rows: list[tuple] = []
        self._buffered_bytes = 0
        self._shard_rows = 0
        self._shard_bytes = 0
        # With background=True, compression, file writes and on_closed run on one thread of their own
        # (Arrow and hashlib release the GIL), overlapping with the caller's parsing; at most 2 tasks wait.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer") if background else None
        self._pending: deque[Future] = deque()

    def _run(self, fn, *args, **kwargs) -> None:
        if self._executor is None:
            fn(*args, **kwargs)
            return
        self._pending.append(self._executor.submit(fn, *args, **kwargs))
        while len(self._pending) > 2:
            self._pending.popleft().result()

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def add(self, row: tuple) -> None:
        size = len(row[self._size_index] or b"") if self._size_index is not None else 0
        self._rows.append(row)
        self._buffered_bytes += size
        self._shard_rows += 1
        self._shard_bytes += size
        if self._buffered_bytes >= ROW_GROUP_BYTES or len(self._rows) >= ROW_GROUP_ROWS:
            self._flush()
        if self._shard_bytes >= self.max_bytes or self._shard_rows >= self.max_rows:
            self._close_shard()

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._path = self.directory / f"{self.stem}-{len(self.finished):04d}.parquet"
            names = self.schema.names
            self._writer = pq.ParquetWriter(
                self._path, self.schema, compression="zstd", compression_level=self.compression_level,
                use_dictionary=[c for c in DICTIONARY_COLUMNS if c in names],
                write_statistics=[c for c in STATISTICS_COLUMNS if c in names],
            )
        columns = [pa.array(values, type=field.type) for values, field in zip(zip(*self._rows), self.schema)]
        self._run(self._writer.write_table, pa.Table.from_arrays(columns, schema=self.schema),
                  row_group_size=len(self._rows))
        self._rows = []
        self._buffered_bytes = 0

    def _close_shard(self) -> None:
        self._flush()
        if self._writer is not None:
            self._run(self._writer.close)
            assert self._path is not None
            self.finished.append((self._path, self._shard_rows))
            if self._on_closed is not None:
                self._run(self._on_closed, self._path, self._shard_rows)
        self._writer = None
        self._path = None
        self._shard_rows = 0
        self._shard_bytes = 0

    def close(self) -> list[tuple[Path, int]]:
        """Close the open shard; returns every shard written as (path, rows)."""
        self._close_shard()
        self._drain()
        if self._executor is not None:
            self._executor.shutdown()
        return self.finished
