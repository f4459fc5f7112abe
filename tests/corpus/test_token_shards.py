"""Token shards: packing at the boundaries, the loss-mask column, dtype selection, and reading the files
back with plain pyarrow (memory-mapped) and with datasets.Dataset.from_file."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from corpus.token_shards import Packer, TokenShardWriter, read_tokens, sequences, token_dtype, token_schema

EOS, PAD = 0, 1


def test_dtype_is_uint16_while_the_vocabulary_fits():
    assert token_dtype(50_257) == np.uint16 and token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32
    assert token_schema(8, np.dtype(np.uint32), False).field("tokens").type == pa.list_(pa.uint32(), 9)


def test_packing_cuts_exact_rows_with_eos_between_documents():
    packer = Packer(width=5, eos_id=EOS, pad_id=PAD, dtype=np.dtype(np.uint16))
    rows, _ = packer.add([10, 11, 12])  # 4 tokens with the eos: no full row yet
    assert rows.shape == (0, 5)
    rows, masks = packer.add([20, 21, 22, 23, 24, 25])  # 4 + 7 = 11 tokens: two rows, one token left
    assert rows.tolist() == [[10, 11, 12, EOS, 20], [21, 22, 23, 24, 25]] and masks.min() == 1
    rows, _ = packer.add([30, 31, 32])  # exactly fills the third row: nothing left over
    assert rows.tolist() == [[EOS, 30, 31, 32, EOS]]
    assert packer.finish()[0].shape == (0, 5)


def test_the_last_partial_row_is_padded_and_masked():
    packer = Packer(width=6, eos_id=EOS, pad_id=PAD, dtype=np.dtype(np.uint16))
    packer.add([7, 8])
    rows, masks = packer.finish()
    assert rows.tolist() == [[7, 8, EOS, PAD, PAD, PAD]] and masks.tolist() == [[1, 1, 1, 0, 0, 0]]


def test_a_document_longer_than_several_rows():
    packer = Packer(width=4, eos_id=EOS, pad_id=PAD, dtype=np.dtype(np.uint32))
    rows, _ = packer.add(list(range(100, 110)))  # 11 tokens: two full rows
    assert rows.dtype == np.uint32 and rows.reshape(-1).tolist() == list(range(100, 108))
    tail, _ = packer.finish()
    assert tail.tolist() == [[108, 109, EOS, PAD]]


def test_loss_mask_follows_the_given_mask():
    packer = Packer(width=4, eos_id=EOS, pad_id=PAD, dtype=np.dtype(np.uint16))
    rows, masks = packer.add([5, 6, 7], mask=np.array([0, 1, 1], dtype=np.uint8))
    assert rows.tolist() == [[5, 6, 7, EOS]] and masks.tolist() == [[0, 1, 1, 1]]


def _write(tmp_path, loss_mask: bool):
    schema = token_schema(4, np.dtype(np.uint16), loss_mask)
    closed = []
    writer = TokenShardWriter(tmp_path, "u", schema, "web", max_rows=3, pad_id=PAD, eos_id=EOS,
                              on_closed=lambda p, r, _tokens, _documents: closed.append((p, r)))
    tokens = np.arange(35, dtype=np.uint16).reshape(7, 5)
    masks = (tokens % 2).astype(np.uint8)
    writer.write(tokens[:2], masks[:2])
    writer.write(tokens[2:], masks[2:])
    writer.close()
    return tokens, masks, closed


def test_shards_roll_over_and_read_back_memory_mapped(tmp_path):
    tokens, masks, closed = _write(tmp_path, loss_mask=True)
    assert [(p.name, r) for p, r in closed] == [("u-0000.arrow", 3), ("u-0001.arrow", 3), ("u-0002.arrow", 1)]
    tables = [read_tokens(path) for path, _ in closed]
    assert np.array_equal(np.concatenate([sequences(t) for t in tables]), tokens)
    mask_column = pa.concat_tables(tables).column("loss_mask").combine_chunks()
    assert np.array_equal(mask_column.values.to_numpy().reshape(-1, 5), masks)
    assert set(pa.concat_tables(tables).column("source").to_pylist()) == {"web"}
    assert tables[0].schema.metadata[b"seq_len"] == b"4"
    # memory-mapped: reading allocates nothing, the ids stay in the file's mapping
    before = pa.total_allocated_bytes()
    table = read_tokens(closed[0][0])
    assert pa.total_allocated_bytes() == before and table.num_rows == 3


def test_datasets_reads_the_same_shards(tmp_path):
    from datasets import Dataset

    tokens, _, closed = _write(tmp_path, loss_mask=False)
    dataset = Dataset.from_file(str(closed[0][0]))
    assert dataset.num_rows == 3 and dataset.column_names == ["tokens", "source"]
    assert [list(row) for row in dataset["tokens"]] == tokens[:3].tolist()
