"""Model families and their presets: what we pretrain from scratch, and which checkpoints we continue.

The models themselves are transformers' own classes (`GPT2LMHeadModel`, `LlamaForCausalLM`, ...): a
family here is only the mapping from our size fields to that class's config, plus the presets.

Our size fields, shared by every family:
    n_layer, n_head, d_model, n_positions      as in GPT-2
    n_kv_head      grouped-query attention: key/value heads (llama; n_head = multi-head attention)
    d_ff           the MLP's inner width (gpt2: 4 x d_model; llama: the SwiGLU width)
    rope_theta     the RoPE base (llama)
    tie_embeddings the output projection shares the token embedding

A checkpoint we continue from may be of any family in `SUPPORTED_MODEL_TYPES`: its own config.json
says everything, and it keeps its family through every training stage.
"""

from __future__ import annotations

from typing import Any

FAMILIES = ("gpt2", "llama")
# model_type values of config.json whose checkpoints CPT and IFT accept (each tested with a checkpoint
# built locally): transformers' own classes, causal-LM heads, RoPE or learned positions.
SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")

PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2 (2019): learned positions, LayerNorm, GELU MLP, tied embeddings. gpt2-tiny trains on a CPU in minutes.
    "gpt2-tiny": {"family": "gpt2", "n_layer": 4, "n_head": 4, "d_model": 128, "n_positions": 256},
    "gpt2-124m": {"family": "gpt2", "n_layer": 12, "n_head": 12, "d_model": 768, "n_positions": 1024},
    "gpt2-350m": {"family": "gpt2", "n_layer": 24, "n_head": 16, "d_model": 1024, "n_positions": 1024},
    "gpt2-774m": {"family": "gpt2", "n_layer": 36, "n_head": 20, "d_model": 1280, "n_positions": 1024},
    # Llama-style: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases. The 125m/350m shapes follow
    # the GPT-3 table's depth and width with SwiGLU at ~8/3 d_model; llama-1b is Llama 3.2 1B's shape.
    "llama-tiny": {"family": "llama", "n_layer": 4, "n_head": 4, "n_kv_head": 2, "d_model": 128, "d_ff": 352,
                   "n_positions": 256, "tie_embeddings": True},
    "llama-125m": {"family": "llama", "n_layer": 12, "n_head": 12, "n_kv_head": 4, "d_model": 768, "d_ff": 2048,
                   "n_positions": 2048, "tie_embeddings": True},
    "llama-350m": {"family": "llama", "n_layer": 24, "n_head": 16, "n_kv_head": 4, "d_model": 1024, "d_ff": 2816,
                   "n_positions": 2048, "tie_embeddings": True},
    "llama-1b": {"family": "llama", "n_layer": 16, "n_head": 32, "n_kv_head": 8, "d_model": 2048, "d_ff": 8192,
                 "n_positions": 2048, "tie_embeddings": True, "rope_theta": 500000.0},
}

DEFAULTS = {"gpt2": {"tie_embeddings": True},
            "llama": {"rope_theta": 10000.0, "tie_embeddings": True}}


def resolve_size(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The preset's fields (family included) with the overrides that are set, and the derived defaults."""
    size = {**PRESETS[preset]}
    size.update({key: value for key, value in overrides.items() if value is not None})
    family = size["family"]
    for key, value in DEFAULTS[family].items():
        size.setdefault(key, value)
    if family == "gpt2":
        size.setdefault("d_ff", 4 * size["d_model"])
        size.pop("n_kv_head", None)
        size.pop("rope_theta", None)
    else:
        size.setdefault("n_kv_head", size["n_head"])
        size.setdefault("d_ff", 256 * -(-8 * size["d_model"] // 3 // 256))
    return size


def check_size(size: dict[str, Any]) -> None:
    """Raise ValueError naming the field when the shape cannot be built."""
    if size["d_model"] % size["n_head"]:
        raise ValueError(f"d_model {size['d_model']} is not divisible by n_head {size['n_head']}")
    if size["family"] == "gpt2":
        if size["d_ff"] != 4 * size["d_model"]:
            raise ValueError(f"d_ff: GPT-2's MLP is 4 x d_model ({4 * size['d_model']}), got {size['d_ff']}")
        if not size.get("tie_embeddings", True):
            raise ValueError("tie_embeddings: GPT-2 ties its output projection to the token embedding")
    elif size["n_head"] % size["n_kv_head"]:
        raise ValueError(f"n_kv_head {size['n_kv_head']} must divide n_head {size['n_head']}")
    if size["family"] == "llama" and (size["d_model"] // size["n_head"]) % 2:
        raise ValueError(f"d_model / n_head = {size['d_model'] // size['n_head']} must be even for RoPE")


def hf_config_dict(size: dict[str, Any], vocab_size: int, eos_id: int, pad_id: int | None,
                   bos_id: int | None = None) -> dict[str, Any]:
    """The transformers config (as a dict with its model_type) of a model built from scratch."""
    bos_id = eos_id if bos_id is None else bos_id
    if size["family"] == "gpt2":
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab_size,
                "n_positions": size["n_positions"], "n_embd": size["d_model"], "n_layer": size["n_layer"],
                "n_head": size["n_head"], "n_inner": size["d_ff"], "activation_function": "gelu_new",
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-5,
                "initializer_range": 0.02, "tie_word_embeddings": True, "bos_token_id": bos_id,
                "eos_token_id": eos_id, "pad_token_id": pad_id}
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab_size,
            "hidden_size": size["d_model"], "intermediate_size": size["d_ff"],
            "num_hidden_layers": size["n_layer"], "num_attention_heads": size["n_head"],
            "num_key_value_heads": size["n_kv_head"], "max_position_embeddings": size["n_positions"],
            "rope_theta": float(size["rope_theta"]), "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
            "tie_word_embeddings": bool(size["tie_embeddings"]), "bos_token_id": bos_id, "eos_token_id": eos_id,
            "pad_token_id": pad_id}


def build_config(config: dict[str, Any]):
    """A transformers config object from a config dict holding its model_type."""
    from transformers import AutoConfig

    fields = {key: value for key, value in config.items() if key != "model_type"}
    return AutoConfig.for_model(config["model_type"], **fields)


def build_model(config: dict[str, Any]):
    """A freshly initialised fp32 model of the config's family (transformers' own init; seed it first)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(build_config(config), dtype=torch.float32)


def context_length(config: dict[str, Any]) -> int | None:
    """The positions a model of this config can attend over."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return None
