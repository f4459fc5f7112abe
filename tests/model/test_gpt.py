"""The GPT model: GPT-2's initialisation, causal attention, the loss over weighted targets, and a lossless
export to transformers' GPT2LMHeadModel (logits equal to 1e-4 in fp32) and to safetensors, and loading a
GPT-2-format checkpoint back (the start of continued pretraining)."""

from __future__ import annotations

import math

import pytest
import torch

from model.export import export_hf, load_checkpoint, load_weights, save_weights
from model.gpt import GPT, GPTConfig, lm_loss, targets_and_weights
from model.sizing import gpt2_parameters

CONFIG = GPTConfig(vocab_size=300, n_positions=32, n_layer=3, n_head=4, d_model=64)


def model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CONFIG).eval()


def test_initialisation_follows_gpt2():
    gpt = model()
    assert gpt.lm_head.weight is gpt.wte.weight
    assert gpt.num_parameters() == gpt2_parameters(3, 64, 32, 300)
    assert gpt.wte.weight.std().item() == pytest.approx(0.02, rel=0.1)
    residual = torch.cat([block.attn.c_proj.weight.reshape(-1) for block in gpt.h] +
                         [block.mlp.c_proj.weight.reshape(-1) for block in gpt.h])
    assert residual.std().item() == pytest.approx(0.02 / math.sqrt(2 * 3), rel=0.1)
    assert all(block.attn.c_attn.bias.abs().max().item() == 0 for block in gpt.h)


def test_attention_is_causal():
    gpt = model()
    ids = torch.randint(0, 300, (1, 16))
    changed = ids.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 300
    assert torch.allclose(gpt(ids)[0, :10], gpt(changed)[0, :10], atol=1e-6)
    assert not torch.allclose(gpt(ids)[0, 10:], gpt(changed)[0, 10:], atol=1e-6)


def test_loss_counts_only_weighted_targets():
    rows = torch.tensor([[5, 6, 7, 1, 1]])  # two padding targets at the end
    inputs, targets, weights = targets_and_weights(rows, pad_id=1)
    assert weights.tolist() == [[True, True, False, False]]
    logits = torch.zeros(1, 4, 10)
    logits[0, 0, 6] = 5.0  # confident and right on the first target
    expected = (torch.nn.functional.cross_entropy(logits[0, :2], targets[0, :2], reduction="sum") / 2).item()
    assert lm_loss(logits, targets, weights).item() == pytest.approx(expected)
    mask = torch.tensor([[0, 0, 1, 1, 1]])  # a prompt: only the third token on is a target
    assert targets_and_weights(rows, 1, mask)[2].tolist() == [[False, True, False, False]]


def test_hf_export_gives_the_same_logits(tmp_path):
    from transformers import GPT2LMHeadModel

    gpt = model(1)
    export_hf(gpt, tmp_path / "hf", eos_id=0, pad_id=1)
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    ids = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        ours, theirs = gpt(ids), hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_safetensors_round_trip(tmp_path):
    gpt = model(2)
    save_weights(gpt, tmp_path / "w.safetensors")
    other = load_weights(model(3), tmp_path / "w.safetensors")
    ids = torch.randint(0, 300, (1, 8))
    assert torch.equal(gpt(ids), other(ids)) and other.lm_head.weight is other.wte.weight


def test_a_gpt2_format_checkpoint_loads_back_with_the_same_logits(tmp_path):
    import json

    gpt = model(4)
    export_hf(gpt, tmp_path / "hf", eos_id=0, pad_id=1)
    loaded = load_checkpoint(tmp_path / "hf").eval()
    assert loaded.config == CONFIG
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        assert torch.allclose(gpt(ids), loaded(ids), atol=1e-5)
    ours = tmp_path / "ours"
    ours.mkdir()
    save_weights(gpt, ours / "model.safetensors")
    (ours / "model_config.json").write_text(json.dumps(CONFIG.to_dict()))
    assert torch.equal(load_checkpoint(ours)(ids), gpt(ids))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match="only GPT-2"):
        load_checkpoint(tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match="not a GPT-2 checkpoint"):
        load_checkpoint(tmp_path)
