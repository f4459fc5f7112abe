"""The pretrain stage on the sample's tokens: the plan, the artifact (weights, metrics, loss curve, an HF
directory that transformers loads with the tokenizer), and checkpoints kept in the store for resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.artifacts import fetch_verified, files_with_role
from pipeline.config import MixtureConfig, TokenizeConfig, TrainConfig
from tasks.mixture import mixture_spec, run_mixture
from tasks.pretrain import pretrain_spec, run_pretrain
from tasks.training import CheckpointSync, launch_command, plan
from tests.tasks import chain

SIZE = {"n_layer": 2, "n_head": 2, "d_model": 32, "n_positions": 64}
SETTINGS = TrainConfig(steps=6, micro_batch=2, warmup_steps=1, checkpoint_every=3, zero_stage=1, lr=3e-3)


@pytest.fixture(scope="module")
def mixture(filtered_sample):
    store, inputs = filtered_sample
    tokenizer = chain.tokenizer(store, inputs)
    tokens = {s: chain.tokenize(store, s, inputs[s], tokenizer, TokenizeConfig(workers=1, seq_len=64)) for s in inputs}
    config = MixtureConfig(budget_tokens=20_000)
    spec = mixture_spec(config, tokens, SIZE)
    built = chain.committed(store, spec) or run_mixture(config, store, spec, tokens, SIZE, progress=lambda _m: None)
    return store, tokenizer, built


def test_pretrain_writes_weights_metrics_curve_and_a_loadable_hf_model(mixture, tmp_path):
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    store, tokenizer, mix = mixture
    spec = pretrain_spec(SETTINGS, SIZE, mix, tokenizer)
    messages: list[str] = []
    manifest = chain.committed(store, spec) or run_pretrain(SETTINGS, SIZE, store, spec, mix, tokenizer,
                                                            progress=messages.append)
    assert manifest["counts"]["steps"] == 6 and manifest["summary"]["parameters"] > 0
    assert any(m.startswith("pretrain plan:") for m in messages)
    roles = {entry["role"] for entry in manifest["files"]}
    assert {"weights", "config", "metrics", "plot", "hf"} <= roles
    assert not any(entry["path"].startswith("checkpoints/") for entry in manifest["files"])
    hf = chain.hf_directory(store, manifest, tmp_path / "hf")
    model = GPT2LMHeadModel.from_pretrained(str(hf)).eval()
    tok = AutoTokenizer.from_pretrained(str(hf))
    ids = tok("Debian GNU/Linux installation", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    [metrics] = list(files_with_role(manifest, "metrics"))
    lines = fetch_verified(store, manifest, metrics, tmp_path).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_checkpoints_are_stored_and_restored(mixture, tmp_path):
    store, _, _ = mixture
    local = tmp_path / "ckpt"
    (local / "step0000003").mkdir(parents=True)
    (local / "step0000003" / "mp_rank_00_model_states.pt").write_bytes(b"state")
    sync = CheckpointSync(store, "artifacts/pretrain/0123456789abcdef0123", local)
    sync.upload("step0000003")
    restored = tmp_path / "again"
    restored.mkdir()
    assert CheckpointSync(store, "artifacts/pretrain/0123456789abcdef0123", restored).restore() == "step0000003"
    assert (restored / "latest").read_text() == "step0000003"
    assert (restored / "step0000003" / "mp_rank_00_model_states.pt").read_bytes() == b"state"
    assert CheckpointSync(store, "artifacts/pretrain/fedcba9876543210fedc", tmp_path / "none").restore() is None


def test_plan_and_launchers():
    planned = plan(SIZE, 2048, 64, TrainConfig(micro_batch=4, grad_accum=2, processes=2), sequences=1000)
    assert planned["global_batch_sequences"] == 16 and planned["steps"] == 62
    assert planned["tokens"] == 62 * 16 * 64 and planned["flops"] == 6 * planned["parameters"] * planned["tokens"]
    spec = Path("/tmp/spec.json")
    assert launch_command(TrainConfig(), spec, 1234)[1:3] == ["-m", "model.train"]
    assert "--num_gpus" in launch_command(TrainConfig(processes=2), spec, 1234)
    assert "torch.distributed.run" in launch_command(TrainConfig(processes=2, launcher="torchrun"), spec, 1234)
    assert "--hostfile" in launch_command(TrainConfig(hostfile="/etc/hosts.ds"), spec, 1234)


def test_two_ranks_through_deepspeeds_launcher(mixture):
    store, tokenizer, mix = mixture
    settings = TrainConfig(steps=4, micro_batch=1, warmup_steps=1, checkpoint_every=2, zero_stage=2, processes=2,
                           launcher="deepspeed")
    spec = pretrain_spec(settings, SIZE, mix, tokenizer)
    messages: list[str] = []
    manifest = chain.committed(store, spec) or run_pretrain(settings, SIZE, store, spec, mix, tokenizer,
                                                            progress=messages.append)
    assert manifest["counts"]["steps"] == 4 and manifest["summary"]["global_batch_sequences"] == 2
    assert any("deepspeed --num_gpus 2" in m for m in messages)
