"""LoRA through PEFT, on both families (Llama's nn.Linear projections and GPT-2's Conv1D): the wrapped model starts
equal to the base, only the adapters train, and merging gives a plain model of the family with the same outputs."""

from __future__ import annotations

import pytest
import torch

from model.families import build_model, hf_config_dict, resolve_size
from model.loss import lm_loss, targets_and_weights
from model.lora import add_lora, merge_lora


def tiny(preset: str):
    torch.manual_seed(0)
    return build_model(hf_config_dict(resolve_size(preset, {"n_layer": 2, "d_model": 32, "n_head": 2,
                                                            **({"n_kv_head": 1, "d_ff": 64} if "llama" in preset else {}),
                                                            "n_positions": 16}), 200, eos_id=0, pad_id=1))


@pytest.mark.parametrize("preset, targets, wrapped", [("llama-tiny", "auto", 7 * 2), ("gpt2-tiny", "auto", 4 * 2),
                                                      ("llama-tiny", ["q_proj", "v_proj"], 2 * 2)])
def test_lora_trains_only_adapters_and_merges_to_the_same_function(preset, targets, wrapped):
    model = tiny(preset)
    ids = torch.randint(0, 200, (4, 17))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        base_logits = model(ids[:, :-1]).logits
    model = add_lora(model, rank=4, alpha=8, targets=targets)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids[:, :-1]).logits, base_logits)  # B = 0: starts as the base model
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert len(trainable) == 2 * wrapped and all(".lora_A." in n or ".lora_B." in n for n in trainable), trainable
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        inputs, targets_, weights = targets_and_weights(ids, pad_id=1)
        loss = lm_loss(model(input_ids=inputs).logits, targets_, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=ids[:, :-1]).logits
    assert not torch.allclose(adapted, base_logits)
    merged = merge_lora(model)
    assert type(merged).__name__ in ("LlamaForCausalLM", "GPT2LMHeadModel")
    assert set(merged.state_dict()) == set(before)
    with torch.no_grad():
        assert torch.allclose(merged(ids[:, :-1]).logits, adapted, atol=1e-5)


def test_lora_needs_a_matching_layer():
    with pytest.raises(ValueError, match="ift.lora.targets"):
        add_lora(tiny("gpt2-tiny"), rank=2, alpha=2, targets=["q_proj"])
