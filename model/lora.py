"""LoRA (Hu et al., 2021) for the GPT's linear layers: low-rank adapters trained while the base weights
stay frozen, then merged into the base so the exported model is a plain GPT.

`add_lora(model, rank, alpha, targets, dropout)` replaces each targeted nn.Linear (c_attn, c_proj, c_fc,
matched by the last part of the module name) with a `LoRALinear`: y = x W^T + b + (alpha/rank) ·
dropout(x) A^T B^T, A initialised like a Kaiming-uniform linear layer and B zero, so training starts from
exactly the base model. Every other parameter (embeddings, LayerNorms, biases) is frozen.
`merge_lora(model)` folds W += (alpha/rank) · B A back and restores plain nn.Linear modules.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.lora_b @ self.lora_a) * self.scale
        return self.base


def add_lora(model: nn.Module, rank: int, alpha: float, targets: list[str], dropout: float = 0.0) -> int:
    """Wrap the targeted linear layers, freeze everything else; returns the number of wrapped layers."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    wrapped = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha, dropout))
                wrapped += 1
    if not wrapped:
        raise ValueError(f"LoRA: no linear layer named {targets} in the model")
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer; the model is a plain one again (all parameters trainable)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
