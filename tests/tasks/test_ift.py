"""Instruction fine-tuning: bad chat lines quarantined with their reasons, packed rows with the loss mask,
the chat template in the exported tokenizer, lower held-out assistant loss than the base, and LoRA."""

from __future__ import annotations

import json

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


def test_the_export_carries_the_chat_template(model_phases, tmp_path):
    from transformers import AutoTokenizer

    from corpus.chat import ChatTemplate

    phases = model_phases
    hf = chain.hf_directory(phases.store, phases.ift, tmp_path / "hf")
    config = json.loads((hf / "tokenizer_config.json").read_text())
    assert config["chat_template"] == ChatTemplate().jinja_template()
    messages = [{"role": "user", "content": "What is APT?"}, {"role": "assistant", "content": "A package tool."}]
    rendered = AutoTokenizer.from_pretrained(str(hf)).apply_chat_template(messages, tokenize=False)
    assert rendered == ChatTemplate().render(messages)


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
    [weights] = list(files_with_role(manifest, "weights"))
    with safe_open(str(fetch_verified(phases.store, manifest, weights, tmp_path)), "pt") as handle:
        names = set(handle.keys())
    assert "h.0.attn.c_attn.weight" in names and not any("lora" in name for name in names)


def test_epoch_order_is_a_permutation_per_epoch():
    order = epoch_order(10, 2.5, seed=3)
    assert order.shape == (25, 2) and set(order[:, 0]) == {0}
    assert sorted(order[:10, 1]) == list(range(10)) and sorted(order[10:20, 1]) == list(range(10))
    assert (epoch_order(10, 2.5, seed=3) == order).all()
