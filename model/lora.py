"""LoRA (Hu et al., 2021) through PEFT: low-rank adapters on a model's linear layers (nn.Linear, or
GPT-2's Conv1D) trained while the base weights stay frozen, then merged so the exported model is a
plain model of its family again.

`targets: auto` adapts every linear layer of the blocks (PEFT's "all-linear": attention and MLP
projections, never the output head); or a list of module names (`q_proj`, `c_attn`, ...).
"""

from __future__ import annotations


def add_lora(model, rank: int, alpha: float, targets: list[str] | str, dropout: float = 0.0):
    """The model wrapped with adapters; only the adapters are trainable (B starts at zero: the base model)."""
    from peft import LoraConfig, get_peft_model

    modules = "all-linear" if targets == "auto" else list(targets)
    try:
        return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                                target_modules=modules, bias="none"))
    except ValueError as exc:  # no module of that name in this family
        raise ValueError(f"ift.lora.targets {targets!r}: {exc}") from None


def merge_lora(model):
    """Fold every adapter into its base layer; returns the plain transformers model."""
    return model.merge_and_unload()


def lora_state_keys(state: dict) -> bool:
    """Whether a state dict is that of a model wrapped with adapters."""
    return any(".lora_A." in key for key in state)
