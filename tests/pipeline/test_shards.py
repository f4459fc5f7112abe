"""ShardWriter: bounded shards, byte-identical output with or without its background writer thread."""

from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest

from pipeline.shards import QUARANTINE_SCHEMA, ShardWriter


def _rows(count: int) -> list[tuple]:
    return [("web", f"f.warc#offset={i}", "binary_payload", f"detail {i}", i * 10, bytes([i % 256]) * (i % 50))
            for i in range(count)]


def _write(directory, background: bool, rows: list[tuple], closed: list) -> list:
    writer = ShardWriter(directory, "u00000", QUARANTINE_SCHEMA, max_bytes=1 << 30, max_rows=300,
                         compression_level=1, size_column="sample", background=background,
                         on_closed=lambda path, count: closed.append((path.name, count)))
    for row in rows:
        writer.add(row)
    return writer.close()


@pytest.mark.parametrize("background", [False, True])
def test_shards_roll_over_and_read_back(tmp_path, background):
    closed: list = []
    shards = _write(tmp_path, background, _rows(1000), closed)
    assert [(path.name, rows) for path, rows in shards] == [
        ("u00000-0000.parquet", 300), ("u00000-0001.parquet", 300), ("u00000-0002.parquet", 300),
        ("u00000-0003.parquet", 100)]
    assert closed == [(path.name, rows) for path, rows in shards]
    table = pq.read_table(shards[1][0])
    assert table.schema.equals(QUARANTINE_SCHEMA) and table.column("size")[0].as_py() == 3000


def test_background_thread_writes_the_same_bytes(tmp_path):
    digests = []
    for background in (False, True):
        shards = _write(tmp_path / str(background), background, _rows(700), [])
        digests.append([hashlib.sha256(path.read_bytes()).hexdigest() for path, _ in shards])
    assert digests[0] == digests[1]


def test_a_failure_on_the_writer_thread_reaches_the_caller(tmp_path):
    def fail(path, rows):
        raise OSError("disk full")

    writer = ShardWriter(tmp_path, "u", QUARANTINE_SCHEMA, max_bytes=1 << 30, max_rows=10, compression_level=1,
                         background=True, on_closed=fail)
    with pytest.raises(OSError, match="disk full"):
        for row in _rows(100):
            writer.add(row)
        writer.close()
