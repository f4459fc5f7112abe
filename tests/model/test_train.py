"""DeepSpeed training on CPU, on transformers' own model classes: ZeRO stages 0-3 learn and export on a model whose
embedding is above ZeRO-3's persistence threshold, two ranks (ZeRO-2 and ZeRO-3) through torchrun, bf16 exports the
fp32 master weights, an interrupted and resumed run reproduces the uninterrupted run bit for bit and keeps its whole
history, a resume with another world size is refused, validation loss and checkpoint pruning, the divergence guard,
weight-decay grouping and the learning-rate schedule."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from safetensors.torch import load_file

from model.families import build_model
from model.train import Schedule, deepspeed_config, free_port, micro_positions, parameter_groups
from corpus.token_shards import TokenShardWriter, token_schema
from tests.conftest import REPO

SEQ = 32
# vocab 2048 x d 64: the embedding (131,072 elements) is above DeepSpeed's ZeRO-3 persistence threshold (1e5),
# so ZeRO-3 really partitions it (a parameter below the threshold stays whole on every rank).
LLAMA = {"model_type": "llama", "vocab_size": 2048, "hidden_size": 64, "intermediate_size": 176,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": SEQ,
         "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}
GPT2 = {"model_type": "gpt2", "vocab_size": 2048, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": SEQ,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "bos_token_id": 0, "eos_token_id": 0,
        "pad_token_id": 1}


def write_shards(directory: Path, tokens: np.ndarray, sizes: list[int], stem: str) -> list[str]:
    paths = []
    writer = TokenShardWriter(directory, stem, token_schema(SEQ, np.dtype(np.uint16), False), "toy", sizes[0],
                              on_closed=lambda path, *_counts: paths.append(str(path)), pad_id=1, eos_id=0)
    writer.write(tokens, np.ones_like(tokens, dtype=np.uint8))
    writer.close()
    return paths


def learnable_data(directory: Path, rows: int = 96) -> dict:
    """Token shards of a learnable pattern (counting with a per-row step), an order over them, and a
    validation shard of the same pattern."""
    rng = np.random.default_rng(0)
    starts, steps = rng.integers(2, 64, rows + 16), rng.integers(1, 4, rows + 16)
    tokens = ((starts[:, None] + steps[:, None] * np.arange(SEQ + 1)) % 62 + 2).astype(np.uint16)
    paths = write_shards(directory, tokens[:rows], [40, 40, rows - 80], "s")
    val = write_shards(directory / "val", tokens[rows:], [16], "v")
    order = np.array([(s, r) for s, size in enumerate([40, 40, rows - 80]) for r in range(size)])[rng.permutation(rows)]
    with pa.ipc.new_file(str(directory / "order.arrow"), pa.schema([("shard", pa.uint32()), ("row", pa.uint32())])) as out:
        out.write_table(pa.table({"shard": order[:, 0].astype(np.uint32), "row": order[:, 1].astype(np.uint32)}))
    return {"shards": paths, "order": str(directory / "order.arrow"), "seq_len": SEQ, "pad_id": 1, "val_shards": val}


def spec(tmp_path: Path, data: dict, name: str, model: dict = LLAMA, **train) -> Path:
    run = tmp_path / name
    run.mkdir()
    settings = {"micro_batch": 4, "grad_accum": 2, "steps": 8, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2,
                "weight_decay": 0.1, "betas": [0.9, 0.95], "eps": 1e-8, "clip": 1.0, "precision": "fp32",
                "zero_stage": 0, "seed": 0, "checkpoint_every": 4, **train}
    body = {"model": {"config": model}, "data": data, "train": settings, "resume": True,
            "out": {"metrics": str(run / "metrics.jsonl"), "checkpoints": str(run / "checkpoints"),
                    "export": str(run / "hf")}}
    path = run / "spec.json"
    path.write_text(json.dumps(body))
    return path


def launch(spec_path: Path, processes: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "model.train", "--spec", str(spec_path)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "model.train",
                   "--spec", str(spec_path)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def records(spec_path: Path) -> list[dict]:
    return [json.loads(line) for line in (spec_path.parent / "metrics.jsonl").read_text().splitlines()]


def losses(spec_path: Path) -> list[float]:
    return [record["loss"] for record in records(spec_path)]


def exported(spec_path: Path) -> dict:
    return load_file(str(spec_path.parent / "hf" / "model.safetensors"))


def consolidated(spec_path: Path) -> dict:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(spec_path.parent / "checkpoints"))


def assert_export_equals(state: dict, spec_path: Path) -> None:
    weights = exported(spec_path)
    for name, tensor in state.items():
        key = name if name in weights else None
        if key is None:
            assert name.endswith("lm_head.weight"), f"{name} is not in the export"
            continue
        assert weights[key].dtype == tensor.dtype == __import__("torch").float32
        assert bool((weights[key] == tensor).all()), f"{name} differs from the master weights"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return learnable_data(tmp_path_factory.mktemp("tokens"))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_each_zero_stage_trains_and_exports_the_family(tmp_path, data, stage):
    from transformers import AutoModelForCausalLM

    path = spec(tmp_path, data, f"zero{stage}", zero_stage=stage)
    ok(launch(path))
    curve = losses(path)
    assert len(curve) == 8 and curve[-1] < curve[0] - 0.3, curve
    assert {"loss", "perplexity", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(records(path)[-1])
    assert 0 < records(path)[-1]["mfu"] < 1
    model = AutoModelForCausalLM.from_pretrained(str(path.parent / "hf"))
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype.__str__() == "torch.float32"
    if stage:
        assert_export_equals(consolidated(path), path)


def test_gpt2_family_trains_and_exports(tmp_path, data):
    from transformers import AutoModelForCausalLM

    path = spec(tmp_path, data, "gpt2", model=GPT2, zero_stage=1)
    ok(launch(path))
    assert losses(path)[-1] < losses(path)[0] - 0.3
    assert type(AutoModelForCausalLM.from_pretrained(str(path.parent / "hf"))).__name__ == "GPT2LMHeadModel"
    assert_export_equals(consolidated(path), path)


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_train_and_export(tmp_path, data, stage):
    path = spec(tmp_path, data, f"ranks{stage}", zero_stage=stage, micro_batch=2)
    ok(launch(path, processes=2))
    curve = losses(path)
    assert len(curve) == 8 and curve[-1] < curve[0] - 0.3, curve
    assert_export_equals(consolidated(path), path)
    if stage == 3:  # a rerun of the completed version resumes at the last step and exports again, on 2 ranks
        (path.parent / "hf").rename(path.parent / "hf-first")
        rerun = launch(path, processes=2)
        ok(rerun)
        assert "resumed from" in rerun.stdout and len(losses(path)) == 8
        assert_export_equals(consolidated(path), path)


@pytest.mark.parametrize("stage", [0, 1])
def test_bf16_exports_the_fp32_master_weights(tmp_path, data, stage):
    import torch

    path = spec(tmp_path, data, f"bf16-{stage}", zero_stage=stage, precision="bf16")
    ok(launch(path))
    weights = exported(path)
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())
    if stage:
        assert_export_equals(consolidated(path), path)
    # master weights are not bf16 values: rounding them to bf16 changes some
    sample = weights["model.layers.0.mlp.up_proj.weight"]
    assert not torch.equal(sample, sample.to(torch.bfloat16).to(torch.float32))


def test_interrupted_and_resumed_run_is_bit_identical_and_keeps_its_history(tmp_path, data):
    whole = spec(tmp_path, data, "whole", zero_stage=2, eval_every=4)
    ok(launch(whole))
    parts = spec(tmp_path, data, "parts", zero_stage=2, eval_every=4, stop_at_step=4)
    ok(launch(parts))
    assert len(losses(parts)) == 4
    body = json.loads(parts.read_text())
    del body["train"]["stop_at_step"]
    parts.write_text(json.dumps(body))
    # a fresh attempt's metrics file starts empty: the history comes back from the checkpoint
    (parts.parent / "metrics.jsonl").write_text("")
    second = launch(parts)
    ok(second)
    assert "resumed from" in second.stdout
    first_steps = [r["step"] for r in records(parts)]
    assert first_steps == list(range(1, 9))
    assert [(r["loss"], r.get("val_loss")) for r in records(parts)] == \
        [(r["loss"], r.get("val_loss")) for r in records(whole)]
    assert [r["step"] for r in records(whole) if "val_loss" in r] == [4, 8]
    resumed, uninterrupted = exported(parts), exported(whole)
    assert all(bool((resumed[name] == uninterrupted[name]).all()) for name in uninterrupted)


def test_a_resume_with_another_world_size_is_refused(tmp_path, data):
    path = spec(tmp_path, data, "world", zero_stage=1, micro_batch=2, stop_at_step=4)
    ok(launch(path))
    body = json.loads(path.read_text())
    del body["train"]["stop_at_step"]
    path.write_text(json.dumps(body))
    result = launch(path, processes=2)
    assert result.returncode != 0
    assert re.search(r"error: checkpoint step0000004 was written with world size 1 \(micro-batch 2, accumulation 2\); "
                     r"this run has world size 2 \(micro-batch 2, accumulation 2\)", result.stdout + result.stderr)


def test_old_checkpoints_are_pruned(tmp_path, data):
    path = spec(tmp_path, data, "prune", zero_stage=1, checkpoint_every=2, keep_checkpoints=2)
    result = launch(path)
    ok(result)
    assert sorted(p.name for p in (path.parent / "checkpoints").glob("step*")) == ["step0000006", "step0000008"]
    announced = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"checkpoint"')]
    assert [a["pruned"] for a in announced] == [[], [], ["step0000002"], ["step0000004"]]


def test_a_diverging_run_stops_with_a_clear_error(tmp_path, data):
    path = spec(tmp_path, data, "nan", lr=1e12, min_lr=1e12, warmup_steps=0, clip=0.0, checkpoint_every=1)
    result = launch(path)
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(r"loss is (nan|inf|-inf) at step \d+; the last good checkpoint is kept", result.stderr)
    assert not (path.parent / "hf").exists()


@pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_weight_decay_applies_to_block_matrices_only(config):
    model = build_model(config)
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    per_layer = 7 if config is LLAMA else 4  # q, k, v, o, gate, up, down | c_attn, attn c_proj, c_fc, mlp c_proj
    assert len(decayed) == per_layer * 2 and all(".layers." in n or ".h." in n for n in decayed), decayed
    embedding = "model.embed_tokens.weight" if config is LLAMA else "transformer.wte.weight"
    assert embedding in {names[id(p)] for p in no_decay["params"]} and no_decay["weight_decay"] == 0.0
    assert sum(p.numel() for group in (decay, no_decay) for p in group["params"]) == model.num_parameters()


def test_learning_rate_schedule():
    schedule = Schedule(lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=14)
    assert [schedule.lr_at(step) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule.lr_at(9) == pytest.approx(0.55)  # half-way through the cosine
    assert schedule.lr_at(14) == pytest.approx(0.1) and schedule.lr_at(100) == pytest.approx(0.1)


def test_deepspeed_config_and_data_slices():
    config = deepspeed_config({"micro_batch": 4, "grad_accum": 2, "clip": 1.0, "zero_stage": 3,
                               "precision": "bf16"}, world_size=2)
    assert config["train_batch_size"] == 16 and config["zero_optimization"] == {"stage": 3}
    assert config["bf16"] == {"enabled": True}
    seen = np.concatenate([micro_positions(1, 4, a, r, 2, 2) for a in range(2) for r in range(2)])
    assert sorted(seen.tolist()) == list(range(16, 32))  # step 1 reads the second global batch, once


def test_a_one_machine_run_listens_on_loopback_only(tmp_path, data):
    """The rendezvous store and gloo's sockets of a one-process run (and of rank 0 under DeepSpeed's launcher) are
    bound to 127.0.0.1, not to every interface."""
    import time

    import psutil

    path = spec(tmp_path, data, "listen", zero_stage=1, steps=5000, checkpoint_every=10_000)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "model.train", "--spec", str(path)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listening: list = []
        for _ in range(600):  # until training has started (its metrics appear)
            if (path.parent / "metrics.jsonl").is_file() and (path.parent / "metrics.jsonl").stat().st_size:
                listening = [c.laddr for c in psutil.Process(process.pid).net_connections(kind="tcp")
                             if c.status == psutil.CONN_LISTEN]
                break
            time.sleep(0.1)
        assert listening and {address.ip for address in listening} == {"127.0.0.1"}, listening
    finally:
        process.kill()
        process.wait()
