"""Token shards read from the artifact store while training, through a bounded local cache.

The global order is known before the first step, so each rank knows exactly which rows (shard, row) its
coming micro-batches need, and in which sequence. `StreamingData` walks them on a background thread,
`lookahead` micro-batches ahead of the training loop, and hands the loop the same arrays `OrderedData`
(model/train.py) would: same rows, same order, bit-identical losses. A resumed run starts the walk at its
step, so a resume in the middle of a shard continues exactly.

`ShardCache` holds at most `limit_bytes` of shard files on local disk:
- a shard a rank needs for the first time is downloaded whole into the cache (size and sha256 checked
  against its manifest entry) and indexed: where each record batch's rows lie in the file (an Arrow IPC
  stream has no footer, so finding them needs the file once);
- its rows are read from the local file while it stays cached; after it was evicted, by ranged reads of
  just those rows' bytes (the token ids, and the loss mask where the shard has one);
- room for a download is made by evicting shards: first those the lookahead does not need, then the one
  needed furthest ahead; ties go to the least recently used. A rank never downloads a shard none of its
  micro-batches need.

The mixture's order is one permutation across all shards (no shard's data arrives in one block), so a
cache smaller than the data cannot keep every shard: each shard then crosses the network whole once (to
index it) and afterwards only the rows that are read. A cache at least as large as the data behaves like
the full download, spread over the run instead of before its first step.

The store is reached through a `reader` with two methods, `download(key, path)` and
`get_range(key, start, length)`; model/train.py builds it from the factory the run spec names, so this
module knows nothing of the storage backends or their credentials.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np


class ShardReader(Protocol):
    def download(self, key: str, path: Path) -> None: ...

    def get_range(self, key: str, start: int, length: int) -> bytes: ...


@dataclass(frozen=True)
class ShardIndex:
    """Where the rows of one token shard lie in its file: per record batch, its first row and the file
    offsets of its first token id and first loss-mask byte (rows of a batch are contiguous)."""

    rows: int
    width: int
    dtype: np.dtype
    first_rows: np.ndarray
    tokens_at: np.ndarray
    masks_at: np.ndarray | None

    def locate(self, row: int) -> tuple[int, int]:
        batch = int(np.searchsorted(self.first_rows, row, side="right")) - 1
        return batch, row - int(self.first_rows[batch])

    def token_span(self, row: int) -> tuple[int, int]:
        batch, inside = self.locate(row)
        length = self.width * self.dtype.itemsize
        return int(self.tokens_at[batch]) + inside * length, length

    def mask_span(self, row: int) -> tuple[int, int]:
        assert self.masks_at is not None
        batch, inside = self.locate(row)
        return int(self.masks_at[batch]) + inside * self.width, self.width


def index_shard(path: Path | str) -> ShardIndex:
    """The row layout of a token shard file (corpus/token_shards.py's format), read from the file's mapping."""
    import pyarrow as pa

    whole = pa.memory_map(str(path)).read_buffer()
    table = pa.ipc.open_stream(whole).read_all()
    width = table.schema.field("tokens").type.list_size
    dtype = np.dtype(table.schema.field("tokens").type.value_type.to_pandas_dtype())

    def offsets(column: str, itemsize: int) -> np.ndarray:
        found = []
        for chunk in table.column(column).chunks:
            if len(chunk):
                values = chunk.flatten()  # the chunk's own rows (flatten honours a slice's offset)
                found.append(values.buffers()[1].address - whole.address + values.offset * itemsize)
        return np.array(found, dtype=np.int64)

    first_rows, row = [], 0
    for chunk in table.column("tokens").chunks:
        if len(chunk):
            first_rows.append(row)
            row += len(chunk)
    masks = offsets("loss_mask", 1) if "loss_mask" in table.column_names else None
    return ShardIndex(table.num_rows, width, dtype, np.array(first_rows, dtype=np.int64),
                      offsets("tokens", dtype.itemsize), masks)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardCache:
    """Token shard files on local disk, at most `limit_bytes` of them at any time; rows of shards not
    cached come by ranged reads. `shards`: per shard index, {key, bytes, sha256}. One thread at a time
    calls `rows` (the ranged reads of one call run in parallel on `threads` connections)."""

    def __init__(self, reader: ShardReader, shards: list[dict], directory: Path, limit_bytes: int, threads: int = 8):
        largest = max((shard["bytes"] for shard in shards), default=0)
        if largest > limit_bytes:
            raise ValueError(f"train.cache_gb: the cache ({limit_bytes / 1e9:.3g} GB) is smaller than the largest "
                             f"token shard ({largest / 1e9:.3g} GB): raise train.cache_gb, or lower "
                             f"tokenize.shard_max_sequences")
        self.reader, self.shards, self.limit = reader, shards, limit_bytes
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.index: dict[int, ShardIndex] = {}
        self.cached: OrderedDict[int, int] = OrderedDict()  # shard -> bytes, least recently used first
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shard-range")
        self.stats = {"downloads": 0, "downloaded_bytes": 0, "range_reads": 0, "range_bytes": 0, "evictions": 0,
                      "cached_bytes": 0, "peak_cached_bytes": 0, "limit_bytes": limit_bytes}

    def path(self, shard: int) -> Path:
        return self.directory / f"shard{shard:06d}.arrow"

    def has_mask(self, shard: int) -> bool:
        return self.index[shard].masks_at is not None

    def rows(self, shard: int, rows: np.ndarray, next_use=lambda shard: float("inf")
             ) -> tuple[np.ndarray, np.ndarray | None]:
        """The token ids (rows, width) and loss masks (or None) of some rows of one shard. `next_use(s)`: how
        soon shard s is needed again (smaller: sooner; inf: not in the lookahead), for choosing evictions."""
        if shard not in self.index:
            self._download(shard, next_use)
        index = self.index[shard]
        if shard in self.cached:
            self.cached.move_to_end(shard)
            return self._read_local(shard, index, rows)
        return self._read_ranges(shard, index, rows)

    def _download(self, shard: int, next_use) -> None:
        size = self.shards[shard]["bytes"]
        while self.stats["cached_bytes"] + size > self.limit:
            # not needed ahead first (inf), then the furthest; among equals the least recently used (first in order)
            victim = max(self.cached, key=lambda s: (next_use(s), -list(self.cached).index(s)))
            self.evict(victim)
        self.stats["cached_bytes"] += size  # reserved before the bytes land, so the peak counts a download in flight
        self.stats["peak_cached_bytes"] = max(self.stats["peak_cached_bytes"], self.stats["cached_bytes"])
        target, partial = self.path(shard), self.path(shard).with_suffix(".part")
        try:
            self.reader.download(self.shards[shard]["key"], partial)
            got = partial.stat().st_size
            if got != size or sha256_of(partial) != self.shards[shard]["sha256"]:
                raise OSError(f"token shard {self.shards[shard]['key']}: expected {size} bytes with sha256 "
                              f"{self.shards[shard]['sha256'][:12]}…, got {got} bytes that do not match")
            partial.rename(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            self.stats["cached_bytes"] -= size
            raise
        self.cached[shard] = size
        self.index[shard] = index_shard(target)
        self.stats["downloads"] += 1
        self.stats["downloaded_bytes"] += size

    def evict(self, shard: int) -> None:
        self.path(shard).unlink(missing_ok=True)
        self.stats["cached_bytes"] -= self.cached.pop(shard)
        self.stats["evictions"] += 1

    def _read_local(self, shard: int, index: ShardIndex, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        descriptor = os.open(self.path(shard), os.O_RDONLY)
        try:
            tokens = np.stack([np.frombuffer(os.pread(descriptor, *reversed(index.token_span(r))), index.dtype)
                               for r in rows])
            masks = None if index.masks_at is None else np.stack(
                [np.frombuffer(os.pread(descriptor, *reversed(index.mask_span(r))), np.uint8) for r in rows])
        finally:
            os.close(descriptor)
        return tokens, masks

    def _read_ranges(self, shard: int, index: ShardIndex, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        key = self.shards[shard]["key"]
        spans = [index.token_span(r) for r in rows]
        if index.masks_at is not None:
            spans += [index.mask_span(r) for r in rows]
        parts = list(self.pool.map(lambda span: self.reader.get_range(key, *span), spans))
        self.stats["range_reads"] += len(parts)
        self.stats["range_bytes"] += sum(len(part) for part in parts)
        tokens = np.stack([np.frombuffer(part, index.dtype) for part in parts[:len(rows)]])
        masks = None if index.masks_at is None else np.stack([np.frombuffer(p, np.uint8) for p in parts[len(rows):]])
        return tokens, masks

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def gather(cache: ShardCache, shard_of: np.ndarray, row_of: np.ndarray, pad_id: int, next_use=None
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows at some (shard, row) pairs, in their order, and their loss masks: None when none of the rows'
    shards has a mask column; else a row of a shard without one gets `id != pad_id` — the targets the loss
    takes without a mask, so the loss is the one OrderedData's batches give."""
    tokens: list = [None] * len(shard_of)
    masks: list = [None] * len(shard_of)
    for shard in dict.fromkeys(shard_of.tolist()):  # each shard once, in order of first appearance
        where = np.flatnonzero(shard_of == shard)
        got, got_masks = cache.rows(shard, row_of[where], next_use or (lambda s: float("inf")))
        for slot, position in enumerate(where):
            tokens[position] = got[slot]
            masks[position] = None if got_masks is None else got_masks[slot]
    rows = np.stack(tokens).astype(np.int64)
    if all(mask is None for mask in masks):
        return rows, None
    return rows, np.stack([mask if mask is not None else row != pad_id
                           for mask, row in zip(masks, rows)]).astype(np.uint8)


class StreamingData:
    """A rank's micro-batches over the global order, read ahead on a background thread. `plan`: the positions
    of every micro-batch the training loop will ask for, in the order it asks; `batch(positions)` must follow it."""

    def __init__(self, cache: ShardCache, shard: np.ndarray, row: np.ndarray, pad_id: int,
                 plan: Iterable[np.ndarray], lookahead: int = 8, horizon: int = 256):
        self.cache, self.shard, self.row, self.pad_id = cache, shard, row, pad_id
        self.ready: queue.Queue = queue.Queue(maxsize=max(lookahead, 1))
        self.horizon = max(horizon, lookahead)
        self.first_batch_seconds: float | None = None
        self._started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(iter(plan),), name="shard-prefetch", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return len(self.shard)

    def _fill(self, plan: Iterator[np.ndarray]) -> None:
        upcoming: deque[np.ndarray] = deque()
        try:
            while not self._stop.is_set():
                while len(upcoming) < self.horizon and (positions := next(plan, None)) is not None:
                    upcoming.append(positions % len(self.shard))
                if not upcoming:
                    break
                positions = upcoming.popleft()

                def next_use(candidate: int) -> float:
                    for distance, later in enumerate(upcoming):
                        if (self.shard[later] == candidate).any():
                            return distance
                    return float("inf")

                # the shards of the micro-batch being gathered are not evicted for each other
                current = set(self.shard[positions].tolist())
                item = (positions, *gather(self.cache, self.shard[positions], self.row[positions], self.pad_id,
                                           lambda s: -1.0 if s in current else next_use(s)))
                self._put(item)
        except BaseException as exc:  # handed to the training loop, which raises it
            self._put(exc)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self.ready.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def batch(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        item = self.ready.get()
        if isinstance(item, BaseException):
            raise item
        planned, rows, masks = item
        if not np.array_equal(planned, positions % len(self.shard)):
            raise RuntimeError("streaming: the training loop asked for other positions than its plan")
        if self.first_batch_seconds is None:
            self.first_batch_seconds = time.perf_counter() - self._started
        return rows, masks

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.cache.close()


class PreloadedRows:
    """The first `rows` rows of some shards in shard order (the validation rows), read once through a cache."""

    def __init__(self, cache: ShardCache, sequences: list[int], rows: int, pad_id: int):
        shard = np.concatenate([np.full(count, index) for index, count in enumerate(sequences)] or [[]])
        row = np.concatenate([np.arange(count) for count in sequences] or [[]])
        take = min(rows, len(shard))
        self.rows, self.masks = gather(cache, shard[:take].astype(np.int64), row[:take].astype(np.int64), pad_id) \
            if take else (np.zeros((0, 0), np.int64), None)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self.rows[positions], None if self.masks is None else self.masks[positions]
