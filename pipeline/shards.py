"""Parquet shards of bounded size: the document schema, the quarantine schema, and a rolling writer.

Rows are buffered into row groups and written as they fill, so a worker holds at most one row group
in memory; a shard is closed once it reaches the configured bytes or rows and the next one opens.
Output bytes depend only on the rows and the settings (no timestamps), so reruns are byte-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

ROW_GROUP_BYTES = 8 << 20
ROW_GROUP_ROWS = 4096
DICTIONARY_COLUMNS = ["source", "content_type", "charset", "reason"]


class ShardWriter:
    """Writes rows into `<stem>-0000.parquet`, `<stem>-0001.parquet`, ... in a local directory."""

    def __init__(self, directory: Path, stem: str, schema: pa.Schema, *, max_bytes: int, max_rows: int,
                 compression_level: int, size_column: str | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stem = stem
        self.schema = schema
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self.compression_level = compression_level
        self.size_column = size_column
        self.finished: list[tuple[Path, int]] = []
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._buffer: dict[str, list[Any]] = {name: [] for name in schema.names}
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._shard_rows = 0
        self._shard_bytes = 0

    def add(self, row: dict[str, Any]) -> None:
        for name in self.schema.names:
            self._buffer[name].append(row.get(name))
        size = len(row[self.size_column]) if self.size_column else 0
        self._buffered_rows += 1
        self._buffered_bytes += size
        self._shard_rows += 1
        self._shard_bytes += size
        if self._buffered_bytes >= ROW_GROUP_BYTES or self._buffered_rows >= ROW_GROUP_ROWS:
            self._flush()
        if self._shard_bytes >= self.max_bytes or self._shard_rows >= self.max_rows:
            self._close_shard()

    def _flush(self) -> None:
        if not self._buffered_rows:
            return
        if self._writer is None:
            self._path = self.directory / f"{self.stem}-{len(self.finished):04d}.parquet"
            present = [c for c in DICTIONARY_COLUMNS if c in self.schema.names]
            self._writer = pq.ParquetWriter(
                self._path, self.schema, compression="zstd", compression_level=self.compression_level,
                use_dictionary=present, write_statistics=True,
            )
        table = pa.table(self._buffer, schema=self.schema)
        self._writer.write_table(table, row_group_size=self._buffered_rows)
        self._buffer = {name: [] for name in self.schema.names}
        self._buffered_rows = 0
        self._buffered_bytes = 0

    def _close_shard(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            assert self._path is not None
            self.finished.append((self._path, self._shard_rows))
        self._writer = None
        self._path = None
        self._shard_rows = 0
        self._shard_bytes = 0

    def close(self) -> list[tuple[Path, int]]:
        """Close the open shard; returns every shard written as (path, rows)."""
        self._close_shard()
        return self.finished
