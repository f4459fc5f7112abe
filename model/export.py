"""Export our GPT to a Hugging Face `GPT2LMHeadModel` directory (config.json + model.safetensors), and
read safetensors weights back.

GPT-2's `Conv1D` stores weights as (in, out), the transpose of `nn.Linear`; everything else maps by
name. The export loads with `transformers.GPT2LMHeadModel.from_pretrained(dir)` and gives our logits
(a test checks it to 1e-4 in fp32), so lm-evaluation-harness and the rest of the HF ecosystem can use it.
`load_checkpoint` goes the other way, for continued pretraining from any GPT-2-format checkpoint: an HF
GPT-2 directory (safetensors, or a .bin read with weights_only=True) or one of our model artifacts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .gpt import GPT, GPTConfig

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our state dict under GPT2LMHeadModel's names (lm_head is tied to wte and left out)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        hf_name = f"transformer.{name}"
        if name.endswith(_CONV1D):
            tensor = tensor.t()
        state[hf_name] = tensor.detach().to(torch.float32).contiguous().clone()
    return state


def hf_config(config: GPTConfig, eos_id: int, pad_id: int):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.d_model,
        n_layer=config.n_layer, n_head=config.n_head, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=config.layer_norm_eps,
        tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id,
    )


def export_hf(model: GPT, directory: Path, eos_id: int, pad_id: int) -> Path:
    """Write a GPT2LMHeadModel directory (config.json, model.safetensors) for `model`."""
    from transformers import GPT2LMHeadModel

    directory = Path(directory)
    hf_model = GPT2LMHeadModel(hf_config(model.config, eos_id, pad_id))
    missing, unexpected = hf_model.load_state_dict(hf_state_dict(model), strict=False)
    unexpected = [name for name in unexpected if not name.endswith(".attn.bias")]
    missing = [name for name in missing if name != "lm_head.weight" and not name.endswith((".attn.bias", "masked_bias"))]
    if missing or unexpected:
        raise RuntimeError(f"export: weights do not map onto GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    hf_model.tie_weights()
    hf_model.save_pretrained(str(directory), safe_serialization=True)
    return directory


def save_weights(model: GPT, path: Path) -> None:
    """fp32 weights in safetensors (the tied output projection is stored once, as wte)."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().to(torch.float32).contiguous() for name, tensor in model.state_dict().items()
             if name != "lm_head.weight"}
    save_file(state, str(path), metadata={"format": "pt", "config": repr(model.config.to_dict())})


def load_weights(model: GPT, path: Path) -> GPT:
    """Weights from safetensors into `model` (no pickle involved)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state)
    return model


def load_checkpoint(directory: Path) -> GPT:
    """Our GPT from a checkpoint directory: ours (model_config.json + model.safetensors) or an HF GPT-2
    one (config.json + model.safetensors or pytorch_model.bin)."""
    import json

    directory = Path(directory)
    if (directory / "model_config.json").is_file():
        config = GPTConfig(**json.loads((directory / "model_config.json").read_text()))
        return load_weights(GPT(config), directory / "model.safetensors")
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: not a GPT-2 checkpoint (no model_config.json or config.json)")
    hf = json.loads((directory / "config.json").read_text())
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"{directory}: model_type {hf.get('model_type')!r}; only GPT-2-architecture checkpoints load")
    config = GPTConfig(vocab_size=hf["vocab_size"], n_positions=hf["n_positions"], n_layer=hf["n_layer"],
                       n_head=hf["n_head"], d_model=hf["n_embd"], layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5))
    if (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(directory / "model.safetensors"))
    elif (directory / "pytorch_model.bin").is_file():
        state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")
    ours = {}
    for name, tensor in state.items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue
        ours[name] = tensor.t() if name.endswith(_CONV1D) else tensor
    ours["lm_head.weight"] = ours["wte.weight"]
    model = GPT(config)
    model.load_state_dict({name: tensor.to(torch.float32) for name, tensor in ours.items()})
    return model
