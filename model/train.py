"""The DeepSpeed training entry point: `python -m model.train --spec run.json`, started once per rank by
DeepSpeed's launcher (`deepspeed --num_gpus N --module model.train ...`), torchrun, or directly for one process.

The run spec (JSON, written by the training stages from pipeline.yaml and the artifacts) names the model
(a transformers config to build from scratch, or a checkpoint directory to start from), the local token
shards and the global order, the optimisation settings and where to write metrics, checkpoints and the
export. Everything else follows from it:

- the model: transformers' own class of the config's family (GPT-2, Llama, Mistral, Qwen2, ...), fp32
  weights, optionally wrapped with LoRA adapters (model/lora.py);
- the DeepSpeed config (ZeRO stage 0-3, bf16 or fp32, micro-batch, gradient accumulation, clipping);
- AdamW (a plain torch optimizer: nothing to compile) with weight decay on the blocks' matrices only —
  not on biases, norms or the embeddings — and a learning rate set every step from the step number:
  linear warmup, then cosine decay to `min_lr`;
- the data: global step g reads sequences [g*B, (g+1)*B) of the order (B = micro_batch x accumulation
  x world size), each rank its own micro-batches; the step is in the checkpoint, so a resumed run reads
  exactly what the uninterrupted one would have. A checkpoint written by another world size is refused.
  The shards are local files, or (`data.stream`) streamed from the artifact store through a bounded
  cache with read-ahead (model/streaming.py) — the same batches either way;
- metrics per step as JSON lines (loss, perplexity, learning rate, gradient norm, tokens/s, MFU, and every
  `eval_every` steps the validation loss); the metrics travel with each checkpoint, so a resumed run's
  history still starts at step 1. A NaN or infinite loss stops the run with an error, leaving the last
  good checkpoint;
- checkpoints every `checkpoint_every` steps (DeepSpeed's format), the newest `keep_checkpoints` kept;
  `stop_at_step` ends a run early (a time slot, a preemptible machine) after a checkpoint;
- at the end, the fp32 master weights (consolidated from any ZeRO stage; never the bf16 copy the
  forward pass used; LoRA adapters merged into the fp32 base) saved as an HF directory of the model's
  family (model/checkpoint.py).

MFU = achieved FLOP/s over the peak: FLOPs per token from model/sizing.py (attention included); the
peak is `peak_tflops` if given, the datasheet's dense bf16 figure of a known GPU, or else a matrix
multiply measured on the device at start (so on a CPU, MFU is against what its GEMM achieves).

On a CPU machine DeepSpeed's CPU accelerator and gloo are used (DS_ACCELERATOR=cpu); the same code runs
on GPUs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .streaming import StreamingData

# Dense bf16 TFLOP/s per GPU (datasheets, without sparsity), by a substring of torch.cuda.get_device_name().
GPU_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                        "A100": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0,
                        "RTX 4090": 165.0, "B200": 2250.0, "GB200": 2500.0}


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
    """Weight decay on the blocks' matrices only; biases, norms and embeddings (input and output) are not decayed."""
    from torch import nn

    embeddings = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        embeddings.add(id(output.weight))
    decay, no_decay, seen = [], [], set()
    for parameter in model.parameters():
        if id(parameter) in seen or not parameter.requires_grad:
            continue
        seen.add(id(parameter))
        (decay if parameter.dim() >= 2 and id(parameter) not in embeddings else no_decay).append(parameter)
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
    """The global order over memory-mapped token shards; rank r reads its micro-batches. Rows of shards
    without a loss-mask column get the mask `id != pad_id` when other shards have one."""

    def __init__(self, shards: list[str], order: str | None, pad_id: int):
        import pyarrow as pa

        from corpus.token_shards import read_tokens, sequences

        self.pad_id = pad_id
        self.rows, self.masks = [], []
        for path in shards:
            table = read_tokens(path)
            self.rows.append(sequences(table))
            if "loss_mask" in table.column_names:
                column = table.column("loss_mask").combine_chunks()
                self.masks.append(column.values.to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size))
            else:
                self.masks.append(None)
        if order is not None:
            order_table = pa.ipc.open_file(pa.memory_map(order)).read_all()
            self.shard, self.row = order_table.column("shard").to_numpy(), order_table.column("row").to_numpy()
        else:  # every row of every shard, in shard order (validation)
            self.shard = np.concatenate([np.full(len(rows), index) for index, rows in enumerate(self.rows)] or [[]])
            self.row = np.concatenate([np.arange(len(rows)) for rows in self.rows] or [[]])
        self.shard, self.row = self.shard.astype(np.int64), self.row.astype(np.int64)

    def __len__(self) -> int:
        return len(self.shard)

    def batch(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        positions = positions % len(self.shard)  # past the end: the order again
        pairs = list(zip(self.shard[positions], self.row[positions]))
        rows = np.stack([self.rows[s][r] for s, r in pairs]).astype(np.int64)
        if all(mask is None for mask in self.masks):
            return rows, None
        masks = np.stack([self.masks[s][r] if self.masks[s] is not None else self.rows[s][r] != self.pad_id
                          for s, r in pairs]).astype(np.uint8)
        return rows, masks


def open_data(data: dict, settings: dict, rank: int, world: int, step: int):
    """(training data, validation data or None): over local shards (`data.shards`, `data.val_shards`), or
    streamed from the artifact store through a bounded cache (`data.stream`: model/streaming.py), this rank's
    micro-batches from `step` on."""
    if "stream" not in data:
        validation = OrderedData(data["val_shards"], None, data["pad_id"]) if data.get("val_shards") else None
        return OrderedData(data["shards"], data["order"], data["pad_id"]), validation
    import importlib

    import pyarrow as pa

    from .streaming import PreloadedRows, ShardCache

    stream = data["stream"]
    module, name = stream["reader"].split(":")
    reader = getattr(importlib.import_module(module), name)(stream["store"])
    directory = Path(stream["cache_dir"]) / f"rank{rank}"
    validation = None
    if stream.get("val_shards") and settings.get("eval_every"):
        val_cache = ShardCache(reader, stream["val_shards"], directory / "val", stream["cache_bytes"])
        validation = PreloadedRows(val_cache, [shard["sequences"] for shard in stream["val_shards"]],
                                   settings.get("eval_sequences", 64), data["pad_id"])
        for shard in list(val_cache.cached):  # the rows are in memory now
            val_cache.evict(shard)
        val_cache.close()
    order = pa.ipc.open_file(pa.memory_map(data["order"])).read_all()
    micro, accum = settings["micro_batch"], settings["grad_accum"]
    plan = (micro_positions(later, micro, index, rank, world, accum)
            for later in range(step, settings["steps"]) for index in range(accum))
    cache = ShardCache(reader, stream["shards"], directory / "train", stream["cache_bytes"])
    return StreamingData(cache, order.column("shard").to_numpy().astype(np.int64),
                         order.column("row").to_numpy().astype(np.int64), data["pad_id"], plan,
                         lookahead=stream.get("lookahead", 8)), validation


def micro_positions(step: int, micro: int, accum_index: int, rank: int, world: int, accum: int) -> np.ndarray:
    """Positions in the global order of one rank's micro-batch within global step `step`."""
    global_batch = micro * accum * world
    start = step * global_batch + (accum_index * world + rank) * micro
    return np.arange(start, start + micro)


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class IncompatibleResume(RuntimeError):
    """The checkpoint was written with another world size or batch geometry."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for the rendezvous of the ranks)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def setup_distributed_environment(accelerator: str) -> None:
    """Defaults for a run without a launcher (one process), and the accelerator from the run spec (DeepSpeed's
    multi-node launcher does not pass DS_ACCELERATOR on to the other nodes; the spec travels with the code).
    On one machine gloo talks over the loopback interface only."""
    os.environ.setdefault("DS_ACCELERATOR", accelerator)
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    if os.environ["MASTER_ADDR"] in ("127.0.0.1", "localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def init_process_group(backend: str) -> None:
    """torch.distributed's process group. On one machine (the rendezvous on the loopback address, ranks started
    by us, by DeepSpeed's launcher, or by torchrun agents that do not share their store: model/launch.py) rank 0
    hosts the rendezvous store on a socket bound to 127.0.0.1 — torch's own store listens on every interface.
    Elsewhere (several nodes, a torchrun agent's shared store) torch's defaults apply."""
    import datetime

    import torch.distributed as dist

    address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if address not in ("127.0.0.1", "localhost") or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return  # deepspeed.init_distributed initialises it
    timeout = datetime.timedelta(minutes=30)
    if rank == 0:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        store = dist.TCPStore("127.0.0.1", port, world, is_master=True, timeout=timeout, wait_for_workers=False,
                              master_listen_fd=listener.detach(), use_libuv=False)
    else:
        store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)


def reporting_rank(rank: int, world: int, device) -> int:
    """The rank that writes the metrics, announces checkpoints and exports: the first process of node 0 (the node
    whose training stage reads the output) when the launcher names nodes (PRETRAIN_NODE_RANK, model/launch.py:
    torchrun's c10d rendezvous numbers the nodes in an order of its own), else rank 0."""
    import torch
    import torch.distributed as dist

    if "PRETRAIN_NODE_RANK" not in os.environ:
        return 0
    mine = os.environ["PRETRAIN_NODE_RANK"] == "0" and os.environ.get("LOCAL_RANK", "0") == "0"
    candidate = torch.tensor([rank if mine else world], dtype=torch.int64, device=device)
    dist.all_reduce(candidate, op=dist.ReduceOp.MIN)
    return int(candidate.item()) if int(candidate.item()) < world else 0


def peak_flops(settings: dict, precision: str, device) -> tuple[float, str]:
    """(peak FLOP/s of one rank, where the figure comes from)."""
    import torch

    if settings.get("peak_tflops"):
        return settings["peak_tflops"] * 1e12, "train.peak_tflops"
    if device.type == "cuda" and precision == "bf16":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_BF16_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"datasheet ({name}, dense bf16)"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    size = 2048 if device.type == "cuda" else 512
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - started) / 4)
    return 2 * size ** 3 / best, f"measured {precision} matmul on {device.type}"


def build(spec: dict):
    """The model to train: from the checkpoint directory `init`, else freshly initialised from `config`."""
    from .checkpoint import load_model
    from .families import build_model

    if spec["model"].get("init"):
        return load_model(Path(spec["model"]["init"]))
    return build_model(spec["model"]["config"])


def validation_loss(engine, data: OrderedData, rows: int, micro: int, rank: int, world: int, pad_id: int) -> float:
    """Mean target loss over the first `rows` validation rows, split over the ranks (each rank runs the same
    number of forward passes, as ZeRO-3 needs)."""
    import torch
    import torch.distributed as dist

    from .loss import targets_and_weights

    rows = min(rows, len(data))
    batches = -(-rows // (micro * world))
    total = torch.zeros(2, dtype=torch.float64)
    engine.module.eval()
    with torch.no_grad():
        for index in range(batches):
            positions = np.arange(micro) + (index * world + rank) * micro
            valid = positions < rows
            tokens, masks = data.batch(np.where(valid, positions, 0))
            tokens_t = torch.from_numpy(tokens).to(engine.device)
            mask_t = torch.from_numpy(masks).to(engine.device) if masks is not None else None
            inputs, targets, weights = targets_and_weights(tokens_t, pad_id, mask_t)
            weights = weights & torch.from_numpy(valid).to(engine.device)[:, None]
            logits = engine(input_ids=inputs, use_cache=False).logits.float()
            losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                                       reduction="none")
            total += torch.stack([(losses * weights.reshape(-1)).sum().double().cpu(),
                                  weights.sum().double().cpu()])
    engine.module.train()
    dist.all_reduce(total)
    return float(total[0] / total[1].clamp(min=1))


def read_metrics(path: Path, up_to_step: int | None = None) -> list[dict]:
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [record for record in records if up_to_step is None or record["step"] <= up_to_step]


def master_state(engine, settings: dict, checkpoints: Path) -> dict:
    """The fp32 master weights by parameter name: consolidated from the ZeRO checkpoint (stages 1-3; the final
    step is always checkpointed), or from the engine for stage 0 (bf16: the optimizer's fp32 copies)."""
    if settings["zero_stage"] >= 1:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoints))
    names = {id(parameter): name for name, parameter in engine.module.named_parameters()}
    state = {name: parameter.detach().float().clone() for name, parameter in engine.module.named_parameters()}
    optimizer = engine.optimizer
    if settings["precision"] == "bf16" and hasattr(optimizer, "fp32_groups"):
        for low, high in zip(optimizer.fp16_groups, optimizer.fp32_groups):
            for parameter, master in zip(low, high):
                state[names[id(parameter)]] = master.detach().float().clone()
    return state


def export(spec: dict, state: dict, directory: Path) -> None:
    """The fp32 weights as an HF directory of the model's family (LoRA: adapters merged into the fp32 base)."""
    import torch

    from .checkpoint import save_hf
    from .lora import add_lora, merge_lora

    torch.manual_seed(spec["train"]["seed"])
    model = build(spec)
    if spec.get("lora"):
        lora = spec["lora"]
        wrapped = add_lora(model, lora["rank"], lora["alpha"], lora["targets"], lora.get("dropout", 0.0))
        adapters = {name: tensor for name, tensor in state.items() if ".lora_" in name}
        missing = [name for name, _ in wrapped.named_parameters() if ".lora_" in name and name not in adapters]
        if missing:
            raise RuntimeError(f"export: adapters missing from the checkpoint: {missing[:3]}")
        wrapped.load_state_dict(adapters, strict=False)
        model = merge_lora(wrapped)
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {name for name in missing if name.endswith("lm_head.weight")} if model.config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"export: weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        model.tie_weights()
    save_hf(model, directory)


def train(spec: dict) -> dict:
    """Run (or resume) the training the spec describes; returns a summary (on every rank)."""
    setup_distributed_environment(spec["train"].get("accelerator", "cpu"))
    import deepspeed
    import deepspeed.ops
    import torch
    import torch.distributed as dist

    # The shared-memory comm op is unused on CPU but would be JIT-compiled at initialize (40-90 s).
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    from .loss import lm_loss, targets_and_weights
    from .sizing import count_parameters, flops_per_token

    settings, data_spec, out = spec["train"], spec["data"], spec["out"]
    torch.manual_seed(settings["seed"])
    backend = settings.get("backend") or ("gloo" if os.environ["DS_ACCELERATOR"] == "cpu" else "nccl")
    init_process_group(backend)
    deepspeed.init_distributed(dist_backend=backend)  # a no-op when the group exists
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build(spec)
    model.config.use_cache = False
    lora = spec.get("lora")
    if lora:
        from .lora import add_lora

        model = add_lora(model, lora["rank"], lora["alpha"], lora["targets"], lora.get("dropout", 0.0))
    config = (model.get_base_model() if lora else model).config.to_dict()
    optimizer = torch.optim.AdamW(parameter_groups(model, settings["weight_decay"]), lr=settings["lr"],
                                  betas=tuple(settings["betas"]), eps=settings["eps"])
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                   config=deepspeed_config(settings, world))
    lead = reporting_rank(rank, world, engine.device)
    schedule = Schedule(settings["lr"], settings["min_lr"], settings["warmup_steps"], settings["steps"])
    pad_id = data_spec["pad_id"]
    checkpoints = Path(out["checkpoints"])
    metrics_path = Path(out["metrics"])
    geometry = {"world_size": world, "micro_batch": settings["micro_batch"], "grad_accum": settings["grad_accum"]}
    step, history_path = 0, metrics_path
    if spec.get("resume", True) and (checkpoints / "latest").is_file():
        tag = (checkpoints / "latest").read_text().strip()
        saved = torch.load(checkpoints / tag / "client_state.pt", weights_only=True) \
            if (checkpoints / tag / "client_state.pt").is_file() else None
        if saved is not None and saved.get("geometry", geometry) != geometry:
            old = saved["geometry"]
            raise IncompatibleResume(
                f"checkpoint {tag} was written with world size {old['world_size']} (micro-batch "
                f"{old['micro_batch']}, accumulation {old['grad_accum']}); this run has world size {world} "
                f"(micro-batch {settings['micro_batch']}, accumulation {settings['grad_accum']}). Resuming would "
                f"skip or repeat sequences: rerun with the same ranks (train.processes, the hostfile's slots), "
                f"micro_batch and grad_accum, or start a new version")
        _, client = engine.load_checkpoint(str(checkpoints))
        step = client["step"]
        if (checkpoints / tag / "metrics.jsonl").is_file():  # the history travels with the checkpoint
            history_path = checkpoints / tag / "metrics.jsonl"
        if rank == lead:
            print(f"resumed from {checkpoints} at step {step}", flush=True)
    data, validation = open_data(data_spec, settings, rank, world, step)
    history = read_metrics(history_path, up_to_step=step)
    if rank == lead:  # a resume keeps the history up to its checkpoint, and nothing after it
        metrics_path.write_text("".join(json.dumps(record) + "\n" for record in history))
    per_token = flops_per_token(config, data_spec["seq_len"])
    peak, peak_source = peak_flops(settings, settings["precision"], engine.device)
    tokens_per_step = settings["micro_batch"] * settings["grad_accum"] * world * data_spec["seq_len"]
    parameters = count_parameters(config)
    last_loss = history[-1]["loss"] if history else None
    eval_every = settings.get("eval_every") or 0
    while step < settings["steps"]:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(step)
        losses = []
        for accum_index in range(settings["grad_accum"]):
            rows, masks = data.batch(micro_positions(step, settings["micro_batch"], accum_index, rank, world,
                                                     settings["grad_accum"]))
            rows_t = torch.from_numpy(rows).to(engine.device)
            mask_t = torch.from_numpy(masks).to(engine.device) if masks is not None else None
            inputs, targets, weights = targets_and_weights(rows_t, pad_id, mask_t)
            loss = lm_loss(engine(input_ids=inputs, use_cache=False).logits, targets, weights)
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach().float().cpu())
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
                  "tokens_per_s": round(tokens_per_s, 1), "seconds": round(seconds, 4),
                  "mfu": round(per_token * tokens_per_s / (peak * world), 6)}
        if validation is not None and eval_every and (step % eval_every == 0 or step == settings["steps"]):
            record["val_loss"] = round(validation_loss(engine, validation, settings.get("eval_sequences", 64),
                                                       settings["micro_batch"], rank, world, pad_id), 6)
        last_loss = mean
        if rank == lead:
            with open(metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            if step % settings.get("log_every", 1) == 0 or step == settings["steps"] or "val_loss" in record:
                print(json.dumps(record), flush=True)
        stop_here = step == settings.get("stop_at_step")
        if step % settings["checkpoint_every"] == 0 or step == settings["steps"] or stop_here:
            save_checkpoint(engine, checkpoints, step, geometry, metrics_path, settings.get("keep_checkpoints") or 0,
                            rank == lead, out.get("outbox"))
        if stop_here:
            break
    if isinstance(data, StreamingData):
        data.close()
        stream = {"first_batch_s": round(data.first_batch_seconds or 0.0, 3), **data.cache.stats}
        if rank == lead:
            print(json.dumps({"stream": stream}), flush=True)
    dist.barrier()
    summary = {"steps": step, "final_loss": last_loss, "parameters": parameters, "world_size": world,
               "complete": step >= settings["steps"], "flops_per_token": per_token,
               "peak_flops": peak, "peak_source": peak_source, "reporting_rank": lead}
    # Global rank 0 exports (transformers' save_pretrained writes on rank 0 only), into the work directory the nodes
    # share; the barrier below keeps the reporting rank's launcher running until the export is complete.
    if rank == 0 and out.get("export") and summary["complete"]:
        export(spec, master_state(engine, settings, checkpoints), Path(out["export"]))
    dist.barrier()
    return summary


def link_tree(source: Path, target: Path) -> None:
    """Hard links of a directory's files under `target` (copies where links are not possible)."""
    for path in sorted(source.rglob("*")):
        if path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, destination)
            except OSError:
                shutil.copy2(path, destination)


def save_checkpoint(engine, checkpoints: Path, step: int, geometry: dict, metrics_path: Path, keep: int,
                    reporting: bool, outbox: str | None = None) -> None:
    """A DeepSpeed checkpoint with the step, the batch geometry and the metrics so far; the oldest beyond
    `keep` (0: all) are deleted. The reporting rank announces it on stdout; with an `outbox`, it first links the
    checkpoint's files there, and the launching task uploads them from there while training goes on."""
    import torch
    import torch.distributed as dist

    tag = f"step{step:07d}"
    engine.save_checkpoint(str(checkpoints), tag=tag, client_state={"step": step})
    dist.barrier()
    pruned = []
    if reporting:
        torch.save({"step": step, "geometry": geometry}, checkpoints / tag / "client_state.pt")
        shutil.copy(metrics_path, checkpoints / tag / "metrics.jsonl")
        if outbox is not None:  # a snapshot for the uploader: pruning below cannot take files it has not sent yet
            link_tree(checkpoints / tag, Path(outbox) / tag)
        tags = sorted(path.name for path in checkpoints.glob("step*") if path.is_dir())
        if keep:
            for old in tags[:-keep]:
                shutil.rmtree(checkpoints / old)
                pruned.append(old)
        print(json.dumps({"checkpoint": tag, "step": step, "pruned": pruned}), flush=True)
    dist.barrier()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train a causal LM with DeepSpeed from a run spec")
    parser.add_argument("--spec", required=True, help="the run spec (JSON)")
    parser.add_argument("--local_rank", type=int, default=None, help="set by DeepSpeed's launcher")
    args = parser.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    spec = json.loads(Path(args.spec).read_text())
    try:
        summary = train(spec)
    except (Diverged, IncompatibleResume) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 3 if isinstance(exc, Diverged) else 4
    if int(os.environ.get("RANK", "0")) == summary["reporting_rank"]:
        print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
