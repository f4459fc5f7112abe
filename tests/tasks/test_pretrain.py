"""The pretrain stage on the sample's tokens: the plan, the artifact (an HF directory of the configured family that
transformers' Auto classes load with the tokenizer, metrics with validation loss, loss curve, the kept checkpoints
listed), checkpoints kept in the store for resuming, pruned ones deleted there, and versions that follow what
changes the trained model and nothing else; two nodes through torchrun's rendezvous (node 1 running
`pretrain-pipeline train-node`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.families import hf_config_dict, resolve_size
from model.sizing import count_parameters
from pipeline.artifacts import fetch_verified, files_with_role
from pipeline.config import MixtureConfig, TokenizeConfig, TrainConfig
from tasks.mixture import mixture_spec, run_mixture
from tasks.pretrain import pretrain_spec, run_pretrain
from tasks.training import CheckpointSync, launch_command, plan
from tests.tasks import chain

SIZE = resolve_size("llama-tiny", {"n_layer": 2, "n_head": 2, "n_kv_head": 1, "d_model": 32, "d_ff": 96,
                                   "n_positions": 64})
SETTINGS = TrainConfig(steps=6, micro_batch=2, warmup_steps=1, checkpoint_every=3, keep_checkpoints=1, eval_every=3,
                       zero_stage=1, lr=3e-3)


@pytest.fixture(scope="module")
def mixture(filtered_sample):
    store, inputs = filtered_sample
    tokenizer = chain.tokenizer(store, inputs)
    tokens = {s: chain.tokenize(store, s, inputs[s], tokenizer, TokenizeConfig(workers=1, seq_len=64)) for s in inputs}
    config = MixtureConfig(budget_tokens=20_000)
    spec = mixture_spec(config, tokens, SIZE)
    built = chain.committed(store, spec) or run_mixture(config, store, spec, tokens, SIZE, progress=lambda _m: None)
    return store, tokenizer, built


def test_pretrain_writes_a_loadable_hf_model_metrics_curve_and_checkpoints(mixture, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    store, tokenizer, mix = mixture
    spec = pretrain_spec(SETTINGS, SIZE, mix, tokenizer)
    messages: list[str] = []
    manifest = chain.committed(store, spec) or run_pretrain(SETTINGS, SIZE, store, spec, mix, tokenizer,
                                                            progress=messages.append, validation=[mix_tokens(store, mix)])
    assert manifest["counts"]["steps"] == 6 and manifest["summary"]["parameters"] > 0
    assert manifest["summary"]["model_config"]["model_type"] == "llama"
    assert any(m.startswith("pretrain plan: llama") for m in messages)
    assert {"metrics", "plot", "hf", "checkpoint"} <= {entry["role"] for entry in manifest["files"]}
    kept = {entry["tag"] for entry in files_with_role(manifest, "checkpoint")}
    assert kept == {"step0000006"}  # keep_checkpoints 1: step 3 was pruned
    assert not list(store.list(f"{spec.prefix}/checkpoints/step0000003/"))
    hf = chain.hf_directory(store, manifest, tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(str(hf)).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and model.num_parameters() == manifest["summary"]["parameters"]
    tok = AutoTokenizer.from_pretrained(str(hf))
    ids = tok("Debian GNU/Linux installation", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    [metrics] = list(files_with_role(manifest, "metrics"))
    lines = [json.loads(line) for line in fetch_verified(store, manifest, metrics, tmp_path).read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert [line["step"] for line in lines if "val_loss" in line] == [3, 6] and all("mfu" in line for line in lines)


def mix_tokens(store, mix: dict) -> dict:
    """A tokens manifest of the mixture (its val split feeds the validation loss)."""
    from pipeline.artifacts import read_manifest

    first = mix["summary"]["shards"][0]
    return read_manifest(store, first["artifact"], first["version"])


def test_versions_follow_what_changes_the_trained_model(mixture):
    _, tokenizer, mix = mixture
    version = pretrain_spec(SETTINGS, SIZE, mix, tokenizer).version
    for changed in ({"processes": 2}, {"micro_batch": 4}, {"grad_accum": 2}, {"precision": "bf16"},
                    {"zero_stage": 3}, {"lr": 1e-3}, {"seed": 1}):
        assert pretrain_spec(SETTINGS.model_copy(update=changed), SIZE, mix, tokenizer).version != version, changed
    for unchanged in ({"threads_per_process": 4}, {"launcher": "torchrun"}, {"accelerator": "cuda"},
                      {"log_every": 1}, {"checkpoint_every": 1}, {"keep_checkpoints": 0}, {"eval_every": 0},
                      {"work_dir": "/tmp"}, {"peak_tflops": 100.0},
                      {"nodes": 2, "rdzv_endpoint": "train-0.train:29400", "work_dir": "/shared"}):
        assert pretrain_spec(SETTINGS.model_copy(update=unchanged), SIZE, mix, tokenizer).version == version, unchanged
    assert pretrain_spec(SETTINGS, {**SIZE, "family": "gpt2"}, mix, tokenizer).version != version


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
    config = hf_config_dict(SIZE, 2048, eos_id=0, pad_id=1)
    planned = plan(config, 64, TrainConfig(micro_batch=4, grad_accum=2, processes=2), sequences=1000)
    assert planned["global_batch_sequences"] == 16 and planned["steps"] == 62
    assert planned["parameters"] == count_parameters(config) and planned["family"] == "llama"
    assert planned["tokens"] == 62 * 16 * 64 and planned["flops"] == planned["flops_per_token"] * planned["tokens"]
    assert planned["flops_per_token"] > 6 * planned["parameters"]  # attention counts too
    spec = Path("/tmp/spec.json")
    assert launch_command(TrainConfig(), spec, 1234)[1:3] == ["-m", "model.train"]
    assert "--num_gpus" in launch_command(TrainConfig(processes=2), spec, 1234)
    assert "torch.distributed.run" in launch_command(TrainConfig(processes=2, launcher="torchrun"), spec, 1234)
    hostfile = Path("/tmp/hostfile.ds")
    hostfile.write_text("localhost slots=2\n")
    assert "--hostfile" in launch_command(TrainConfig(hostfile=str(hostfile)), spec, 1234)


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


def test_two_nodes_through_torchruns_rendezvous(mixture, tmp_path, monkeypatch):
    """Node 0 is the stage; node 1 runs `pretrain-pipeline train-node`, finds the launch in the shared work_dir and
    joins the rendezvous; the version is the one-node version of the same total ranks."""
    from model.train import free_port
    from tests.conftest import REPO

    store, tokenizer, mix = mixture
    endpoint, shared = f"127.0.0.1:{free_port()}", tmp_path / "shared"
    shared.mkdir()
    settings = TrainConfig(steps=3, micro_batch=1, warmup_steps=1, checkpoint_every=2, zero_stage=1, processes=2,
                           nodes=2, rdzv_endpoint=endpoint, work_dir=str(shared))
    spec = pretrain_spec(settings, SIZE, mix, tokenizer)
    one_node = settings.model_copy(update={"nodes": 1, "rdzv_endpoint": None, "work_dir": None})
    assert spec.version == pretrain_spec(one_node, SIZE, mix, tokenizer).version
    monkeypatch.setenv("PRETRAIN_JOB_ID", "two-nodes")
    overrides = [f"train.{key}={value}" for key, value in
                 (("nodes", 2), ("processes", 2), ("rdzv_endpoint", endpoint), ("work_dir", shared))]
    node = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "train-node", "-c", str(REPO / "pipeline.yaml"),
                             *[arg for item in overrides for arg in ("--set", item)], "--idle-timeout", "20"],
                            cwd=REPO, env={**os.environ, "JOB_COMPLETION_INDEX": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    messages: list[str] = []
    try:
        manifest = run_pretrain(settings, SIZE, store, spec, mix, tokenizer, progress=messages.append)
        output, _ = node.communicate(timeout=180)
    finally:
        node.kill()
    assert node.returncode == 0, output[-3000:]
    assert manifest["counts"]["steps"] == 3 and manifest["summary"]["global_batch_sequences"] == 2
    assert any("--rdzv-backend c10d" in m and "--nnodes 2" in m for m in messages)
    assert any("checkpoint step0000002 stored" in m for m in messages)  # node 0 reports, whatever its global rank
    assert "node 1: joining pretrain (0001.json" in output and "ended with exit code 0" in output
    assert json.loads((shared / "rendezvous" / "two-nodes" / "0001.json").read_text())["finished"]
