"""The tokenize stage on the sample: shards, counts per split and shard, split stability, the loss-mask
column, resume-free determinism, and that the packed ids decode back to the documents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.artifacts import fetch_verified, files_with_role
from pipeline.config import TokenizeConfig
from corpus.token_shards import read_tokens, sequences
from tasks.tokenize import split_of
from tasks.tokenizer import load_tokenizer
from tests.tasks import chain


@pytest.fixture(scope="module")
def tokenized(filtered_sample, tmp_path_factory):
    store, inputs = filtered_sample
    tokenizer = chain.tokenizer(store, inputs)
    settings = TokenizeConfig(workers=2, seq_len=64, val_fraction=0.1, shard_max_sequences=500)
    return store, inputs, tokenizer, chain.tokenize(store, "docs", inputs["docs"], tokenizer, settings)


def _rows(store, manifest, split: str, scratch: Path) -> np.ndarray:
    entries = sorted((e for e in files_with_role(manifest, "tokens") if e["split"] == split), key=lambda e: e["path"])
    return np.concatenate([sequences(read_tokens(fetch_verified(store, manifest, e, scratch))) for e in entries])


def test_counts_per_split_and_per_shard_add_up(tokenized, tmp_path):
    store, inputs, _, manifest = tokenized
    counts = manifest["counts"]
    assert counts["documents_in"] == inputs["docs"]["counts"]["documents"]
    train, val = counts["splits"]["train"], counts["splits"]["val"]
    assert train["documents"] + val["documents"] == counts["documents_in"] and val["documents"] > 0
    entries = list(files_with_role(manifest, "tokens"))
    assert manifest["summary"]["dtype"] == "uint16" and manifest["summary"]["seq_len"] == 64
    for split, figures in (("train", train), ("val", val)):
        mine = [e for e in entries if e["split"] == split]
        assert all(e["path"].startswith(f"{split}/") and e["source"] == "docs" for e in mine)
        assert sum(e["sequences"] for e in mine) == figures["sequences"]
        assert sum(e["documents"] for e in mine) == figures["documents"]
        assert sum(e["tokens"] for e in mine) == figures["tokens"]
        rows = _rows(store, manifest, split, tmp_path)
        assert rows.shape == (figures["sequences"], 65)
        # every id but the padding is a token of a document or its end-of-text
        assert np.count_nonzero(rows != 1) == figures["tokens"]
    assert max(e["sequences"] for e in entries) <= 500 and len(entries) > 2


def test_the_packed_stream_decodes_back_to_the_documents(tokenized, tmp_path):
    store, inputs, tokenizer_manifest, manifest = tokenized
    tokenizer = load_tokenizer(store, tokenizer_manifest, tmp_path)
    rows = _rows(store, manifest, "val", tmp_path)
    stream = rows.reshape(-1)
    stream = stream[stream != 1]  # padding
    ends = np.flatnonzero(stream == 0)
    documents = [tokenizer.decode(stream[start:end].tolist()) for start, end in zip(np.r_[0, ends[:-1] + 1], ends)]
    texts = {row["id"]: row["text"] for row in chain.read_rows(store, inputs["docs"])}
    expected = [texts[doc_id] for doc_id in texts if split_of(doc_id, 0.1) == "val"]
    assert sorted(documents) == sorted(expected)


def test_the_split_is_stable_and_independent_of_everything_but_the_id():
    ids = [f"doc-{n}" for n in range(2000)]
    first = [split_of(doc_id, 0.05) for doc_id in ids]
    assert first == [split_of(doc_id, 0.05) for doc_id in ids]
    assert 60 <= first.count("val") <= 140
    # a larger fraction only adds documents to validation, never moves one back
    assert all(split_of(doc_id, 0.1) == "val" for doc_id, split in zip(ids, first) if split == "val")


def test_rerun_gives_the_same_bytes_and_the_loss_mask_column_is_optional(tokenized):
    from tasks.tokenize import run_tokenize, tokenize_spec

    store, inputs, tokenizer, manifest = tokenized
    # one worker instead of two, rebuilt under a new version: the same files, byte for byte
    settings = TokenizeConfig(workers=1, seq_len=64, val_fraction=0.1, shard_max_sequences=500)
    assert tokenize_spec("docs", settings, inputs["docs"], tokenizer).version == manifest["version"]
    spec = tokenize_spec("docs", settings, inputs["docs"], tokenizer, rebuild="again")
    again = run_tokenize("docs", settings, store, spec, inputs["docs"], tokenizer, progress=lambda _m: None)
    assert again["version"] != manifest["version"] and again["files"] == manifest["files"]
    masked = chain.tokenize(store, "docs", inputs["docs"], tokenizer,
                            TokenizeConfig(workers=1, seq_len=64, val_fraction=0.1, loss_mask=True))
    assert masked["version"] != manifest["version"]
    entry = next(files_with_role(masked, "tokens"))
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        table = read_tokens(fetch_verified(store, masked, entry, Path(scratch)))
        assert table.column_names == ["tokens", "source", "loss_mask"]
        masks = table.column("loss_mask").combine_chunks().values.to_numpy().reshape(-1, 65)
        ids = sequences(table)
        assert np.array_equal(masks == 0, ids == 1)  # pretraining text: only the padding is masked
