"""Model sizing arithmetic for the planners, from a transformers config dict (any supported family):
the exact parameter count, the training FLOPs per token, and the Chinchilla-optimal token budget.
Pure functions; nothing here imports torch.

Training FLOPs per token (Kaplan et al. 2020; PaLM's appendix B): 6 x the parameters that multiply
activations (every matrix of the blocks and the output projection; not the embedding lookups) plus
the attention itself, 12 x n_layer x (n_head x head_dim) x seq_len (QK^T and the weighted sum of V,
forward and backward, counted over the full square as PaLM does).
"""

from __future__ import annotations

from typing import Any


def _shape(config: dict[str, Any]) -> dict[str, Any]:
    """Our size fields from a config dict of any supported family."""
    if config["model_type"] == "gpt2":
        d = config["n_embd"]
        return {"family": "gpt2", "d": d, "layers": config["n_layer"], "heads": config["n_head"],
                "kv_heads": config["n_head"], "head_dim": d // config["n_head"],
                "ff": config.get("n_inner") or 4 * d, "vocab": config["vocab_size"], "positions": config["n_positions"],
                "tied": config.get("tie_word_embeddings", True)}
    d = config["hidden_size"]
    heads = config["num_attention_heads"]
    return {"family": config["model_type"], "d": d, "layers": config["num_hidden_layers"], "heads": heads,
            "kv_heads": config.get("num_key_value_heads") or heads,
            "head_dim": config.get("head_dim") or d // heads, "ff": config["intermediate_size"],
            "vocab": config["vocab_size"], "positions": 0, "tied": config.get("tie_word_embeddings", False),
            # Qwen2 has biases on q, k and v; Llama's attention_bias / mlp_bias switch them on everywhere
            "qkv_bias": config["model_type"] == "qwen2" or config.get("attention_bias", False),
            "o_bias": config.get("attention_bias", False), "mlp_bias": config.get("mlp_bias", False)}


def block_parameters(config: dict[str, Any]) -> int:
    """Parameters of the transformer blocks and the final norm (no embeddings, no output projection)."""
    s = _shape(config)
    d, ff = s["d"], s["ff"]
    if s["family"] == "gpt2":
        per_layer = (d * 3 * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 4 * d
        return s["layers"] * per_layer + 2 * d
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    attention = d * (q + 2 * kv) + q * d + (q + 2 * kv) * s["qkv_bias"] + d * s["o_bias"]
    mlp = 3 * d * ff + (2 * ff + d) * s["mlp_bias"]
    return s["layers"] * (attention + mlp + 2 * d) + d


def count_parameters(config: dict[str, Any]) -> int:
    """Exact parameter count (a tied output projection counts once), as `model.num_parameters()`."""
    s = _shape(config)
    embeddings = s["vocab"] * s["d"] * (1 if s["tied"] else 2) + s["positions"] * s["d"]
    return block_parameters(config) + embeddings


def flops_per_token(config: dict[str, Any], seq_len: int) -> int:
    """Training FLOPs per token: 6 x (block matrices + output projection) + 12 x layers x attention width x seq."""
    s = _shape(config)
    multiplying = block_parameters(config) + s["vocab"] * s["d"]
    return 6 * multiplying + 12 * s["layers"] * s["heads"] * s["head_dim"] * seq_len


def chinchilla_tokens(parameters: int, tokens_per_parameter: float = 20.0) -> int:
    """Hoffmann et al. 2022: compute-optimal training uses about 20 tokens per parameter."""
    return int(round(parameters * tokens_per_parameter))
