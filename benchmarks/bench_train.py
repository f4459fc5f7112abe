"""Training step benchmark: our DeepSpeed path (model/train.py's config, loss and data layout: engine forward,
backward, step) side by side with a plain PyTorch loop on the same transformers model class, weights, batches and
precision, in one run — for each model family, ZeRO stages 0-3 and bf16.

Run from the repository root (about 4 minutes on a 2-core machine):

    .venv/bin/python benchmarks/bench_train.py
    .venv/bin/python benchmarks/bench_train.py --presets llama-tiny --configs plain:fp32 zero1:fp32 --steps 20
    # on a GPU (what benchmarks/gpu_check.sh runs after installing CUDA torch):
    python benchmarks/bench_train.py --device cuda --presets gpt2-124m llama-125m --configs plain:bf16 zero1:bf16 \\
        zero3:bf16 --micro-batch 8 --steps 30 --vocab 50257 --out benchmarks/results/gpu.json
    # the same code path on a CPU, tiny (a check, not a figure: keep it out of benchmarks/results):
    .venv/bin/python benchmarks/bench_train.py --device cpu --presets gpt2-124m llama-125m \\
        --configs plain:bf16 zero1:bf16 zero3:bf16 --steps 2 --micro-batch 1 --seq-len 64 --out /tmp/gpu-path.json

Every configuration runs in its own fresh process (one rank; OMP_NUM_THREADS=2 on CPU) from the same seed on the same
batches: rows of a synthetic but learnable token stream, micro-batch x the preset's context. Timed over `--steps`
optimizer steps after 3 warm-up steps; the median step time is reported with tokens/s, MFU (FLOPs per token from
model/sizing.py, attention included, over the device's peak: a GPU's datasheet bf16 figure, else a matrix multiply
measured on the device — model/train.py's `peak_flops`), peak memory (process RSS on CPU, max allocated on GPU) and
the loss after the last step.

- zeroN: `deepspeed.initialize` with the config model/train.py builds (ZeRO stage N), torch AdamW as the client
  optimizer, `engine(input_ids=...)`, `engine.backward`, `engine.step`; bf16: DeepSpeed's bf16 (bf16 weights, fp32
  master weights);
- plain: `model(input_ids=...)`, `loss.backward()`, `clip_grad_norm_`, `AdamW.step()`, `zero_grad()`; bf16: the fp32
  model under `torch.autocast(bfloat16)`.

Writes benchmarks/results/train.json (or --out). Target: a DeepSpeed step <= 1.15 x the plain step of the same
precision, for stages 0-2 on one rank (ZeRO-3 partitions and gathers every parameter, which costs on one rank).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "train.json"
TARGET = 1.15
DEFAULT_CONFIGS = ["plain:fp32", "zero0:fp32", "zero1:fp32", "zero2:fp32", "zero3:fp32", "plain:bf16", "zero1:bf16"]
VOCAB = 8192


def batches(vocab: int, seq_len: int, micro: int, count: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    for _ in range(count):
        starts, steps = rng.integers(2, vocab, micro), rng.integers(1, 4, micro)
        yield ((starts[:, None] + steps[:, None] * np.arange(seq_len + 1)) % (vocab - 2) + 2).astype(np.int64)


def peak_memory_mb(device) -> float:
    """This process's peak memory: max allocated on a GPU, else resident (VmHWM, which excludes a parent's)."""
    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def child(preset: str, config: str, steps: int, micro: int, device_name: str, vocab: int = VOCAB,
          seq_len: int | None = None) -> dict:
    accelerator = "cuda" if device_name == "cuda" else "cpu"
    os.environ.setdefault("DS_ACCELERATOR", accelerator)
    import torch

    from model.families import build_model, hf_config_dict, resolve_size
    from model.loss import lm_loss, targets_and_weights
    from model.sizing import count_parameters, flops_per_token
    from model.train import deepspeed_config, parameter_groups, peak_flops, setup_distributed_environment

    mode, precision = config.split(":")
    size = resolve_size(preset, {})
    model_config = hf_config_dict(size, vocab, eos_id=0, pad_id=1)
    seq_len = seq_len or size["n_positions"]
    device = torch.device("cuda:0" if accelerator == "cuda" else "cpu")
    torch.manual_seed(0)
    model = build_model(model_config).to(device)
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    if mode.startswith("zero"):
        setup_distributed_environment(accelerator)
        import deepspeed
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="gloo" if accelerator == "cpu" else "nccl")
        settings = {"micro_batch": micro, "grad_accum": 1, "clip": 1.0, "zero_stage": int(mode[4:]),
                    "precision": precision}
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                       config=deepspeed_config(settings, 1))

        def step(rows):
            inputs, targets, weights = targets_and_weights(torch.from_numpy(rows).to(device), 1)
            loss = lm_loss(engine(input_ids=inputs, use_cache=False).logits, targets, weights)
            engine.backward(loss)
            engine.step()
            return loss
    else:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

        def step(rows):
            inputs, targets, weights = targets_and_weights(torch.from_numpy(rows).to(device), 1)
            with autocast:
                logits = model(input_ids=inputs, use_cache=False).logits
            loss = lm_loss(logits, targets, weights)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times, loss = [], None
    for index, rows in enumerate(batches(vocab, seq_len, micro, steps + 3)):
        synchronize()
        started = time.perf_counter()
        loss = step(rows).item()
        synchronize()
        if index >= 3:
            times.append(time.perf_counter() - started)
    peak, source = peak_flops({}, precision, device)
    step_s = statistics.median(times)
    tokens_per_s = micro * seq_len / step_s
    return {"preset": preset, "config": config, "step_s": round(step_s, 5), "tokens_per_s": round(tokens_per_s, 1),
            "mfu": round(flops_per_token(model_config, seq_len) * tokens_per_s / peak, 4), "peak_source": source,
            "parameters": count_parameters(model_config), "loss_after": round(loss, 4), "steps": steps,
            "peak_memory_mb": peak_memory_mb(device), "seq_len": seq_len, "micro_batch": micro,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def gpu_info() -> dict:
    """The GPU, its driver and the CUDA build of torch, for the results file."""
    import torch

    query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True)
    name, driver, memory = ([part.strip() for part in query.stdout.splitlines()[0].split(",")]
                            if query.returncode == 0 and query.stdout.strip() else (None, None, None))
    return {"name": name, "driver": driver, "memory": memory, "torch": torch.__version__, "torch_cuda": torch.version.cuda}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["llama-tiny", "gpt2-tiny"])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="MODE:PRECISION, MODE plain or zeroN")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--vocab", type=int, default=VOCAB, help="vocabulary size (GPT-2's is 50257)")
    parser.add_argument("--seq-len", type=int, default=None, help="default: the preset's context")
    parser.add_argument("--child-timeout", type=float, default=None,
                        help="seconds one configuration may take (its row records the timeout)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=2, metavar=("PRESET", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.steps, args.micro_batch, args.device, args.vocab,
                               args.seq_len)))
        return
    from shared_machine import machine_info, wait_until_quiet

    busy, waited = wait_until_quiet(60) if args.device == "cpu" else (None, 0.0)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DS_ACCELERATOR": args.device, "PYTHONPATH": str(REPO)}
    runs = []
    for preset in args.presets:
        for config in args.configs:
            command = [sys.executable, __file__, "--child", preset, config, "--steps", str(args.steps),
                       "--micro-batch", str(args.micro_batch), "--device", args.device, "--vocab", str(args.vocab)]
            try:
                out = subprocess.run(command + (["--seq-len", str(args.seq_len)] if args.seq_len else []),
                                     capture_output=True, text=True, env=env, cwd=REPO, timeout=args.child_timeout)
            except subprocess.TimeoutExpired:
                runs.append({"preset": preset, "config": config, "error": f"timed out after {args.child_timeout} s"})
                print(f"{preset:12} {config:12} FAILED: {runs[-1]['error']}", flush=True)
                continue
            if out.returncode != 0:
                runs.append({"preset": preset, "config": config, "error": out.stderr.strip().splitlines()[-1][:300]})
                print(f"{preset:12} {config:12} FAILED: {runs[-1]['error']}", flush=True)
                continue
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            run = runs[-1]
            print(f"{preset:12} {config:12} {run['step_s'] * 1000:9.1f} ms/step {run['tokens_per_s']:>11,.0f} tokens/s"
                  f"  MFU {run['mfu']:.3f}  {run['peak_memory_mb']:>8,.0f} MB  loss {run['loss_after']:.3f}", flush=True)
    plain = {(r["preset"], r["config"].split(":")[1]): r["step_s"] for r in runs
             if r["config"].startswith("plain") and "step_s" in r}
    ratios = {f"{r['preset']} {r['config']}": round(r["step_s"] / plain[(r["preset"], r["config"].split(":")[1])], 3)
              for r in runs if r["config"].startswith("zero") and "step_s" in r
              and (r["preset"], r["config"].split(":")[1]) in plain}
    judged = {name: ratio for name, ratio in ratios.items() if "zero3" not in name}
    results = {"machine": {**machine_info(REPO, ("torch", "deepspeed", "transformers")), "busy_before_timing": busy,
                           "waited_s": waited},
               "setup": {"presets": args.presets, "configs": args.configs, "micro_batch": args.micro_batch,
                         "steps": args.steps, "device": args.device, "vocab": args.vocab, "seq_len": args.seq_len},
               "runs": runs, "step_time_over_plain": ratios,
               "target": {"max_ratio": TARGET, "applies_to": "ZeRO 0-2 on one rank",
                          "met": bool(judged) and all(r <= TARGET for r in judged.values())}}
    if args.device == "cuda":
        results["machine"]["gpu"] = gpu_info()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"step time / plain loop of the same precision: {ratios}; target <= {TARGET} (ZeRO 0-2): "
          f"{results['target']['met']} -> {args.out}")


if __name__ == "__main__":
    main()
