"""The DeepSpeed training entry point: `python -m model.train --spec run.json`, started once per rank by
DeepSpeed's launcher (`deepspeed --num_gpus N --module model.train ...`), torchrun, or directly for one process.

The run spec (JSON, written by the pretraining task from pipeline.yaml and the artifacts) names the model
size, the local token shards and the mixture's global order, the optimisation settings and where to
write metrics and checkpoints. Everything else follows from it:

- the DeepSpeed config (ZeRO stage 0-3, bf16 or fp32, micro-batch, gradient accumulation, clipping);
- AdamW (a plain torch optimizer: nothing to compile) with weight decay on matrices only — not on
  biases, LayerNorms or the embeddings — and a learning rate set every step from the step number:
  linear warmup, then cosine decay to `min_lr`;
- the data: global step g reads sequences [g*B, (g+1)*B) of the mixture's order (B = micro_batch x
  accumulation x world size), each rank its own micro-batches; the step is in the checkpoint, so a
  resumed run reads exactly what the uninterrupted one would have;
- metrics per step as JSON lines (loss, perplexity, learning rate, gradient norm, tokens/s, estimated
  MFU); a NaN or infinite loss stops the run with an error, leaving the last good checkpoint;
- checkpoints every `checkpoint_every` steps (DeepSpeed's format, resumable), and at the end fp32
  weights consolidated from any ZeRO stage, saved as safetensors. `stop_at_step` ends a run early
  (a time slot, a preemptible machine) after a checkpoint; the next run resumes from it.

On a CPU machine DeepSpeed's CPU accelerator and gloo are used (DS_ACCELERATOR=cpu); the same code runs
on GPUs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Schedule:
    lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to min_lr."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / decay_steps, 1.0)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on the matrices of the blocks only; biases, LayerNorms and embeddings are not decayed."""
    decay, no_decay = [], []
    seen = set()
    for name, parameter in model.named_parameters():
        if id(parameter) in seen or not parameter.requires_grad:
            continue
        seen.add(id(parameter))
        is_embedding = name.startswith(("wte.", "wpe.", "lm_head."))
        (decay if parameter.dim() >= 2 and not is_embedding else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]  # LoRA freezes all but its adapters


def deepspeed_config(train: dict, world_size: int) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": train["micro_batch"],
        "gradient_accumulation_steps": train["grad_accum"],
        "train_batch_size": train["micro_batch"] * train["grad_accum"] * world_size,
        "gradient_clipping": train["clip"],
        "zero_optimization": {"stage": train["zero_stage"]},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if train["precision"] == "bf16":
        config["bf16"] = {"enabled": True}
    return config


class OrderedData:
    """The mixture's global order over memory-mapped token shards; rank r reads its micro-batches."""

    def __init__(self, shards: list[str], order: str):
        import pyarrow as pa

        from corpus.token_shards import read_tokens, sequences

        self.rows = [sequences(read_tokens(path)) for path in shards]
        self.masks = []
        for path in shards:
            table = read_tokens(path)
            if "loss_mask" in table.column_names:
                column = table.column("loss_mask").combine_chunks()
                self.masks.append(column.values.to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size))
            else:
                self.masks.append(None)
        order_table = pa.ipc.open_file(pa.memory_map(order)).read_all()
        self.shard = order_table.column("shard").to_numpy()
        self.row = order_table.column("row").to_numpy()

    def __len__(self) -> int:
        return len(self.shard)

    def batch(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        positions = positions % len(self.shard)  # past the end: the order again
        rows = np.stack([self.rows[s][r] for s, r in zip(self.shard[positions], self.row[positions])]).astype(np.int64)
        if all(mask is None for mask in self.masks):
            return rows, None
        masks = np.stack([self.masks[s][r] if self.masks[s] is not None else np.ones(rows.shape[1], np.uint8)
                          for s, r in zip(self.shard[positions], self.row[positions])])
        return rows, masks


def micro_positions(step: int, micro: int, accum_index: int, rank: int, world: int, accum: int) -> np.ndarray:
    """Positions in the global order of one rank's micro-batch within global step `step`."""
    global_batch = micro * accum * world
    start = step * global_batch + (accum_index * world + rank) * micro
    return np.arange(start, start + micro)


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for the rendezvous of the ranks)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def setup_distributed_environment(accelerator: str) -> None:
    """Defaults for a run without a launcher (one process), and the accelerator from the run spec (DeepSpeed's
    multi-node launcher does not pass DS_ACCELERATOR on to the other nodes; the spec travels with the code)."""
    os.environ.setdefault("DS_ACCELERATOR", accelerator)
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def train(spec: dict) -> dict:
    """Run (or resume) the training the spec describes; returns a summary (on every rank)."""
    setup_distributed_environment(spec["train"].get("accelerator", "cpu"))
    import deepspeed
    import deepspeed.ops
    import torch
    import torch.distributed as dist

    # The shared-memory comm op is unused on CPU but would be JIT-compiled at initialize (40-90 s).
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    from .gpt import GPT, GPTConfig, lm_loss, targets_and_weights

    settings, data_spec, out = spec["train"], spec["data"], spec["out"]
    torch.manual_seed(settings["seed"])
    deepspeed.init_distributed(dist_backend=settings.get("backend") or ("gloo" if os.environ["DS_ACCELERATOR"] == "cpu"
                                                                         else "nccl"))
    rank, world = dist.get_rank(), dist.get_world_size()
    config = GPTConfig(**spec["model"])
    model = GPT(config)
    if spec.get("init"):  # continued pretraining / fine-tuning: start from these weights (a checkpoint overrides)
        from .export import load_weights

        load_weights(model, Path(spec["init"]))
    lora = spec.get("lora")
    if lora:
        from .lora import add_lora

        add_lora(model, lora["rank"], lora["alpha"], lora["targets"], lora.get("dropout", 0.0))
    optimizer = torch.optim.AdamW(parameter_groups(model, settings["weight_decay"]), lr=settings["lr"],
                                  betas=tuple(settings["betas"]), eps=settings["eps"])
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                   config=deepspeed_config(settings, world))
    schedule = Schedule(settings["lr"], settings["min_lr"], settings["warmup_steps"], settings["steps"])
    data = OrderedData(data_spec["shards"], data_spec["order"])
    checkpoints = Path(out["checkpoints"])
    step = 0
    if spec.get("resume", True) and (checkpoints / "latest").is_file():
        _, client = engine.load_checkpoint(str(checkpoints))
        step = client["step"]
        if rank == 0:
            print(f"resumed from {checkpoints} at step {step}", flush=True)
    metrics_path = Path(out["metrics"])
    parameters = model.num_parameters()
    tokens_per_step = settings["micro_batch"] * settings["grad_accum"] * world * data_spec["seq_len"]
    device = engine.device
    last_loss = None
    while step < settings["steps"]:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(step)
        losses = []
        for accum_index in range(settings["grad_accum"]):
            rows, masks = data.batch(micro_positions(step, settings["micro_batch"], accum_index, rank, world,
                                                     settings["grad_accum"]))
            rows_t = torch.from_numpy(rows).to(device)
            mask_t = torch.from_numpy(masks).to(device) if masks is not None else None
            inputs, targets, weights = targets_and_weights(rows_t, data_spec["pad_id"], mask_t)
            loss = lm_loss(engine(inputs), targets, weights)
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach().float())
        mean = torch.stack(losses).mean()
        dist.all_reduce(mean)
        mean = (mean / world).item()
        if not math.isfinite(mean):
            raise Diverged(f"loss is {mean} at step {step}; the last good checkpoint is kept in {checkpoints}")
        step += 1
        seconds = time.perf_counter() - started
        grad_norm = engine.get_global_grad_norm()
        tokens_per_s = tokens_per_step / seconds
        record = {"step": step, "loss": round(mean, 6), "perplexity": round(math.exp(min(mean, 50)), 4),
                  "lr": schedule.lr_at(step - 1),
                  "grad_norm": round(float(grad_norm), 6) if grad_norm is not None else None,
                  "tokens_per_s": round(tokens_per_s, 1), "seconds": round(seconds, 4)}
        if settings.get("peak_tflops"):
            record["mfu"] = round(6 * parameters * tokens_per_s / (settings["peak_tflops"] * 1e12 * world), 6)
        last_loss = mean
        if rank == 0:
            with open(metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            if step % settings.get("log_every", 1) == 0 or step == settings["steps"]:
                print(json.dumps(record), flush=True)
        stop_here = step == settings.get("stop_at_step")
        if step % settings["checkpoint_every"] == 0 or step == settings["steps"] or stop_here:
            engine.save_checkpoint(str(checkpoints), tag=f"step{step:07d}", client_state={"step": step})
            dist.barrier()
            if rank == 0:  # the launching task uploads it to the artifact store on this line
                print(json.dumps({"checkpoint": f"step{step:07d}", "step": step}), flush=True)
        if stop_here:
            break
    dist.barrier()
    summary = {"steps": step, "final_loss": last_loss, "parameters": parameters, "world_size": world,
               "complete": step >= settings["steps"]}
    if rank == 0 and out.get("weights") and summary["complete"]:
        save_consolidated(engine, model, settings["zero_stage"], checkpoints, Path(out["weights"]), bool(lora))
    dist.barrier()
    return summary


def save_consolidated(engine, model, zero_stage: int, checkpoints: Path, path: Path, lora: bool = False) -> None:
    """fp32 weights of the whole model (gathered from a ZeRO-3 checkpoint; LoRA adapters merged) as safetensors."""
    from .export import save_weights
    from .lora import merge_lora

    if zero_stage == 3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints))
        state.setdefault("lm_head.weight", state["wte.weight"])
        model.load_state_dict(state)
    else:
        model = engine.module
    save_weights(merge_lora(model) if lora else model, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train the GPT with DeepSpeed from a run spec")
    parser.add_argument("--spec", required=True, help="the run spec (JSON)")
    parser.add_argument("--local_rank", type=int, default=None, help="set by DeepSpeed's launcher")
    args = parser.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    spec = json.loads(Path(args.spec).read_text())
    try:
        summary = train(spec)
    except Diverged as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
