"""The compute plan's arithmetic agrees with transformers: parameter counts of every supported family (GQA,
SwiGLU widths, tied and untied embeddings, Qwen2's q/k/v biases) equal `model.num_parameters()`, and the FLOPs
per token count attention."""

from __future__ import annotations

import pytest

from model.families import PRESETS, build_model, hf_config_dict, resolve_size
from model.sizing import chinchilla_tokens, count_parameters, flops_per_token

SMALL = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 500}


@pytest.mark.parametrize("preset", [name for name in PRESETS if name.endswith("tiny")])
@pytest.mark.parametrize("tied", [True, False])
def test_presets_count_as_transformers_builds_them(preset, tied):
    size = resolve_size(preset, {} if preset.startswith("gpt2") else {"tie_embeddings": tied})
    config = hf_config_dict(size, 1000, eos_id=0, pad_id=1)
    assert count_parameters(config) == build_model(config).num_parameters()


@pytest.mark.parametrize("model_type, extra", [
    ("llama", {"tie_word_embeddings": False}), ("llama", {"tie_word_embeddings": True, "attention_bias": True}),
    ("mistral", {"tie_word_embeddings": False}), ("qwen2", {"tie_word_embeddings": True}),
    ("qwen2", {"tie_word_embeddings": False, "num_key_value_heads": 1}),
    ("gpt2", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128, "vocab_size": 300})])
def test_checkpoint_families_count_as_transformers_builds_them(model_type, extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {**(SMALL if model_type != "gpt2" else {}), **extra}
    config = AutoConfig.for_model(model_type, **fields)
    assert count_parameters(config.to_dict()) == AutoModelForCausalLM.from_config(config).num_parameters()


def test_gpt2_124m_and_chinchilla():
    config = hf_config_dict(resolve_size("gpt2-124m", {}), 50257, eos_id=50256, pad_id=None)
    assert count_parameters(config) == 124_439_808  # GPT-2 small as published
    assert chinchilla_tokens(124_439_808) == 2_488_796_160


def test_flops_per_token_include_attention():
    config = hf_config_dict(resolve_size("llama-tiny", {}), 8192, eos_id=0, pad_id=1)
    embedding = 8192 * 128
    matrices = count_parameters(config) - embedding + embedding  # tied: the output projection multiplies too
    assert flops_per_token(config, 256) == 6 * matrices + 12 * 4 * 128 * 256
    assert flops_per_token(config, 512) - flops_per_token(config, 256) == 12 * 4 * 128 * 256


def test_presets_are_their_published_shapes():
    llama_1b = hf_config_dict(resolve_size("llama-1b", {}), 128256, eos_id=0, pad_id=None)
    assert count_parameters(llama_1b) == 1_235_814_400  # Llama 3.2 1B
    assert resolve_size("llama-125m", {"n_layer": 6})["n_layer"] == 6
