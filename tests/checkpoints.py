"""Tiny transformers checkpoints of the supported families, built locally (no hub): a random model saved with
`save_pretrained` beside a small byte-level BPE trained on the sample's text, with each family's own special-token
conventions (Llama and Mistral: <s> added at the start, </s> ends a text; Qwen2: <|endoftext|> ends and pads, a
ChatML chat template; GPT-2: <|endoftext|> only)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from tests.conftest import SAMPLE

FAMILIES = {
    "llama": {"bos": "<s>", "eos": "</s>", "pad": None, "adds_bos": True, "template": None},
    "mistral": {"bos": "<s>", "eos": "</s>", "pad": None, "adds_bos": True,
                "template": "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}"
                            " [/INST]{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}"
                            "{% endfor %}"},
    "qwen2": {"bos": None, "eos": "<|endoftext|>", "pad": "<|endoftext|>", "adds_bos": False,
              "extra": ["<|im_start|>", "<|im_end|>"],
              "template": "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + "
                          "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"},
    "gpt2": {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": None, "adds_bos": False, "template": None},
}


def sample_texts(limit: int = 400) -> list[str]:
    """The first documents of the sample's JSONL source (real text)."""
    import zstandard

    texts = []
    for path in sorted((SAMPLE / "jsonl").glob("*.jsonl.zst")):
        for line in zstandard.ZstdDecompressor().decompress(path.read_bytes(), max_output_size=1 << 30) \
                .decode("utf-8").splitlines():
            texts.append(json.loads(line)["text"])
            if len(texts) >= limit:
                return texts
    return texts


@lru_cache(maxsize=None)
def _trained_bpe(specials: tuple[str, ...], vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(sample_texts(), trainer)
    return tokenizer.to_str()


def save_tokenizer(family: str, directory: Path, vocab_size: int = 1024) -> None:
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    spec = FAMILIES[family]
    specials = tuple(dict.fromkeys(t for t in (spec["bos"], spec["eos"], spec["pad"], *spec.get("extra", [])) if t))
    tokenizer = Tokenizer.from_str(_trained_bpe(specials, vocab_size))
    if spec["adds_bos"]:
        bos = tokenizer.token_to_id(spec["bos"])
        tokenizer.post_processor = processors.TemplateProcessing(single=f"{spec['bos']} $A",
                                                                 pair=f"{spec['bos']} $A $B",
                                                                 special_tokens=[(spec["bos"], bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=spec["bos"], eos_token=spec["eos"],
                                   pad_token=spec["pad"], model_max_length=4096,
                                   extra_special_tokens=spec.get("extra", []))
    if spec["template"]:
        fast.chat_template = spec["template"]
    fast.save_pretrained(str(directory))


def make_checkpoint(family: str, directory: Path, *, positions: int = 512, seed: int = 0,
                    vocab_size: int = 1024) -> Path:
    """A random tiny model of `family` with its tokenizer, saved as a transformers checkpoint directory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    save_tokenizer(family, directory, vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if family == "gpt2":
        config = AutoConfig.for_model("gpt2", vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4,
                                      n_positions=positions, **ids)
    else:
        config = AutoConfig.for_model(family, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=160,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=positions, tie_word_embeddings=family == "qwen2", **ids)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(directory))
    return directory
