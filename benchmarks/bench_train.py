"""Training step benchmark: our DeepSpeed path (model/train.py: engine forward, backward, step, with the
stage's loss and data) side by side with a plain PyTorch loop on the same model, batch and data, in one
run, on CPU.

Run from the repository root (about 2 minutes on a 2-core machine):

    .venv/bin/python benchmarks/bench_train.py
    .venv/bin/python benchmarks/bench_train.py --steps 30 --preset tiny

Both start from the same weights (same seed) and read the same batches: rows of a synthetic but
learnable token stream (the same generator as the tests), micro-batch 8 x seq_len 256, fp32, the demo's
`tiny` model (4 layers, d 128, vocab 8192). Each is timed over `--steps` optimizer steps after 5 warm-up
steps, in its own fresh process (one rank, OMP_NUM_THREADS=2), median step time reported:

- deepspeed: `deepspeed.initialize` with the config model/train.py builds (ZeRO stage 0 and 1), torch
  AdamW as the client optimizer, `engine(inputs)`, `engine.backward`, `engine.step`;
- plain: `model(inputs)`, `loss.backward()`, `clip_grad_norm_`, `AdamW.step()`, `zero_grad()`.

Also reported: tokens/s and the estimated MFU for a nominal `--peak-tflops` (CPU peaks vary; the figure
is for comparison between runs, not an absolute). Writes benchmarks/results/train.json. Target (from the
issue): deepspeed step time <= 1.15 x plain.
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


def batches(vocab: int, seq_len: int, micro: int, count: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    for _ in range(count):
        starts, steps = rng.integers(2, vocab, micro), rng.integers(1, 4, micro)
        yield ((starts[:, None] + steps[:, None] * np.arange(seq_len + 1)) % (vocab - 2) + 2).astype(np.int64)


def child(mode: str, zero_stage: int, steps: int, preset: str) -> dict:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch

    from model.gpt import GPT, GPTConfig, lm_loss, targets_and_weights
    from model.train import deepspeed_config, parameter_groups, setup_distributed_environment
    from pipeline.config import MODEL_PRESETS

    size = MODEL_PRESETS[preset]
    config = GPTConfig(vocab_size=8192, **size)
    seq_len, micro = size["n_positions"], 8
    torch.manual_seed(0)
    model = GPT(config)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    if mode == "deepspeed":
        setup_distributed_environment("cpu")
        import deepspeed
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="gloo")
        settings = {"micro_batch": micro, "grad_accum": 1, "clip": 1.0, "zero_stage": zero_stage, "precision": "fp32"}
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                       config=deepspeed_config(settings, 1))

        def step(rows):
            inputs, targets, weights = targets_and_weights(torch.from_numpy(rows), 1)
            loss = lm_loss(engine(inputs), targets, weights)
            engine.backward(loss)
            engine.step()
            return loss.item()
    else:
        def step(rows):
            inputs, targets, weights = targets_and_weights(torch.from_numpy(rows), 1)
            loss = lm_loss(model(inputs), targets, weights)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.item()

    times, losses = [], []
    for index, rows in enumerate(batches(8192, seq_len, micro, steps + 5)):
        started = time.perf_counter()
        losses.append(step(rows))
        if index >= 5:
            times.append(time.perf_counter() - started)
    return {"mode": mode, "zero_stage": zero_stage if mode == "deepspeed" else None,
            "step_s_median": statistics.median(times), "tokens_per_step": micro * seq_len,
            "parameters": model.num_parameters(), "first_loss": losses[0], "last_loss": losses[-1],
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM; ru_maxrss would include a parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=0.2, help="nominal CPU peak for the MFU estimate")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "ZERO"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.steps, args.preset)))
        return
    from shared_machine import machine_info, wait_until_quiet

    busy, waited = wait_until_quiet(60)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    runs: dict[str, list[dict]] = {"plain": [], "deepspeed_zero0": [], "deepspeed_zero1": []}
    for _ in range(args.repeats):  # interleaved
        for name, (mode, zero) in (("plain", ("plain", 0)), ("deepspeed_zero0", ("deepspeed", 0)),
                                   ("deepspeed_zero1", ("deepspeed", 1))):
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(zero), "--steps", str(args.steps),
                                  "--preset", args.preset], capture_output=True, text=True, env=env, cwd=REPO,
                                 check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    figures = {}
    for name, measured in runs.items():
        step = statistics.median(r["step_s_median"] for r in measured)
        tokens_per_s = measured[0]["tokens_per_step"] / step
        figures[name] = {"step_s": round(step, 5), "tokens_per_s": round(tokens_per_s, 1),
                         "mfu_at_nominal_peak": round(6 * measured[0]["parameters"] * tokens_per_s /
                                                      (args.peak_tflops * 1e12), 4),
                         "first_loss": round(measured[0]["first_loss"], 4), "last_loss": round(measured[0]["last_loss"], 4),
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in measured)}
    ratios = {name: round(figures[name]["step_s"] / figures["plain"]["step_s"], 3)
              for name in ("deepspeed_zero0", "deepspeed_zero1")}
    results = {"machine": {**machine_info(REPO, ("torch", "deepspeed")), "busy_before_timing": busy,
                           "waited_s": waited},
               "setup": {"preset": args.preset, "micro_batch": 8, "steps": args.steps, "repeats": args.repeats,
                         "threads": 2, "precision": "fp32", "nominal_peak_tflops": args.peak_tflops},
               "figures": figures, "step_time_over_plain": ratios,
               "target": {"max_ratio": TARGET, "met": all(r <= TARGET for r in ratios.values())}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for name, figure in figures.items():
        print(f"{name:16} {figure['step_s'] * 1000:8.1f} ms/step  {figure['tokens_per_s']:>9,.0f} tokens/s  "
              f"loss {figure['first_loss']:.3f} -> {figure['last_loss']:.3f}")
    print(f"step time / plain: {ratios}; target <= {TARGET}: {results['target']['met']} -> "
          f"{RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
