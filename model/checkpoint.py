"""Hugging Face checkpoint directories in and out: what a user's base model must hold, and how ours are written.

In: a directory holding a transformers causal-LM checkpoint of a supported family (config.json;
model.safetensors, or shards listed in model.safetensors.index.json; tokenizer.json with its
tokenizer_config.json). `inspect_checkpoint` refuses, with one line naming the reason, a directory
whose architecture is not supported, whose weights are not safetensors (a pickle is never loaded),
whose context is shorter than the sequences we train on, or which has no fast tokenizer. It returns the
config, the files with their sha256 (the identity a training stage's version depends on) and the
tokenizer's chat template, if any.

Out: `save_hf` writes a model as an fp32 safetensors directory of its own family with
`save_pretrained`, which `AutoModelForCausalLM.from_pretrained` loads with no extra code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .families import SUPPORTED_MODEL_TYPES, context_length

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "tf_model.h5", "flax_model.msgpack")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "added_tokens.json")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class CheckpointInfo:
    directory: Path
    config: dict[str, Any]                     # config.json
    files: dict[str, str] = field(default_factory=dict)   # relative path -> sha256 (weights, config, tokenizer)
    chat_template: str | None = None

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    def identity(self) -> str:
        """One digest of every file's sha256: what a stage starting from this checkpoint is versioned by."""
        return hashlib.sha256(json.dumps(self.files, sort_keys=True).encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weight_files(directory: Path) -> list[str]:
    """The safetensors files of a checkpoint (the index's shards, or model.safetensors)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [name for name in shards if not (directory / name).is_file()]
        if missing:
            raise CheckpointError(f"{directory}: model.safetensors.index.json lists missing shards {missing[:3]}")
        return ["model.safetensors.index.json", *shards]
    if (directory / "model.safetensors").is_file():
        return ["model.safetensors"]
    pickled = [name for name in PICKLED_WEIGHTS if (directory / name).is_file()]
    if pickled:
        raise CheckpointError(f"{directory}: the weights are {pickled[0]}, not safetensors (pickled weights are never "
                              f"loaded); convert once with AutoModelForCausalLM.from_pretrained(dir)"
                              f".save_pretrained(out, safe_serialization=True)")
    raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")


def read_chat_template(directory: Path) -> str | None:
    """The tokenizer's chat template: chat_template.jinja (transformers 5) or tokenizer_config.json's field."""
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text(encoding="utf-8")
    config_path = directory / "tokenizer_config.json"
    template = json.loads(config_path.read_text(encoding="utf-8")).get("chat_template") if config_path.is_file() else None
    if isinstance(template, list):  # several named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


def inspect_checkpoint(directory: Path, seq_len: int | None = None, hashes: bool = True) -> CheckpointInfo:
    """Check a checkpoint directory before any work; CheckpointError names what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such directory")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: no config.json (not a transformers checkpoint directory)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from None
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"{directory}: architecture {model_type!r} ({', '.join(config.get('architectures') or [])})"
                              f" is not supported; supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if not any(name.endswith("ForCausalLM") or name == "GPT2LMHeadModel" for name in config.get("architectures") or
               ["ForCausalLM"]):
        raise CheckpointError(f"{directory}: architectures {config.get('architectures')} has no causal-LM head")
    weights = weight_files(directory)
    positions = context_length(config)
    if seq_len is not None and positions is not None and positions < seq_len:
        raise CheckpointError(f"{directory}: the model's context is {positions} positions, shorter than "
                              f"tokenize.seq_len {seq_len}")
    if not (directory / "tokenizer.json").is_file():
        raise CheckpointError(f"{directory}: no tokenizer.json: the checkpoint's own (fast) tokenizer is needed; "
                              f"save it beside the weights with AutoTokenizer.from_pretrained(...).save_pretrained(dir)")
    names = ["config.json", *weights, *(name for name in TOKENIZER_FILES if (directory / name).is_file())]
    if (directory / "generation_config.json").is_file():
        names.append("generation_config.json")
    files = {name: sha256_file(directory / name) if hashes else "" for name in names}
    return CheckpointInfo(directory, config, files, read_chat_template(directory))


def load_model(directory: Path):
    """A checkpoint's model in fp32, from safetensors only."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, use_safetensors=True)


def save_hf(model, directory: Path) -> Path:
    """The model as an fp32 safetensors directory of its own family (config.json + weights)."""
    import torch

    directory = Path(directory)
    model = model.to(torch.float32)
    model.config.dtype = "float32"
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory
