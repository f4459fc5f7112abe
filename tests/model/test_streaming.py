"""Token shards streamed from a real store (SeaweedFS S3 and a local directory) through a bounded cache: the same
batches as the full download for every rank (a cache smaller than the data: peak cached bytes within the limit,
rows of evicted shards by ranged reads, a rank touching only the shards its micro-batches need), a corrupt shard
refused, a cache smaller than a shard refused; and the trainer on streamed data: bit-identical losses to the
full download, and a resume in the middle of a shard continuing exactly."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from corpus.token_shards import TokenShardWriter, token_schema
from model.streaming import PreloadedRows, ShardCache, StreamingData, index_shard
from model.train import OrderedData, micro_positions
from pipeline.storage.remote import READER, open_reader, reader_settings
from tests.model.test_train import SEQ, launch, learnable_data, losses, ok, records, spec


def write_mixed_shards(directory: Path) -> tuple[list[str], np.ndarray]:
    """Four shards written in uneven record batches (as the tokenizer writes them), two with a loss mask and
    two without, and a global order permuting all their rows."""
    rng = np.random.default_rng(1)
    paths: list[str] = []
    sizes = [23, 17, 30, 11]
    for index, size in enumerate(sizes):
        masked = index % 2 == 0
        writer = TokenShardWriter(directory, f"s{index}", token_schema(SEQ, np.dtype(np.uint16), masked), "toy",
                                  size, on_closed=lambda path, *_counts: paths.append(str(path)), pad_id=1, eos_id=0)
        written = 0
        while written < size:
            take = min(int(rng.integers(0, 4)), size - written)
            tokens = rng.integers(0, 2048, (take, SEQ + 1)).astype(np.uint16)
            writer.write(tokens, rng.integers(0, 2, tokens.shape).astype(np.uint8))
            written += take
        writer.close()
    order = np.array([(s, r) for s, size in enumerate(sizes) for r in range(size)])[rng.permutation(sum(sizes))]
    return paths, order


def upload(store, paths: list[str], prefix: str) -> list[dict]:
    entries = []
    for path in paths:
        key = f"{prefix}/{Path(path).name}"
        store.put_file(key, Path(path))
        data = Path(path).read_bytes()
        rows = pa.ipc.open_stream(pa.py_buffer(data)).read_all().num_rows
        entries.append({"key": key, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "sequences": rows})
    return entries


def order_file(order: np.ndarray, path: Path) -> str:
    with pa.ipc.new_file(str(path), pa.schema([("shard", pa.uint32()), ("row", pa.uint32())])) as out:
        out.write_table(pa.table({"shard": order[:, 0].astype(np.uint32), "row": order[:, 1].astype(np.uint32)}))
    return str(path)


def targets(rows: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    """Which positions are targets (model/loss.py's rule): the mask where there is one, else id != pad."""
    return masks.astype(bool) if masks is not None else rows != 1


def test_index_finds_every_row_of_uneven_record_batches(tmp_path):
    from corpus.token_shards import read_tokens, sequences

    paths, _ = write_mixed_shards(tmp_path)
    for path in paths:
        index, table = index_shard(path), read_tokens(path)
        raw = Path(path).read_bytes()
        assert len(index.first_rows) > 3  # several record batches per shard
        for row, expected in enumerate(sequences(table)):
            start, length = index.token_span(row)
            assert np.array_equal(np.frombuffer(raw[start:start + length], np.uint16), expected)


def bytes_on_disk(directory: Path) -> int:
    """The bytes of the files listed at one instant; the prefetch thread may evict (or rename a download
    into place) between the listing and a file's stat, and a file that has gone counts nothing."""
    total = 0
    for name in os.listdir(directory):
        try:
            total += (directory / name).stat().st_size
        except FileNotFoundError:
            pass
    return total


@pytest.mark.parametrize("world", [1, 2])
def test_streamed_batches_equal_the_full_download_with_a_cache_smaller_than_the_data(store, tmp_path, world):
    paths, order = write_mixed_shards(tmp_path / "shards")
    entries = upload(store, paths, "tokens/mixed")
    reference = OrderedData(paths, order_file(order, tmp_path / "order.arrow"), pad_id=1)
    limit = max(entry["bytes"] for entry in entries) + 1  # room for one shard: the data is about four times that
    reader = open_reader(reader_settings(store))
    micro, accum, steps = 3, 2, len(order) // (3 * 2 * world) + 2  # past the end: the order again
    for rank in range(world):
        plan = [micro_positions(step, micro, index, rank, world, accum) for step in range(steps)
                for index in range(accum)]
        cache = ShardCache(reader, entries, tmp_path / f"cache{world}-{rank}", limit)
        streamed = StreamingData(cache, order[:, 0].astype(np.int64), order[:, 1].astype(np.int64), 1, iter(plan),
                                 lookahead=3, horizon=4)
        for positions in plan:
            rows, masks = streamed.batch(positions)
            expected_rows, expected_masks = reference.batch(positions)
            assert np.array_equal(rows, expected_rows) and rows.dtype == expected_rows.dtype
            assert np.array_equal(targets(rows, masks), targets(expected_rows, expected_masks))
            assert bytes_on_disk(cache.directory) <= limit
        streamed.close()
        stats = cache.stats
        assert 0 < stats["peak_cached_bytes"] <= limit
        assert stats["evictions"] > 0 and stats["range_reads"] > 0
        assert stats["downloads"] == len(set(order[np.concatenate(plan) % len(order), 0].tolist()))


def test_a_rank_reads_only_the_shards_its_micro_batches_need(s3_store, tmp_path):
    paths, _ = write_mixed_shards(tmp_path / "shards")
    entries = upload(s3_store, paths, "tokens/mixed")
    # rank 0 of 2 (micro-batch 2) reads positions 0-1, 4-5, ...: shards 0 and 1 only; rank 1 reads shards 2 and 3
    order = np.array([(0, 0), (1, 0), (2, 0), (3, 0), (1, 1), (0, 1), (3, 1), (2, 1)])
    plan = [micro_positions(step, 2, 0, 0, 2, 1) for step in range(2)]
    cache = ShardCache(open_reader(reader_settings(s3_store)), entries, tmp_path / "cache", 10 ** 9)
    streamed = StreamingData(cache, order[:, 0], order[:, 1], 1, iter(plan))
    for positions in plan:
        streamed.batch(positions)
    streamed.close()
    assert sorted(cache.index) == [0, 1] and cache.stats["downloads"] == 2
    assert sorted(path.name for path in cache.directory.iterdir()) == ["shard000000.arrow", "shard000001.arrow"]


def test_a_corrupt_shard_is_refused_and_a_cache_below_a_shard_fails_with_the_setting(local_store, tmp_path):
    paths, order = write_mixed_shards(tmp_path / "shards")
    entries = upload(local_store, paths, "tokens/mixed")
    reader = open_reader(reader_settings(local_store))
    with pytest.raises(ValueError, match="train.cache_gb"):
        ShardCache(reader, entries, tmp_path / "small", limit_bytes=entries[0]["bytes"] - 1)
    broken = [{**entries[0], "sha256": "0" * 64}] + entries[1:]
    streamed = StreamingData(ShardCache(reader, broken, tmp_path / "cache", 10 ** 9), np.zeros(4, np.int64),
                             np.arange(4), 1, iter([np.arange(2)]))
    with pytest.raises(OSError, match="do not match"):
        streamed.batch(np.arange(2))
    assert not list((tmp_path / "cache").iterdir())


def test_validation_rows_are_the_first_rows_in_shard_order(local_store, tmp_path):
    paths, _ = write_mixed_shards(tmp_path / "shards")
    entries = upload(local_store, paths, "tokens/mixed")
    reference = OrderedData(paths, None, pad_id=1)
    cache = ShardCache(open_reader(reader_settings(local_store)), entries, tmp_path / "cache", 10 ** 9)
    preloaded = PreloadedRows(cache, [entry["sequences"] for entry in entries], 30, pad_id=1)
    assert len(preloaded) == 30 and cache.stats["downloads"] == 2  # 23 + 17 rows: the first two shards
    positions = np.arange(30)
    (rows, masks), (expected_rows, expected_masks) = preloaded.batch(positions), reference.batch(positions)
    assert np.array_equal(rows, expected_rows) and np.array_equal(targets(rows, masks), targets(expected_rows,
                                                                                               expected_masks))


def streamed_data(store, data: dict, directory: Path, cache_bytes: int) -> dict:
    """The trainer's data spec streaming `learnable_data`'s shards from the store."""
    shards = upload(store, data["shards"], "tokens/train")
    val = upload(store, data["val_shards"], "tokens/val")
    return {"order": data["order"], "seq_len": data["seq_len"], "pad_id": data["pad_id"],
            "stream": {"reader": READER, "store": reader_settings(store), "shards": shards, "val_shards": val,
                       "cache_dir": str(directory), "cache_bytes": cache_bytes}}


def test_training_on_streamed_shards_matches_the_full_download_and_resumes_mid_shard(s3_store, tmp_path):
    data = learnable_data(tmp_path / "tokens")
    local = spec(tmp_path, data, "local", zero_stage=1, eval_every=4)
    ok(launch(local))
    limit = max(Path(path).stat().st_size for path in data["shards"]) + 1  # the data is three shards
    streamed = spec(tmp_path, streamed_data(s3_store, data, tmp_path / "cache", limit), "streamed", zero_stage=1,
                    eval_every=4)
    result = launch(streamed)
    ok(result)
    assert [(r["loss"], r.get("val_loss")) for r in records(streamed)] == \
        [(r["loss"], r.get("val_loss")) for r in records(local)]
    [stream] = [json.loads(line)["stream"] for line in result.stdout.splitlines() if line.startswith('{"stream"')]
    assert stream["peak_cached_bytes"] <= limit and stream["evictions"] > 0
    # stopped after step 3: step 4 reads positions 24-31 (micro 4 x accumulation 2), in the middle of shards
    parts = spec(tmp_path, streamed_data(s3_store, data, tmp_path / "cache-parts", limit), "parts", zero_stage=1,
                 eval_every=4, stop_at_step=3, checkpoint_every=3)
    ok(launch(parts))
    body = json.loads(parts.read_text())
    del body["train"]["stop_at_step"]
    parts.write_text(json.dumps(body))
    second = launch(parts)
    ok(second)
    assert "resumed from" in second.stdout and "at step 3" in second.stdout
    assert losses(parts) == losses(local) and len(losses(parts)) == 8
