"""DeepSpeed training on CPU: ZeRO stages 0-3 learn, two ranks (ZeRO-2 and ZeRO-3) through torchrun, an
interrupted and resumed run reproduces the uninterrupted run's losses, the divergence guard, weight-decay
grouping and the learning-rate schedule."""

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

from model.gpt import GPT, GPTConfig
from model.train import Schedule, deepspeed_config, free_port, micro_positions, parameter_groups
from corpus.token_shards import TokenShardWriter, token_schema
from tests.conftest import REPO

SEQ = 32
MODEL = {"vocab_size": 64, "n_positions": SEQ, "n_layer": 2, "n_head": 2, "d_model": 32}


def learnable_data(directory: Path, rows: int = 96) -> dict:
    """Token shards of a learnable pattern (counting with a per-row step) and an order over them."""
    rng = np.random.default_rng(0)
    starts, steps = rng.integers(2, 64, rows), rng.integers(1, 4, rows)
    tokens = ((starts[:, None] + steps[:, None] * np.arange(SEQ + 1)) % 62 + 2).astype(np.uint16)
    paths = []
    writer = TokenShardWriter(directory, "s", token_schema(SEQ, np.dtype(np.uint16), False), "toy", 40,
                              on_closed=lambda path, *_counts: paths.append(str(path)), pad_id=1, eos_id=0)
    writer.write(tokens, np.ones_like(tokens, dtype=np.uint8))
    writer.close()
    sizes = [40, 40, rows - 80]
    order = np.array([(s, r) for s, size in enumerate(sizes) for r in range(size)])[rng.permutation(rows)]
    with pa.ipc.new_file(str(directory / "order.arrow"), pa.schema([("shard", pa.uint32()), ("row", pa.uint32())])) as out:
        out.write_table(pa.table({"shard": order[:, 0].astype(np.uint32), "row": order[:, 1].astype(np.uint32)}))
    return {"shards": paths, "order": str(directory / "order.arrow"), "seq_len": SEQ, "pad_id": 1}


def spec(tmp_path: Path, data: dict, name: str, **train) -> Path:
    run = tmp_path / name
    run.mkdir()
    settings = {"micro_batch": 4, "grad_accum": 2, "steps": 8, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2,
                "weight_decay": 0.1, "betas": [0.9, 0.95], "eps": 1e-8, "clip": 1.0, "precision": "fp32",
                "zero_stage": 0, "seed": 0, "checkpoint_every": 4, **train}
    body = {"model": MODEL, "data": data, "train": settings, "resume": True,
            "out": {"metrics": str(run / "metrics.jsonl"), "checkpoints": str(run / "checkpoints"),
                    "weights": str(run / "model.safetensors")}}
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


def losses(spec_path: Path) -> list[float]:
    lines = (spec_path.parent / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return learnable_data(tmp_path_factory.mktemp("tokens"))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_each_zero_stage_trains_with_falling_loss(tmp_path, data, stage):
    path = spec(tmp_path, data, f"zero{stage}", zero_stage=stage)
    result = launch(path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    curve = losses(path)
    assert len(curve) == 8 and curve[-1] < curve[0] - 0.3, curve
    record = json.loads((path.parent / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss", "perplexity", "lr", "grad_norm", "tokens_per_s"} <= set(record)
    assert (path.parent / "model.safetensors").is_file()


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks(tmp_path, data, stage):
    path = spec(tmp_path, data, f"ranks{stage}", zero_stage=stage, micro_batch=2)
    result = launch(path, processes=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    curve = losses(path)
    assert len(curve) == 8 and curve[-1] < curve[0] - 0.3, curve


def test_interrupted_and_resumed_run_reproduces_the_losses(tmp_path, data):
    whole = spec(tmp_path, data, "whole", zero_stage=2)
    assert launch(whole).returncode == 0
    parts = spec(tmp_path, data, "parts", zero_stage=2, stop_at_step=4)
    first = launch(parts)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(losses(parts)) == 4
    body = json.loads(parts.read_text())
    del body["train"]["stop_at_step"]
    parts.write_text(json.dumps(body))
    second = launch(parts)
    assert second.returncode == 0 and "resumed from" in second.stdout, second.stdout[-2000:]
    assert losses(parts) == losses(whole)


def test_a_diverging_run_stops_with_a_clear_error(tmp_path, data):
    path = spec(tmp_path, data, "nan", lr=1e12, min_lr=1e12, warmup_steps=0, clip=0.0, checkpoint_every=1)
    result = launch(path)
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(r"loss is (nan|inf|-inf) at step \d+; the last good checkpoint is kept", result.stderr)
    assert not (path.parent / "model.safetensors").exists()


def test_weight_decay_applies_to_block_matrices_only():
    model = GPT(GPTConfig(**MODEL))
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    assert all(name.startswith("h.") and name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
               for name in decayed) and len(decayed) == 4 * MODEL["n_layer"]
    assert "wte.weight" in {names[id(p)] for p in no_decay["params"]} and no_decay["weight_decay"] == 0.0
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
