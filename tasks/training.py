"""What the training stages (pretrain, cpt, ift) share: planning, fetching token shards, launching
model/train.py under DeepSpeed in a subprocess per rank, keeping its checkpoints in the artifact store,
and exporting the result. Not a stage itself.

`train_and_export` writes the run spec (model size, local shards and order, optimisation, optional
initial weights and LoRA), launches `python -m model.train` directly (one process), through DeepSpeed's
launcher (several, or a hostfile for several nodes) or torchrun, and streams every log line into the
caller's progress function. Each checkpoint the trainer announces is uploaded into the uncommitted
artifact under checkpoints/, so a retried or rerun task downloads the latest one and resumes from it.
At the end it puts into the artifact the fp32 weights (safetensors), the model config, an HF
`GPT2LMHeadModel` directory (hf/) with the tokenizer (and, for chat models, the chat template in its
tokenizer_config.json), the per-step metrics (JSON lines) and the loss curve (PNG).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from model.sizing import chinchilla_tokens, gpt2_parameters
from model.train import free_port
from pipeline.artifacts import ArtifactWriter, fetch_verified, files_with_role, read_manifest
from pipeline.config import TrainConfig
from pipeline.storage import NotFound, ObjectStore, join_key
from pipeline.units import report_fraction, text_bar

REPO = Path(__file__).resolve().parents[1]
ORDER_SCHEMA = pa.schema([pa.field("shard", pa.uint32(), nullable=False), pa.field("row", pa.uint32(), nullable=False)])


def plan(model_size: dict[str, int], vocab_size: int, seq_len: int, settings: TrainConfig, sequences: int,
         epochs: float = 1.0) -> dict:
    """Parameters, steps, tokens, training FLOPs (~6·N·D) and the Chinchilla-optimal token count.
    `steps: auto` is `epochs` passes over `sequences`."""
    parameters = gpt2_parameters(model_size["n_layer"], model_size["d_model"], model_size["n_positions"], vocab_size)
    global_batch = settings.micro_batch * settings.grad_accum * settings.processes
    steps = settings.steps if settings.steps != "auto" else max(int(sequences * epochs // global_batch), 1)
    tokens = steps * global_batch * seq_len
    return {"parameters": parameters, "global_batch_sequences": global_batch, "steps": steps, "tokens": tokens,
            "flops": 6 * parameters * tokens, "chinchilla_tokens": chinchilla_tokens(parameters),
            "tokens_per_parameter": round(tokens / parameters, 3)}


def describe_plan(phase: str, planned: dict, seq_len: int) -> str:
    return (f"{phase} plan: {planned['parameters']:,} parameters, {planned['steps']} steps of "
            f"{planned['global_batch_sequences']} x {seq_len} tokens = {planned['tokens']:,} tokens, "
            f"{planned['flops']:.3g} FLOPs; Chinchilla-optimal: {planned['chinchilla_tokens']:,} tokens")


def write_order(order: np.ndarray, path: Path) -> Path:
    """A training order (rows of shard index, row in shard) as an Arrow IPC file."""
    with pa.ipc.new_file(str(path), ORDER_SCHEMA) as out:
        out.write_table(pa.table({"shard": order[:, 0].astype(np.uint32), "row": order[:, 1].astype(np.uint32)},
                                 schema=ORDER_SCHEMA))
    return path


def fetch_token_shards(store: ObjectStore, shards: list[dict], directory: Path) -> list[str]:
    """Download and verify the token files (each {artifact, version, path}); local paths in the same order."""
    directory.mkdir(parents=True, exist_ok=True)
    manifests: dict[tuple[str, str], dict] = {}
    paths = []
    for shard in shards:
        key = (shard["artifact"], shard["version"])
        if key not in manifests:
            manifests[key] = read_manifest(store, *key)
        [entry] = [e for e in manifests[key]["files"] if e["path"] == shard["path"]]
        path = directory / f"{shard['artifact'].replace('/', '_')}__{shard['path'].replace('/', '__')}"
        if not path.exists():
            fetch_verified(store, manifests[key], entry, directory).rename(path)
        paths.append(str(path))
    return paths


def fetch_data(store: ObjectStore, mixture: dict, work: Path) -> dict:
    """The token shards a mixture's order points at, and the order, downloaded and verified."""
    paths = fetch_token_shards(store, mixture["summary"]["shards"], work / "shards")
    [order] = list(files_with_role(mixture, "order"))
    order_path = fetch_verified(store, mixture, order, work)
    first = mixture["summary"]["shards"][0]
    return {"shards": paths, "order": str(order_path), "seq_len": mixture["summary"]["seq_len"],
            "pad_id": read_manifest(store, first["artifact"], first["version"])["summary"]["pad_id"]}


def launch_command(settings: TrainConfig, spec_path: Path, port: int) -> list[str]:
    entry = ["-m", "model.train", "--spec", str(spec_path)]
    deepspeed_entry = ["--module", "model.train", "--spec", str(spec_path)]  # its launcher's spelling of -m
    bin_dir = Path(sys.executable).parent
    if settings.hostfile:
        return [str(bin_dir / "deepspeed"), "--hostfile", settings.hostfile, "--master_port", str(port),
                *deepspeed_entry]
    launcher = settings.launcher
    if launcher == "auto":
        launcher = "direct" if settings.processes == 1 else "deepspeed"
    if launcher == "direct":
        return [sys.executable, *entry]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(settings.processes),
                "--master_addr", "127.0.0.1", "--master_port", str(port), *entry]
    return [str(bin_dir / "deepspeed"), "--num_gpus", str(settings.processes), "--master_addr", "127.0.0.1",
            "--master_port", str(port), *deepspeed_entry]


class CheckpointSync:
    """Checkpoints between the trainer's local directory and the uncommitted artifact in the store."""

    def __init__(self, store: ObjectStore, prefix: str, local: Path):
        self.store, self.prefix, self.local = store, join_key(prefix, "checkpoints"), local

    def upload(self, tag: str) -> None:
        for path in sorted((self.local / tag).rglob("*")):
            if path.is_file():
                self.store.put_file(join_key(self.prefix, tag, path.relative_to(self.local / tag).as_posix()), path)
        self.store.put_bytes(join_key(self.prefix, "latest"), tag.encode())  # written last: the tag is complete

    def restore(self) -> str | None:
        """Download the latest uploaded checkpoint (if an earlier attempt left one); returns its tag."""
        try:
            tag = self.store.get_bytes(join_key(self.prefix, "latest")).decode().strip()
        except NotFound:
            return None
        for key in self.store.list(join_key(self.prefix, tag) + "/"):
            target = self.local / tag / key[len(join_key(self.prefix, tag)) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.store.download(key, target)
        (self.local / "latest").write_text(tag)
        return tag


def loss_curve(metrics: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    axis.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], linewidth=1.2)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)


@dataclass(frozen=True)
class TrainingJob:
    """One training run: `phase` names it in logs (pretrain, cpt, ift)."""

    phase: str
    settings: TrainConfig
    model: dict          # GPTConfig fields, vocab_size included
    steps: int
    data: dict           # shards, order, seq_len, pad_id (local paths)
    init: str | None = None   # safetensors weights to start from
    lora: dict | None = None  # rank, alpha, dropout, targets

    def run_spec(self, work: Path) -> dict:
        train = self.settings.model_dump(mode="json", include={
            "micro_batch", "grad_accum", "lr", "min_lr", "warmup_steps", "weight_decay", "betas", "eps", "clip",
            "precision", "zero_stage", "seed", "checkpoint_every", "log_every", "peak_tflops", "accelerator"})
        train["steps"] = self.steps
        return {"model": self.model, "data": self.data, "train": train, "resume": True, "init": self.init,
                "lora": self.lora,
                "out": {"metrics": str(work / "metrics.jsonl"), "checkpoints": str(work / "checkpoints"),
                        "weights": str(work / "model.safetensors")}}


def run_training(job: TrainingJob, store: ObjectStore, prefix: str, work: Path,
                 progress: Callable[[str], None]) -> list[dict]:
    """Train (resuming from a checkpoint stored under `prefix` by an earlier attempt); the metrics."""
    sync = CheckpointSync(store, prefix, work / "checkpoints")
    (work / "checkpoints").mkdir(exist_ok=True)
    if (tag := sync.restore()) is not None:
        progress(f"{job.phase}: resuming from the stored checkpoint {tag}")
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(job.run_spec(work)))
    env = {**os.environ, "DS_ACCELERATOR": job.settings.accelerator, "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": str(job.settings.threads_per_process), "PYTHONUNBUFFERED": "1"}
    command = launch_command(job.settings, spec_path, free_port())
    progress(f"{job.phase}: " + " ".join(command))
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-40:]
        if line.startswith('{"checkpoint"'):
            sync.upload(json.loads(line)["checkpoint"])
            progress(f"{job.phase}: checkpoint {json.loads(line)['checkpoint']} stored")
        elif line.startswith('{"step"'):
            step = json.loads(line)["step"]
            progress(f"{job.phase}: {text_bar(step, job.steps)} step {step}/{job.steps} {line}")
            report_fraction(progress, step / job.steps)
        elif line.startswith(("{", "resumed", "error")) or "Traceback" in line:
            progress(line)
    if process.wait() != 0:
        raise RuntimeError(f"{job.phase}: training failed (exit {process.returncode}); last output:\n" + "\n".join(tail))
    return [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]


def export_model(job: TrainingJob, writer: ArtifactWriter, store: ObjectStore, tokenizer: dict, work: Path,
                 metrics: list[dict], chat_template: str | None = None) -> list[dict]:
    """Weights, config, metrics, loss curve and the HF directory (with the tokenizer) into the artifact."""
    from model.export import export_hf, load_weights
    from model.gpt import GPT, GPTConfig

    curve = work / "loss_curve.png"
    loss_curve(metrics, curve, f"{job.phase} loss")
    config = GPTConfig(**job.model)
    model = load_weights(GPT(config), work / "model.safetensors")
    specials = tokenizer["counts"]["special_token_ids"]
    hf = export_hf(model, work / "hf", eos_id=specials[tokenizer["config"]["eos_token"]],
                   pad_id=specials[tokenizer["config"]["pad_token"]])
    for entry in files_with_role(tokenizer, "tokenizer"):
        shutil.copy(fetch_verified(store, tokenizer, entry, work), hf / entry["path"])
    if chat_template is not None:
        tokenizer_config = json.loads((hf / "tokenizer_config.json").read_text())
        tokenizer_config["chat_template"] = chat_template
        (hf / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    (work / "model_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    files = [writer.put_file("model.safetensors", work / "model.safetensors", "weights"),
             writer.put_file("model_config.json", work / "model_config.json", "config"),
             writer.put_file("metrics.jsonl", work / "metrics.jsonl", "metrics"),
             writer.put_file("loss_curve.png", curve, "plot")]
    return files + [writer.put_file(f"hf/{path.name}", path, "hf") for path in sorted(hf.iterdir()) if path.is_file()]


def loss_summary(phase: str, metrics: list[dict], progress: Callable[[str], None]) -> dict:
    first, last = metrics[0], metrics[-1]
    progress(f"{phase}: loss {first['loss']:.3f} -> {last['loss']:.3f} over {last['step']} steps "
             f"(final perplexity {last['perplexity']:.1f})")
    return {"steps": last["step"], "first_loss": first["loss"], "last_loss": last["loss"],
            "final_perplexity": last["perplexity"],
            "tokens_per_s_median": sorted(m["tokens_per_s"] for m in metrics)[len(metrics) // 2]}


def fetch_model(store: ObjectStore, manifest: dict, directory: Path) -> tuple[Path, dict]:
    """A model artifact's weights (safetensors) and its GPTConfig fields."""
    [weights] = list(files_with_role(manifest, "weights"))
    [config] = list(files_with_role(manifest, "config"))
    directory.mkdir(parents=True, exist_ok=True)
    path = fetch_verified(store, manifest, weights, directory)
    return path, json.loads(fetch_verified(store, manifest, config, directory).read_text())


def publish_curve(store: ObjectStore, prefix: str, phase: str) -> None:
    """The loss curve in the Prefect UI (a link to the PNG in the artifact store)."""
    from prefect.artifacts import create_image_artifact

    link = store.http_link(join_key(prefix, "loss_curve.png"))
    if link:
        create_image_artifact(image_url=link, key=f"{phase}-loss-curve", description=f"{phase} loss per step")
