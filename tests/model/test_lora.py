"""LoRA: the wrapped model starts equal to the base, only the adapters train, and merging folds them into
plain linear layers with the same outputs."""

from __future__ import annotations

import pytest
import torch

from model.gpt import GPT, GPTConfig, lm_loss, targets_and_weights
from model.lora import LoRALinear, add_lora, merge_lora

CONFIG = GPTConfig(vocab_size=200, n_positions=16, n_layer=2, n_head=2, d_model=32)


def test_lora_trains_only_adapters_and_merges_to_the_same_function():
    torch.manual_seed(0)
    model = GPT(CONFIG)
    ids = torch.randint(0, 200, (4, 17))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        base_logits = model(ids[:, :-1])
    assert add_lora(model, rank=4, alpha=8, targets=["c_attn", "c_proj", "c_fc"]) == 2 * 4
    with torch.no_grad():
        assert torch.equal(model(ids[:, :-1]), base_logits)  # B = 0: starts as the base model
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trainable and all(name.endswith(("lora_a", "lora_b")) for name in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        inputs, targets, weights = targets_and_weights(ids, pad_id=1)
        loss = lm_loss(model(inputs), targets, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        adapted = model(ids[:, :-1])
    assert not torch.allclose(adapted, base_logits)
    frozen = {name.replace(".base.", "."): tensor for name, tensor in model.state_dict().items()
              if "lora_" not in name}
    assert all(torch.equal(frozen[name], before[name]) for name in before)  # base weights untouched
    merge_lora(model)
    assert not any(isinstance(module, LoRALinear) for module in model.modules())
    assert set(model.state_dict()) == set(before)
    with torch.no_grad():
        assert torch.allclose(model(ids[:, :-1]), adapted, atol=1e-5)


def test_lora_needs_a_matching_layer():
    with pytest.raises(ValueError, match="no linear layer"):
        add_lora(GPT(CONFIG), rank=2, alpha=2, targets=["q_proj"])
