"""Model sizing arithmetic for the planners: parameters of a GPT-2-architecture model and the
Chinchilla-optimal token budget. Pure functions; nothing here imports torch."""

from __future__ import annotations


def gpt2_parameters(n_layer: int, d_model: int, n_positions: int, vocab_size: int) -> int:
    """Exact parameter count of GPT-2's architecture with tied input/output embeddings.

    Per block: attention qkv (3d^2 + 3d) and projection (d^2 + d), MLP (4d^2 + 4d and 4d^2 + d), two
    LayerNorms (4d); plus token and position embeddings and the final LayerNorm (2d).
    """
    block = 12 * d_model * d_model + 13 * d_model
    return n_layer * block + vocab_size * d_model + n_positions * d_model + 2 * d_model


def chinchilla_tokens(parameters: int, tokens_per_parameter: float = 20.0) -> int:
    """Hoffmann et al. 2022: compute-optimal training uses about 20 tokens per parameter."""
    return int(round(parameters * tokens_per_parameter))
