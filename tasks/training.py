"""What the training stages (pretrain, cpt, ift) share: planning, pointing the trainer at its token shards,
launching model/train.py under DeepSpeed in a subprocess per rank, keeping its checkpoints in the artifact
store, and exporting the result. Not a stage itself.

`training_data` gives the run spec's data: with `train.stream` the shards' keys, sizes and sha256 and the
store's non-secret settings (each rank streams them through a bounded cache, model/streaming.py); otherwise
the shards downloaded and verified before launch. `run_training` writes the run spec (the model's
transformers config or starting checkpoint, the data, optimisation, optional LoRA), launches
`python -m model.train` directly (one process), through DeepSpeed's launcher (several, or a hostfile for
several nodes) or torchrun (one node, or node 0 of a c10d rendezvous whose other nodes
run `pretrain-pipeline train-node`: model/launch.py), and streams every log line into the caller's progress function. Each
checkpoint the trainer announces is uploaded into the uncommitted artifact under checkpoints/ (with the
metrics so far) by a background thread while training goes on, and the ones it pruned are deleted there,
so a retried or rerun task downloads the latest one and resumes from it with its whole history.

`export_model` puts into the artifact the HF directory the trainer wrote (hf/: config.json and fp32
model.safetensors of the model's own family) completed with the tokenizer, the generation config (which
ids end a generation: end-of-text, and the end of an assistant turn for chat models) and the chat
template; plus the per-step metrics (JSON lines), the loss curve (PNG) and the kept checkpoints' files.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from model.launch import (finish_launch, job_id_from_env, loopback_store, node_environment, torchrun_command,
                          write_launch)
from model.sizing import chinchilla_tokens, count_parameters, flops_per_token
from model.train import free_port
from pipeline.artifacts import (ArtifactWriter, artifact_prefix, fetch_verified, files_with_role, read_manifest,
                                sha256_file)
from pipeline.config import TrainConfig
from pipeline.storage import NotFound, ObjectStore, join_key
from pipeline.storage.remote import READER, reader_settings
from pipeline.units import report_fraction, text_bar

REPO = Path(__file__).resolve().parents[1]
ORDER_SCHEMA = pa.schema([pa.field("shard", pa.uint32(), nullable=False), pa.field("row", pa.uint32(), nullable=False)])
# The spec's training settings: everything of train: the trainer reads (the rest is the launcher's).
TRAINER_SETTINGS = {"micro_batch", "grad_accum", "lr", "min_lr", "warmup_steps", "weight_decay", "betas", "eps", "clip",
                    "precision", "zero_stage", "seed", "checkpoint_every", "keep_checkpoints", "eval_every",
                    "eval_sequences", "log_every", "peak_tflops", "accelerator"}


def plan(model_config: dict, seq_len: int, settings: TrainConfig, sequences: int, epochs: float = 1.0) -> dict:
    """Parameters, steps, tokens, training FLOPs (attention included, model/sizing.py) and the Chinchilla-optimal
    token count of a run over `sequences` (`steps: auto` is `epochs` passes over them)."""
    parameters = count_parameters(model_config)
    global_batch = settings.micro_batch * settings.grad_accum * settings.processes
    steps = settings.steps if settings.steps != "auto" else max(int(sequences * epochs // global_batch), 1)
    tokens = steps * global_batch * seq_len
    per_token = flops_per_token(model_config, seq_len)
    return {"family": model_config["model_type"], "parameters": parameters, "global_batch_sequences": global_batch,
            "steps": steps, "tokens": tokens, "flops_per_token": per_token, "flops": per_token * tokens,
            "chinchilla_tokens": chinchilla_tokens(parameters), "tokens_per_parameter": round(tokens / parameters, 3)}


def describe_plan(phase: str, planned: dict, seq_len: int) -> str:
    return (f"{phase} plan: {planned['family']}, {planned['parameters']:,} parameters, {planned['steps']} steps of "
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


def val_shards(tokens: list[dict]) -> list[dict]:
    """The validation-split token files of some `tokens/<source>` manifests, as {artifact, version, path}."""
    return [{"artifact": manifest["artifact"], "version": manifest["version"], "path": entry["path"]}
            for manifest in tokens for entry in files_with_role(manifest, "tokens")
            if entry.get("split") == "val" and entry.get("sequences")]


def shard_entries(store: ObjectStore, shards: list[dict]) -> list[dict]:
    """Where the token files (each {artifact, version, path}) are in the store, with their manifest's size,
    sha256 and sequences: what the streaming loader reads and checks."""
    manifests: dict[tuple[str, str], dict] = {}
    entries = []
    for shard in shards:
        key = (shard["artifact"], shard["version"])
        if key not in manifests:
            manifests[key] = read_manifest(store, *key)
        [entry] = [e for e in manifests[key]["files"] if e["path"] == shard["path"]]
        entries.append({"key": join_key(artifact_prefix(*key), entry["path"]), "bytes": entry["bytes"],
                        "sha256": entry["sha256"], "sequences": entry.get("sequences", 0)})
    return entries


def training_data(store: ObjectStore, settings: TrainConfig, shards: list[dict], order_path: Path, seq_len: int,
                  pad_id: int, validation: list[dict], work: Path) -> dict:
    """The run spec's data: with `train.stream`, where the shards are in the store (each rank reads them while
    training, through a cache of `train.cache_gb`); otherwise the shards downloaded and verified now."""
    data = {"order": str(order_path), "seq_len": seq_len, "pad_id": pad_id}
    if not settings.stream:
        return {**data, "shards": fetch_token_shards(store, shards, work / "shards"),
                "val_shards": fetch_token_shards(store, validation, work / "val")}
    entries, val_entries = shard_entries(store, shards), shard_entries(store, validation)
    limit = int(settings.cache_gb * 1e9)
    largest = max(entries + val_entries, key=lambda entry: entry["bytes"])
    if largest["bytes"] > limit:
        raise ValueError(f"train.cache_gb {settings.cache_gb:g} is smaller than the token shard {largest['key']} "
                         f"({largest['bytes'] / 1e9:.3g} GB): raise it, or lower tokenize.shard_max_sequences")
    return {**data, "stream": {"reader": READER, "store": reader_settings(store), "shards": entries,
                               "val_shards": val_entries, "cache_dir": str(work / "cache"), "cache_bytes": limit}}


def fetch_data(store: ObjectStore, mixture: dict, work: Path, validation: list[dict] | None = None,
               settings: TrainConfig | None = None) -> dict:
    """The data of a mixture's order for the run spec: the order downloaded, the token shards it points at and
    the validation shards streamed or downloaded (`train.stream`)."""
    [order] = list(files_with_role(mixture, "order"))
    order_path = fetch_verified(store, mixture, order, work)
    first = mixture["summary"]["shards"][0]
    pad_id = read_manifest(store, first["artifact"], first["version"])["summary"]["pad_id"]
    return training_data(store, settings or TrainConfig(stream=False), mixture["summary"]["shards"], order_path,
                         mixture["summary"]["seq_len"], pad_id, validation or [], work)


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


@contextmanager
def launched(job: "TrainingJob", spec_path: Path, env: dict[str, str]) -> Iterator[tuple[list[str], dict[str, str]]]:
    """The command and environment that start this node's ranks. With train.nodes > 1 this node is node 0 of a
    torchrun rendezvous: a launch file in the shared work_dir tells the other nodes' `train-node` to join
    (model/launch.py), and is marked finished when the block ends."""
    settings = job.settings
    if settings.nodes == 1:
        yield launch_command(settings, spec_path, free_port()), env
        return
    launch = {"phase": job.phase, "nodes": settings.nodes, "nproc_per_node": settings.processes // settings.nodes,
              "rdzv_endpoint": settings.rdzv_endpoint, "spec": str(spec_path),
              "env": {"DS_ACCELERATOR": settings.accelerator, "OMP_NUM_THREADS": str(settings.threads_per_process)}}
    path = write_launch(settings.work_dir, job_id_from_env(), launch)
    try:
        with loopback_store(settings.rdzv_endpoint):
            yield torchrun_command(json.loads(path.read_text())), node_environment(launch, 0, env)
    finally:
        finish_launch(path)


class CheckpointSync:
    """Checkpoints between the trainer's local directory and the uncommitted artifact in the store."""

    def __init__(self, store: ObjectStore, prefix: str, local: Path):
        self.store, self.prefix, self.local = store, join_key(prefix, "checkpoints"), local

    def upload(self, tag: str, pruned: list[str] = (), source: Path | None = None) -> None:
        """The checkpoint's files (from `source`, default the local checkpoint), then `latest`, then the pruned
        ones deleted."""
        source = source or self.local / tag
        for path in sorted(source.rglob("*")):
            if path.is_file():
                self.store.put_file(join_key(self.prefix, tag, path.relative_to(source).as_posix()), path)
        self.store.put_bytes(join_key(self.prefix, "latest"), tag.encode())  # written last: the tag is complete
        for old in pruned:  # after `latest` moved on: a crash in between leaves an extra checkpoint, never none
            for key in list(self.store.list(join_key(self.prefix, old) + "/")):
                self.store.delete(key)

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

    def entries(self) -> list[dict]:
        """Manifest entries of the checkpoint files kept in the artifact (from the local copies)."""
        entries = []
        for tag in sorted(path.name for path in self.local.glob("step*") if path.is_dir()):
            for path in sorted((self.local / tag).rglob("*")):
                if path.is_file() and self.store.exists(join_key(self.prefix, tag, path.relative_to(self.local / tag)
                                                                  .as_posix())):
                    entries.append({"path": f"checkpoints/{tag}/{path.relative_to(self.local / tag).as_posix()}",
                                    "role": "checkpoint", "bytes": path.stat().st_size, "sha256": sha256_file(path),
                                    "tag": tag})
        return entries


class CheckpointUploader:
    """Uploads the checkpoints the trainer announces on a background thread, one after the other in the order
    announced, while training goes on; each from the outbox snapshot the trainer linked (removed once sent)."""

    def __init__(self, sync: CheckpointSync, outbox: Path):
        self.sync, self.outbox = sync, outbox
        self.pending: queue.Queue = queue.Queue()
        self.stored: queue.Queue = queue.Queue()  # tags sent, for the log (the caller reports them)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="checkpoint-upload", daemon=True)
        self.thread.start()

    def submit(self, announced: dict) -> None:
        self.pending.put(announced)

    def _run(self) -> None:
        while (announced := self.pending.get()) is not None:
            if self.error is not None:
                continue  # after a failure nothing later is sent: `latest` never points past a missing tag
            tag = announced["checkpoint"]
            try:
                self.sync.upload(tag, announced.get("pruned", []), source=self.outbox / tag)
                shutil.rmtree(self.outbox / tag, ignore_errors=True)
                self.stored.put(tag)
            except BaseException as exc:  # noqa: BLE001 - raised by finish()
                self.error = exc

    def drain(self) -> list[str]:
        """Tags stored since the last call."""
        tags = []
        while not self.stored.empty():
            tags.append(self.stored.get())
        return tags

    def finish(self) -> list[str]:
        """Wait until everything announced is stored; the tags stored since the last drain."""
        self.pending.put(None)
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"a checkpoint upload failed: {self.error}") from self.error
        return self.drain()


def loss_curve(metrics: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    axis.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], linewidth=1.2, label="training loss")
    validation = [m for m in metrics if "val_loss" in m]
    if validation:
        axis.plot([m["step"] for m in validation], [m["val_loss"] for m in validation], "o-", linewidth=1.2,
                  label="validation loss")
        axis.legend()
    axis.set_xlabel("step")
    axis.set_ylabel("loss (nats per token)")
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
    model_config: dict   # the transformers config (with model_type) of the model trained
    steps: int
    data: dict           # order, seq_len, pad_id; shards and val_shards (local paths) or stream (training_data)
    init: str | None = None   # a local HF directory to start from (else: initialised from model_config)
    lora: dict | None = None  # rank, alpha, dropout, targets

    def run_spec(self, work: Path) -> dict:
        train = self.settings.model_dump(mode="json", include=TRAINER_SETTINGS)
        train["steps"] = self.steps
        return {"model": {"config": self.model_config, "init": self.init}, "data": self.data, "train": train,
                "resume": True, "lora": self.lora,
                "out": {"metrics": str(work / "metrics.jsonl"), "checkpoints": str(work / "checkpoints"),
                        "outbox": str(work / "outbox"), "export": str(work / "hf")}}


def run_training(job: TrainingJob, store: ObjectStore, prefix: str, work: Path,
                 progress: Callable[[str], None]) -> tuple[list[dict], CheckpointSync]:
    """Train (resuming from a checkpoint stored under `prefix` by an earlier attempt); the metrics of every step.
    Each checkpoint is uploaded as soon as the trainer announces it, while the next steps run."""
    sync = CheckpointSync(store, prefix, work / "checkpoints")
    (work / "checkpoints").mkdir(exist_ok=True)
    if (tag := sync.restore()) is not None:
        progress(f"{job.phase}: resuming from the stored checkpoint {tag}")
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(job.run_spec(work)))
    env = {**os.environ, "DS_ACCELERATOR": job.settings.accelerator, "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": str(job.settings.threads_per_process), "PYTHONUNBUFFERED": "1"}
    with launched(job, spec_path, env) as (command, env):
        progress(f"{job.phase}: " + " ".join(command))
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        uploader = CheckpointUploader(sync, work / "outbox")
        try:
            tail, errors = follow_trainer(job, process, uploader, progress)
        finally:
            for tag in uploader.finish():  # what was announced is stored, even when the trainer failed (a retry resumes)
                progress(f"{job.phase}: checkpoint {tag} stored")
        process.wait()
    if process.returncode != 0:
        if errors:  # the trainer's own one-line reason (divergence, an incompatible resume)
            raise RuntimeError(f"{job.phase}: {errors[-1]}")
        raise RuntimeError(f"{job.phase}: training failed (exit {process.returncode}); last output:\n" + "\n".join(tail))
    metrics = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    return metrics, sync


def follow_trainer(job: TrainingJob, process: subprocess.Popen, uploader: CheckpointUploader,
                   progress: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """The trainer's output into `progress` (steps as a bar), its checkpoints to the uploader; (the last lines,
    the trainer's one-line errors: kept apart, since a launcher's report on the failed ranks can be longer
    than the tail)."""
    tail: list[str] = []
    errors: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-40:]
        if line.startswith("error: "):
            errors.append(line.removeprefix("error: "))
        for tag in uploader.drain():
            progress(f"{job.phase}: checkpoint {tag} stored")
        if line.startswith('{"checkpoint"'):
            uploader.submit(json.loads(line))
        elif line.startswith('{"step"'):
            step = json.loads(line)["step"]
            progress(f"{job.phase}: {text_bar(step, job.steps)} step {step}/{job.steps} {line}")
            report_fraction(progress, step / job.steps)
        elif line.startswith(("{", "resumed", "error")) or "Traceback" in line:
            progress(line)
    return tail, errors


def tokenizer_files(store: ObjectStore, tokenizer: dict, directory: Path) -> None:
    """The tokenizer artifact's files that transformers reads, into an HF directory."""
    (directory / ".download").mkdir(parents=True, exist_ok=True)
    for entry in files_with_role(tokenizer, "tokenizer"):
        shutil.copy(fetch_verified(store, tokenizer, entry, directory / ".download"), directory / entry["path"])
    shutil.rmtree(directory / ".download", ignore_errors=True)


def complete_hf_dir(directory: Path, store: ObjectStore, tokenizer: dict, model_config: dict,
                    chat_template: str | None = None, end_of_turn_id: int | None = None) -> None:
    """Tokenizer, chat template and generation config beside the trainer's config.json and weights."""
    from transformers import GenerationConfig

    from .tokenizer import conventions

    tokenizer_files(store, tokenizer, directory)
    if chat_template is not None:  # both places: transformers 5 reads chat_template.jinja, 4.x the config field
        (directory / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
        config_path = directory / "tokenizer_config.json"
        tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
        tokenizer_config["chat_template"] = chat_template
        config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False), encoding="utf-8")
    found = conventions(tokenizer)
    stops = [found["eos_id"]] + ([end_of_turn_id] if end_of_turn_id is not None and end_of_turn_id != found["eos_id"]
                                 else [])
    GenerationConfig(bos_token_id=found["bos_id"] if found["bos_id"] is not None else found["eos_id"],
                     eos_token_id=stops if len(stops) > 1 else stops[0],
                     pad_token_id=found["pad_id"]).save_pretrained(str(directory))


def export_model(job: TrainingJob, writer: ArtifactWriter, store: ObjectStore, tokenizer: dict, work: Path,
                 metrics: list[dict], sync: CheckpointSync, chat_template: str | None = None,
                 end_of_turn_id: int | None = None) -> list[dict]:
    """The HF directory (completed with the tokenizer), metrics, loss curve and kept checkpoints into the artifact."""
    hf = work / "hf"
    complete_hf_dir(hf, store, tokenizer, job.model_config, chat_template, end_of_turn_id)
    curve = work / "loss_curve.png"
    loss_curve(metrics, curve, f"{job.phase} loss")
    (work / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in metrics))
    files = [writer.put_file("metrics.jsonl", work / "metrics.jsonl", "metrics"),
             writer.put_file("loss_curve.png", curve, "plot")]
    files += [writer.put_file(f"hf/{path.name}", path, "hf") for path in sorted(hf.iterdir()) if path.is_file()]
    return files + sync.entries()


def model_summary(hf: Path) -> dict:
    """What a model artifact's manifest says of the model: its transformers config (its family and size)."""
    return {"model_config": json.loads((hf / "config.json").read_text()), "hf_dtype": "float32"}


def loss_summary(phase: str, metrics: list[dict], progress: Callable[[str], None]) -> dict:
    first, last = metrics[0], metrics[-1]
    validation = [m for m in metrics if "val_loss" in m]
    progress(f"{phase}: loss {first['loss']:.3f} -> {last['loss']:.3f} over {last['step']} steps "
             f"(final perplexity {last['perplexity']:.1f})" +
             (f"; validation loss {validation[0]['val_loss']:.3f} -> {validation[-1]['val_loss']:.3f}" if validation else ""))
    summary = {"steps": last["step"], "first_loss": first["loss"], "last_loss": last["loss"],
               "final_perplexity": last["perplexity"],
               "tokens_per_s_median": sorted(m["tokens_per_s"] for m in metrics)[len(metrics) // 2],
               "mfu_median": sorted(m.get("mfu") or 0.0 for m in metrics)[len(metrics) // 2]}
    if validation:
        summary["last_val_loss"] = validation[-1]["val_loss"]
    return summary


def publish_curve(store: ObjectStore, prefix: str, phase: str) -> None:
    """The loss curve in the Prefect UI (a link to the PNG in the artifact store)."""
    from prefect.artifacts import create_image_artifact

    link = store.http_link(join_key(prefix, "loss_curve.png"))
    if link:
        create_image_artifact(image_url=link, key=f"{phase}-loss-curve", description=f"{phase} loss per step")
