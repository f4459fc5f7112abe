"""The tokenizer stage: a byte-level BPE trained on the sample, its special tokens, the HF export,
determinism, a given tokenizer.json, and text that spells a special token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.artifacts import fetch_verified, files_with_role
from pipeline.config import TokenizerConfig
from tasks.tokenizer import load_tokenizer, run_tokenizer, tokenizer_spec
from tests.tasks import chain


@pytest.fixture(scope="module")
def trained(filtered_sample):
    store, inputs = filtered_sample
    return store, inputs, chain.tokenizer(store, inputs)


def test_specials_come_first_and_the_vocabulary_has_the_configured_size(trained):
    _, _, manifest = trained
    assert manifest["counts"]["vocab_size"] == 2048
    assert manifest["counts"]["special_token_ids"] == {"<|endoftext|>": 0, "<|pad|>": 1, "<|system|>": 2,
                                                        "<|user|>": 3, "<|assistant|>": 4, "<|end|>": 5}
    assert manifest["counts"]["sample_documents"] > 300


def test_transformers_loads_the_artifact_and_round_trips_text(trained, tmp_path):
    from transformers import PreTrainedTokenizerFast

    store, _, manifest = trained
    for entry in files_with_role(manifest, "tokenizer"):
        fetch_verified(store, manifest, entry, tmp_path).rename(tmp_path / entry["path"])
    fast = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert fast.eos_token == "<|endoftext|>" and fast.pad_token_id == 1
    assert fast.extra_special_tokens == ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    text = "Installez le système Debian: «apt-get install» — 日本語も. Ünïcödé 🙂"
    assert fast.decode(fast.encode(text)) == text
    (tmp_path / "again").mkdir()
    ours = load_tokenizer(store, manifest, tmp_path / "again")
    assert ours.encode(text).ids == fast.encode(text)


def test_text_spelling_a_special_token_is_encoded_as_text(trained, tmp_path):
    store, _, manifest = trained
    tokenizer = load_tokenizer(store, manifest, tmp_path)
    ids = tokenizer.encode("before <|endoftext|> after").ids
    assert 0 not in ids and tokenizer.decode(ids) == "before <|endoftext|> after"


def test_training_is_deterministic(trained, tmp_path):
    from pipeline.storage import LocalStore

    store, inputs, manifest = trained
    other = LocalStore(tmp_path / "other", "p")
    settings = TokenizerConfig(vocab_size=2048)
    # the same inputs (read from the first store) into a second store: the same version and bytes
    again = run_tokenizer(settings, other, tokenizer_spec(settings, inputs, 64, None),
                          _copy_inputs(store, other, inputs), 64, progress=lambda _m: None)
    assert again["version"] == manifest["version"]
    assert [(f["path"], f["sha256"]) for f in again["files"]] == [(f["path"], f["sha256"]) for f in manifest["files"]]


def _copy_inputs(source_store, target_store, inputs: dict) -> dict:
    """The filter artifacts copied byte for byte into another store."""
    import tempfile

    from pipeline.artifacts import MANIFEST, artifact_prefix
    from pipeline.storage import join_key

    for manifest in inputs.values():
        prefix = artifact_prefix(manifest["artifact"], manifest["version"])
        with tempfile.TemporaryDirectory() as scratch:
            for entry in manifest["files"]:
                path = fetch_verified(source_store, manifest, entry, Path(scratch))
                target_store.put_file(join_key(prefix, entry["path"]), path)
        target_store.put_bytes(join_key(prefix, MANIFEST), source_store.get_bytes(join_key(prefix, MANIFEST)))
    return inputs


def test_a_given_tokenizer_is_used_as_is_and_must_hold_the_specials(trained, tmp_path):
    store, inputs, manifest = trained
    given = tmp_path / "given.json"
    given.write_text(load_tokenizer(store, manifest, tmp_path).to_str())
    settings = TokenizerConfig(path=str(given))
    spec = tokenizer_spec(settings, inputs, 64, "sha")
    loaded = run_tokenizer(settings, store, spec, inputs, 64, given=given, progress=lambda _m: None)
    assert loaded["counts"]["vocab_size"] == 2048 and loaded["counts"]["sample_documents"] == 0
    # the corpus does not matter for a given tokenizer; its content does
    assert tokenizer_spec(settings, {}, 64, "sha").version == spec.version
    assert tokenizer_spec(settings, inputs, 64, "other").version != spec.version
    strict = TokenizerConfig(path=str(given), role_tokens=["<|tool|>"])
    with pytest.raises(ValueError, match=r"special tokens \['<\|tool\|>'\] are not in its vocabulary"):
        run_tokenizer(strict, store, tokenizer_spec(strict, inputs, 64, "sha2"), inputs, 64, given=given,
                      progress=lambda _m: None)
    assert json.loads(given.read_text())["model"]["type"] == "BPE"
