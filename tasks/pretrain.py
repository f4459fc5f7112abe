"""Pretrain stage: the mixture's sequences -> a trained GPT (`pretrain`), trained by model/train.py under
DeepSpeed in a subprocess per rank.

The task plans the run (parameters, FLOPs ~ 6·N·D, the Chinchilla-optimal tokens) and logs the plan;
downloads the token shards the mixture's order points at and the order itself; writes the run spec;
launches `python -m model.train` directly (one process), through DeepSpeed's launcher (several, or a
hostfile for several nodes) or torchrun; and streams every log line into the Prefect run. Each
checkpoint the trainer announces is uploaded into the uncommitted artifact under checkpoints/, so a
retried or rerun task downloads the latest one and resumes from it. At the end the artifact holds the
fp32 weights (safetensors), the tokenizer, the model config, an HF `GPT2LMHeadModel` directory (hf/),
the per-step metrics (JSON lines) and the loss curve (PNG), and the manifest the plan and the first and
last loss.

The core (`plan`, `run_spec`, `launch_command`, `run_pretrain`) knows nothing of Prefect; `pretrain_task`
is the thin task.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from model.sizing import chinchilla_tokens, gpt2_parameters
from model.train import free_port
from pipeline.artifacts import ArtifactWriter, StageSpec, artifact_prefix, fetch_verified, files_with_role, read_manifest
from pipeline.config import TrainConfig
from pipeline.storage import NotFound, ObjectStore, join_key
from prefect import task
from prefect.cache_policies import NO_CACHE

from .stage import RunContext, execute_stage, upstream_manifest

STAGE = "pretrain"
CODE_VERSION = "1"
REPO = Path(__file__).resolve().parents[1]


def plan(model_size: dict[str, int], vocab_size: int, seq_len: int, settings: TrainConfig, sequences: int) -> dict:
    """Parameters, steps, tokens, training FLOPs (~6·N·D) and the Chinchilla-optimal token count."""
    parameters = gpt2_parameters(model_size["n_layer"], model_size["d_model"], model_size["n_positions"], vocab_size)
    global_batch = settings.micro_batch * settings.grad_accum * settings.processes
    steps = settings.steps if settings.steps != "auto" else max(sequences // global_batch, 1)
    tokens = steps * global_batch * seq_len
    return {"parameters": parameters, "global_batch_sequences": global_batch, "steps": steps, "tokens": tokens,
            "flops": 6 * parameters * tokens, "chinchilla_tokens": chinchilla_tokens(parameters),
            "tokens_per_parameter": round(tokens / parameters, 3)}


def run_spec(model_size: dict[str, int], vocab_size: int, settings: TrainConfig, steps: int, data: dict,
             work: Path) -> dict:
    train = settings.model_dump(mode="json", include={
        "micro_batch", "grad_accum", "lr", "min_lr", "warmup_steps", "weight_decay", "betas", "eps", "clip",
        "precision", "zero_stage", "seed", "checkpoint_every", "log_every", "peak_tflops"})
    train["steps"] = steps
    return {"model": {"vocab_size": vocab_size, **model_size}, "data": data, "train": train, "resume": True,
            "out": {"metrics": str(work / "metrics.jsonl"), "checkpoints": str(work / "checkpoints"),
                    "weights": str(work / "model.safetensors")}}


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


def fetch_data(store: ObjectStore, mixture: dict, work: Path) -> dict:
    """The token shards the order points at, and the order, downloaded and verified."""
    shards_dir = work / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    paths, manifests = [], {}
    for shard in mixture["summary"]["shards"]:
        key = (shard["artifact"], shard["version"])
        if key not in manifests:
            manifests[key] = read_manifest(store, *key)
        [entry] = [e for e in manifests[key]["files"] if e["path"] == shard["path"]]
        path = shards_dir / f"{shard['artifact'].replace('/', '_')}__{shard['path'].replace('/', '__')}"
        if not path.exists():
            fetch_verified(store, manifests[key], entry, shards_dir).rename(path)
        paths.append(str(path))
    [order] = list(files_with_role(mixture, "order"))
    order_path = fetch_verified(store, mixture, order, work)
    first = next(iter(manifests.values()))
    return {"shards": paths, "order": str(order_path), "seq_len": mixture["summary"]["seq_len"],
            "pad_id": first["summary"]["pad_id"]}


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


def loss_curve(metrics: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    axis.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], linewidth=1.2)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.set_title("pretraining loss")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)


def pretrain_spec(settings: TrainConfig, model_size: dict, mixture: dict, tokenizer: dict,
                  rebuild: str | None = None) -> StageSpec:
    return StageSpec(stage=STAGE, artifact=STAGE, code_version=CODE_VERSION,
                     config={**settings.versioned(), "model_size": model_size},
                     inputs={"mixture": mixture["version"], "tokenizer": tokenizer["version"]}, rebuild=rebuild)


def run_pretrain(settings: TrainConfig, model_size: dict, store: ObjectStore, spec: StageSpec, mixture: dict,
                 tokenizer: dict, progress: Callable[[str], None] = print) -> dict:
    """Plan, fetch, train (resuming from a stored checkpoint), export and commit; returns the manifest."""
    from model.export import export_hf, load_weights
    from model.gpt import GPT, GPTConfig

    started = time.monotonic()
    writer = ArtifactWriter(store, spec)
    vocab_size = tokenizer["counts"]["vocab_size"]
    seq_len = mixture["summary"]["seq_len"]
    planned = plan(model_size, vocab_size, seq_len, settings, mixture["counts"]["sequences"])
    progress(f"pretrain plan: {planned['parameters']:,} parameters, {planned['steps']} steps of "
             f"{planned['global_batch_sequences']} x {seq_len} tokens = {planned['tokens']:,} tokens, "
             f"{planned['flops']:.3g} FLOPs; Chinchilla-optimal: {planned['chinchilla_tokens']:,} tokens")
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="pretrain-") as scratch:
        work = Path(scratch)
        data = fetch_data(store, mixture, work)
        sync = CheckpointSync(store, spec.prefix, work / "checkpoints")
        (work / "checkpoints").mkdir()
        if (tag := sync.restore()) is not None:
            progress(f"pretrain: resuming from the stored checkpoint {tag}")
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(run_spec(model_size, vocab_size, settings, planned["steps"], data, work)))
        env = {**os.environ, "DS_ACCELERATOR": settings.accelerator, "PYTHONPATH": str(REPO),
               "OMP_NUM_THREADS": str(settings.threads_per_process), "PYTHONUNBUFFERED": "1"}
        command = launch_command(settings, spec_path, free_port())
        progress("pretrain: " + " ".join(command))
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        tail: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-40:]
            if line.startswith('{"checkpoint"'):
                sync.upload(json.loads(line)["checkpoint"])
                progress(f"pretrain: checkpoint {json.loads(line)['checkpoint']} stored")
            elif line.startswith(("{", "resumed", "error")) or "Traceback" in line:
                progress(line)
        if process.wait() != 0:
            raise RuntimeError(f"training failed (exit {process.returncode}); last output:\n" + "\n".join(tail))
        metrics = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
        curve = work / "loss_curve.png"
        loss_curve(metrics, curve)
        config = GPTConfig(vocab_size=vocab_size, **model_size)
        model = load_weights(GPT(config), work / "model.safetensors")
        specials = tokenizer["counts"]["special_token_ids"]
        hf = export_hf(model, work / "hf", eos_id=specials[tokenizer["config"]["eos_token"]],
                       pad_id=specials[tokenizer["config"]["pad_token"]])
        for entry in files_with_role(tokenizer, "tokenizer"):
            shutil.copy(fetch_verified(store, tokenizer, entry, work), hf / entry["path"])
        (work / "model_config.json").write_text(json.dumps(config.to_dict(), indent=2))
        files = [writer.put_file("model.safetensors", work / "model.safetensors", "weights"),
                 writer.put_file("model_config.json", work / "model_config.json", "config"),
                 writer.put_file("metrics.jsonl", work / "metrics.jsonl", "metrics"),
                 writer.put_file("loss_curve.png", curve, "plot")]
        files += [writer.put_file(f"hf/{path.name}", path, "hf") for path in sorted(hf.iterdir()) if path.is_file()]
    first, last = metrics[0], metrics[-1]
    counts = {"steps": last["step"], "tokens": planned["tokens"], "first_loss": first["loss"],
              "last_loss": last["loss"], "final_perplexity": last["perplexity"]}
    summary = {**planned, "seconds": round(time.monotonic() - started, 1),
               "tokens_per_s_median": sorted(m["tokens_per_s"] for m in metrics)[len(metrics) // 2],
               "table": [{"metric": k, "value": v} for k, v in counts.items()]}
    progress(f"pretrain: loss {first['loss']:.3f} -> {last['loss']:.3f} over {last['step']} steps "
             f"(final perplexity {last['perplexity']:.1f})")
    return writer.commit(files, counts, summary=summary)


@task(name="pretrain", task_run_name="pretrain", cache_policy=NO_CACHE, persist_result=False)
def pretrain_task(ctx: RunContext, mixture_result: dict, tokenizer_result: dict) -> Any:
    """Resolve the version from the mixture, the tokenizer, the model size and the config; skip or train."""
    mixture = upstream_manifest(ctx, mixture_result)
    tokenizer = upstream_manifest(ctx, tokenizer_result)
    settings = ctx.config.train
    model_size = ctx.config.model.size()
    spec = pretrain_spec(settings, model_size, mixture, tokenizer, rebuild=ctx.rebuild_token(STAGE))
    result = execute_stage(ctx, spec, lambda emit: run_pretrain(settings, model_size, ctx.store, spec, mixture,
                                                                tokenizer, emit))
    publish_curve(ctx, spec)
    return result


def publish_curve(ctx: RunContext, spec: StageSpec) -> None:
    """The loss curve in the Prefect UI (a link to the PNG in the artifact store)."""
    from prefect.artifacts import create_image_artifact

    link = ctx.store.http_link(join_key(artifact_prefix(spec.artifact, spec.version), "loss_curve.png"))
    if link:
        create_image_artifact(image_url=link, key="pretrain-loss-curve", description="pretraining loss per step")
