"""Token shards: packed sequences of token ids in Arrow IPC files, and the packing of documents into them.

A shard is an uncompressed Arrow IPC stream file (`.arrow`, the format HF `datasets` writes and
`Dataset.from_file` reads; readers can memory-map it) with one row per sequence:

    tokens     fixed_size_list<uint16 | uint32>[seq_len + 1]   ids; uint16 while the vocabulary fits
    source     string (dictionary-encoded)                       the source the sequence comes from
    loss_mask  fixed_size_list<uint8>[seq_len + 1]              optional: 1 where the token is a training
                                                                 target (instruction fine-tuning masks prompts)

Documents are concatenated, each followed by the end-of-text token, and cut into rows of seq_len + 1
tokens (a model reads tokens[:-1] and predicts tokens[1:]); a document may continue into the next row.
The last, partial row of a shard's stream is filled with the pad token and its pad positions get
loss_mask 0; trainers never use a pad position as a target, with or without the loss_mask column. A
tokenizer whose pad token is its end-of-text token (many checkpoints' tokenizers have no pad token)
always gets the loss_mask column, so padding cannot be told from a real end of text by its id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab_size <= 65,536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def token_schema(seq_len: int, dtype: np.dtype, loss_mask: bool) -> pa.Schema:
    fields = [
        pa.field("tokens", pa.list_(pa.from_numpy_dtype(dtype), seq_len + 1), nullable=False),
        pa.field("source", pa.dictionary(pa.int32(), pa.string()), nullable=False),
    ]
    if loss_mask:
        fields.append(pa.field("loss_mask", pa.list_(pa.uint8(), seq_len + 1), nullable=False))
    return pa.schema(fields, metadata={"seq_len": str(seq_len)})


class Packer:
    """Concatenates documents (ids + end-of-text) into rows of `width` tokens.

    `add` returns the rows completed by a document as arrays (tokens, mask) of shape (rows, width);
    `finish` returns the last partial row padded with `pad_id` (mask 0 there), or nothing if empty.
    """

    def __init__(self, width: int, eos_id: int, pad_id: int, dtype: np.dtype):
        self.width, self.eos_id, self.pad_id, self.dtype = width, eos_id, pad_id, dtype
        self._tokens: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        self._buffered = 0

    def add(self, ids: list[int] | np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.empty(len(ids) + 1, dtype=self.dtype)
        tokens[:-1] = ids
        tokens[-1] = self.eos_id
        masks = np.ones(len(tokens), dtype=np.uint8)
        if mask is not None:
            masks[:-1] = mask
            masks[-1] = mask[-1] if len(mask) else 1  # the end of a masked turn is not a target either
        self._tokens.append(tokens)
        self._masks.append(masks)
        self._buffered += len(tokens)
        return self._take_full_rows()

    def _take_full_rows(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self._buffered // self.width
        if not rows:
            return self._empty()
        tokens = np.concatenate(self._tokens)
        masks = np.concatenate(self._masks)
        used = rows * self.width
        self._tokens, self._masks = [tokens[used:]], [masks[used:]]
        self._buffered = len(tokens) - used
        return tokens[:used].reshape(rows, self.width), masks[:used].reshape(rows, self.width)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._buffered:
            return self._empty()
        tokens = np.concatenate(self._tokens)
        masks = np.concatenate(self._masks)
        padding = self.width - len(tokens)
        tokens = np.concatenate([tokens, np.full(padding, self.pad_id, dtype=self.dtype)])
        masks = np.concatenate([masks, np.zeros(padding, dtype=np.uint8)])
        self._tokens, self._masks, self._buffered = [], [], 0
        return tokens.reshape(1, self.width), masks.reshape(1, self.width)

    def _empty(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((0, self.width), dtype=self.dtype), np.zeros((0, self.width), dtype=np.uint8)


class TokenShardWriter:
    """Writes rows into `<stem>-0000.arrow`, `<stem>-0001.arrow`, ... of at most `max_rows` rows each;
    `on_closed(path, rows, tokens, documents)` runs once a file is complete, with its rows, its tokens
    that are not padding and its documents (end-of-text tokens)."""

    def __init__(self, directory: Path, stem: str, schema: pa.Schema, source: str, max_rows: int,
                 on_closed: Callable[[Path, int, int, int], None], *, pad_id: int, eos_id: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stem, self.schema, self.source, self.max_rows = stem, schema, source, max_rows
        self.on_closed, self.pad_id, self.eos_id = on_closed, pad_id, eos_id
        self.files = 0
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._path: Path | None = None
        self._rows = self._tokens = self._documents = 0

    def write(self, tokens: np.ndarray, masks: np.ndarray, padding: np.ndarray | None = None) -> None:
        """Append rows; `padding` (per row: pad positions at its end) is needed only where the pad id is the
        end-of-text id — otherwise padding is told by its id."""
        if padding is None:
            padding = np.zeros(len(tokens), np.int64) if self.pad_id == self.eos_id else \
                np.count_nonzero(tokens == self.pad_id, axis=1)
        start = 0
        while start < len(tokens):
            if self._writer is None:
                self._path = self.directory / f"{self.stem}-{self.files:04d}.arrow"
                self._writer = pa.ipc.new_stream(str(self._path), self.schema)
            take = min(len(tokens) - start, self.max_rows - self._rows)
            rows = tokens[start:start + take]
            self._writer.write_batch(self._batch(rows, masks[start:start + take]))
            self._rows += take
            padded = int(padding[start:start + take].sum())
            self._tokens += rows.size - padded
            self._documents += int(np.count_nonzero(rows == self.eos_id)) - (padded if self.pad_id == self.eos_id else 0)
            start += take
            if self._rows >= self.max_rows:
                self._close_file()

    def _batch(self, tokens: np.ndarray, masks: np.ndarray) -> pa.RecordBatch:
        width = tokens.shape[1]
        columns = [
            pa.FixedSizeListArray.from_arrays(pa.array(tokens.reshape(-1)), width),
            pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(tokens), dtype=np.int32)),
                                           pa.array([self.source])),
        ]
        if "loss_mask" in self.schema.names:
            columns.append(pa.FixedSizeListArray.from_arrays(pa.array(masks.reshape(-1)), width))
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        assert self._path is not None
        self.on_closed(self._path, self._rows, self._tokens, self._documents)
        self._writer, self._path = None, None
        self._rows = self._tokens = self._documents = 0
        self.files += 1

    def close(self) -> None:
        self._close_file()


def read_tokens(path: Path | str) -> pa.Table:
    """A token shard as a table, memory-mapped: the ids stay in the file's mapping, nothing is copied."""
    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()


def sequences(table: pa.Table) -> np.ndarray:
    """The tokens column as a (rows, seq_len + 1) array (a zero-copy view where the file is mapped)."""
    column = table.column("tokens").combine_chunks()
    width = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, width)
