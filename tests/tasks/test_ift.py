"""Instruction fine-tuning: bad chat lines quarantined with their reasons, packed rows with the loss mask,
the chat template in the exported tokenizer and a generation config that stops at the end of a turn, lower
held-out assistant loss than the base, LoRA merged into plain weights, and fine-tuning a user's checkpoint with its
own chat template (or a plain-text one when it has none)."""

from __future__ import annotations

import json

import pytest

from pipeline.artifacts import fetch_verified, files_with_role
from pipeline.config import IftConfig, TrainConfig
from tasks.ift import epoch_order, ift_spec, run_ift
from tests.tasks import chain


def test_ift_quarantines_bad_lines_and_lowers_held_out_assistant_loss(model_phases, tmp_path):
    import pyarrow.parquet as pq

    phases = model_phases
    ift = phases.ift
    counts = ift["counts"]
    too_long = counts["quarantined"].pop("too_long")  # the bad file's long line, and long sample conversations
    assert counts["quarantined"] == {"invalid_json": 1, "no_assistant_turn": 1, "bad_role": 1} and too_long >= 1
    assert counts["conversations"] + too_long + 3 == counts["lines"] == 108  # every line: kept or quarantined
    assert counts["splits"]["val"]["conversations"] > 0
    [quarantine] = list(files_with_role(ift, "quarantine"))
    rows = pq.read_table(fetch_verified(phases.store, ift, quarantine, tmp_path)).to_pylist()
    assert [f"bad.jsonl#line {n}" for n in (1, 2, 3, 4)] == sorted(r["origin"] for r in rows if "bad" in r["origin"])
    assert len(rows) == too_long + 3 and {r["reason"] for r in rows if "debian" in r["origin"]} <= {"too_long"}
    base = chain.held_out_loss(phases.store, phases.pretrain, ift, tmp_path)["loss"]
    tuned = chain.held_out_loss(phases.store, ift, ift, tmp_path)["loss"]
    assert tuned < base - 0.5, (base, tuned)


def test_the_export_carries_the_chat_template_and_stops_at_the_end_of_a_turn(model_phases, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    from corpus.chat import ChatTemplate

    phases = model_phases
    hf = chain.hf_directory(phases.store, phases.ift, tmp_path / "hf")
    config = json.loads((hf / "tokenizer_config.json").read_text())
    assert config["chat_template"] == ChatTemplate().jinja_template()
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # transformers 4.x knows this name too
    messages = [{"role": "user", "content": "What is APT?"}, {"role": "assistant", "content": "A package tool."}]
    tokenizer = AutoTokenizer.from_pretrained(str(hf))
    assert tokenizer.apply_chat_template(messages, tokenize=False) == ChatTemplate().render(messages)
    stops = GenerationConfig.from_pretrained(str(hf)).eos_token_id
    assert stops == [tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|end|>")]


def test_lora_fine_tuning_exports_merged_plain_weights(model_phases, tmp_path):
    from safetensors import safe_open

    phases = model_phases
    settings = IftConfig(enabled=True, chat_files=["unused"], method="lora", steps=3, warmup_steps=1, lr=1e-2)
    train = TrainConfig(micro_batch=4, checkpoint_every=1000, zero_stage=2)
    spec = ift_spec(settings, train, 256, phases.cpt_start, phases.tokenizer, phases.chat_files)
    manifest = chain.committed(phases.store, spec) or run_ift(settings, train, 256, phases.store, spec,
                                                              phases.cpt_start, phases.tokenizer, phases.chat_files,
                                                              lambda _m: None)
    assert manifest["counts"]["steps"] == 3 and manifest["summary"]["method"] == "lora"
    [weights] = [e for e in files_with_role(manifest, "hf") if e["path"] == "hf/model.safetensors"]
    with safe_open(str(fetch_verified(phases.store, manifest, weights, tmp_path)), "pt") as handle:
        names = set(handle.keys())
    assert "model.layers.0.self_attn.q_proj.weight" in names and not any("lora" in name for name in names)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_fine_tuning_a_user_checkpoint_with_its_own_chat_template(model_phases, family, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    from corpus.chat import PLAIN_TEMPLATE
    from pipeline.config import StorageConfig
    from tasks.checkpoints import checkpoint_model
    from tasks.tokenizer import import_checkpoint_tokenizer, tokenizer_spec
    from tests.checkpoints import FAMILIES, make_checkpoint

    phases = model_phases
    directory = make_checkpoint(family, tmp_path / family, positions=512)
    start = checkpoint_model(str(directory), "ift.init", tmp_path, StorageConfig(backend="local"), 256)
    spec = tokenizer_spec(None, {}, 256, None, checkpoint={"tokenizer.json": start.checkpoint.files["tokenizer.json"],
                                                          "tokenizer_config.json": start.checkpoint.files[
                                                              "tokenizer_config.json"]})
    tokenizer = chain.committed(phases.store, spec) or import_checkpoint_tokenizer(phases.store, spec, directory,
                                                                                   lambda _m: None)
    settings = IftConfig(enabled=True, init=str(directory), chat_files=["unused"], epochs=1, lr=3e-3, warmup_steps=1)
    train = TrainConfig(micro_batch=4, checkpoint_every=1000, zero_stage=1)
    spec = ift_spec(settings, train, 256, start, tokenizer, phases.chat_files)
    manifest = chain.committed(phases.store, spec) or run_ift(settings, train, 256, phases.store, spec, start,
                                                              tokenizer, phases.chat_files, lambda _m: None)
    assert manifest["counts"]["conversations"] > 50 and manifest["counts"]["first_loss"] > manifest["counts"]["last_loss"]
    hf = chain.hf_directory(phases.store, manifest, tmp_path / "hf")
    exported = AutoTokenizer.from_pretrained(str(hf))
    assert exported.chat_template == (FAMILIES[family]["template"] or PLAIN_TEMPLATE)
    stops = GenerationConfig.from_pretrained(str(hf)).eos_token_id
    if family == "qwen2":  # generation stops at <|im_end|> as well as at <|endoftext|>
        assert sorted(stops) == sorted([exported.convert_tokens_to_ids("<|im_end|>"), exported.eos_token_id])
    else:
        assert stops == exported.eos_token_id


def test_the_template_encoder_masks_exactly_what_each_assistant_turn_adds(tmp_path):
    from transformers import AutoTokenizer

    from corpus.chat import TemplateChatEncoder
    from tests.checkpoints import FAMILIES, make_checkpoint

    directory = make_checkpoint("qwen2", tmp_path / "qwen2")
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    encoder = TemplateChatEncoder(tokenizer, FAMILIES["qwen2"]["template"])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is dpkg?"},
                {"role": "assistant", "content": "The package manager."}, {"role": "user", "content": "And apt?"},
                {"role": "assistant", "content": "Its front end."}]
    ids, mask = encoder.encode(messages)
    assert ids.tolist() == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    trained = tokenizer.decode(ids[mask.astype(bool)])
    assert trained == "The package manager.<|im_end|>\nIts front end.<|im_end|>\n"
    assert encoder.end_of_turn_id() == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_epoch_order_is_a_permutation_per_epoch():
    order = epoch_order(10, 2.5, seed=3)
    assert order.shape == (25, 2) and set(order[:, 0]) == {0}
    assert sorted(order[:10, 1]) == list(range(10)) and sorted(order[10:20, 1]) == list(range(10))
    assert (epoch_order(10, 2.5, seed=3) == order).all()


TRANSFORMERS_4 = "transformers==4.57.6"  # the last 4.x line; much of the ecosystem still runs it


@pytest.fixture(scope="session")
def transformers_4(tmp_path_factory):
    """A throwaway virtualenv with transformers 4.x (no torch: only its tokenizers are loaded)."""
    import subprocess
    import sys

    venv = tmp_path_factory.mktemp("transformers4") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", TRANSFORMERS_4,
                    "jinja2"],
                   check=True, timeout=600)
    return venv / "bin" / "python"


def test_exported_tokenizers_load_in_transformers_4_and_5(model_phases, transformers_4, tmp_path):
    """The IFT export (our tokenizer, its chat template) gives the same ids and rendering in both major versions."""
    import subprocess

    from transformers import AutoTokenizer

    hf = chain.hf_directory(model_phases.store, model_phases.ift, tmp_path / "hf")
    text = "Installez le système Debian: «apt-get install» <|end|> 🙂"
    messages = [{"role": "user", "content": "What is APT?"}, {"role": "assistant", "content": "A package tool."}]
    program = ("import json, sys; from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained(sys.argv[1]);"
               "print(json.dumps([type(t).__name__, t(sys.argv[2])['input_ids'], t.eos_token, t.pad_token,"
               "t.apply_chat_template(json.loads(sys.argv[3]), tokenize=False)]))")
    result = subprocess.run([str(transformers_4), "-c", program, str(hf), text, json.dumps(messages)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    name, ids, eos, pad, rendered = json.loads(result.stdout.strip().splitlines()[-1])
    current = AutoTokenizer.from_pretrained(str(hf))
    assert name == "PreTrainedTokenizerFast" and (eos, pad) == ("<|endoftext|>", "<|pad|>")
    assert ids == current(text)["input_ids"]
    assert rendered == current.apply_chat_template(messages, tokenize=False)
