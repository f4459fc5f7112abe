"""Checkpoint directories in and out: every supported family loads and re-exports with bit-identical logits on
real text; what cannot be used is refused in one line before any work (unsupported architecture, pickled weights,
a context shorter than the sequences, no tokenizer); the identity follows the files' content."""

from __future__ import annotations

import shutil

import pytest

from model.checkpoint import CheckpointError, inspect_checkpoint, load_model, save_hf
from tests.checkpoints import make_checkpoint, sample_texts

FAMILY_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "gpt2": "GPT2LMHeadModel"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {family: make_checkpoint(family, root / family) for family in FAMILY_CLASSES}


@pytest.mark.parametrize("family", list(FAMILY_CLASSES))
def test_load_and_export_keep_the_logits_bit_for_bit(checkpoints, family, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = inspect_checkpoint(checkpoints[family], seq_len=256)
    assert info.model_type == family and "model.safetensors" in info.files and len(info.identity()) == 64
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoints[family]))
    ids = torch.tensor([tokenizer(sample_texts(1)[0][:600])["input_ids"][:200]])
    original = AutoModelForCausalLM.from_pretrained(str(checkpoints[family])).eval()
    exported = save_hf(load_model(checkpoints[family]), tmp_path / "out")
    again = AutoModelForCausalLM.from_pretrained(str(exported)).eval()
    assert type(again).__name__ == FAMILY_CLASSES[family]
    with torch.no_grad():
        assert torch.equal(original(ids).logits, again(ids).logits)


def test_unsupported_architecture_is_refused(checkpoints, tmp_path):
    import json

    copy = shutil.copytree(checkpoints["llama"], tmp_path / "falcon")
    config = json.loads((copy / "config.json").read_text())
    config.update(model_type="falcon", architectures=["FalconForCausalLM"])
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"architecture 'falcon' \(FalconForCausalLM\) is not supported; "
                                              r"supported model types: gpt2, llama, mistral, qwen2"):
        inspect_checkpoint(copy)


def test_pickled_weights_are_refused(checkpoints, tmp_path):
    import torch
    from safetensors.torch import load_file

    copy = shutil.copytree(checkpoints["qwen2"], tmp_path / "bin")
    torch.save(load_file(str(copy / "model.safetensors")), copy / "pytorch_model.bin")
    (copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="the weights are pytorch_model.bin, not safetensors"):
        inspect_checkpoint(copy)


def test_short_context_and_missing_tokenizer_are_refused(checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="context is 512 positions, shorter than tokenize.seq_len 1024"):
        inspect_checkpoint(checkpoints["mistral"], seq_len=1024)
    copy = shutil.copytree(checkpoints["gpt2"], tmp_path / "notok")
    (copy / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        inspect_checkpoint(copy)
    with pytest.raises(CheckpointError, match="no config.json"):
        inspect_checkpoint(tmp_path)


def test_identity_follows_content_not_path(checkpoints, tmp_path):
    first = inspect_checkpoint(checkpoints["llama"])
    moved = inspect_checkpoint(shutil.copytree(checkpoints["llama"], tmp_path / "elsewhere"))
    assert moved.identity() == first.identity()
    retrained = inspect_checkpoint(make_checkpoint("llama", tmp_path / "seed1", seed=1))
    assert retrained.identity() != first.identity()
