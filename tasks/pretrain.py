"""Pretrain stage: the mixture's sequences -> a model trained from scratch (`pretrain`) of the configured
family (model.family: llama or gpt2, transformers' own classes) by model/train.py under DeepSpeed (see
tasks/training.py for the launch, checkpoints and export).

The task plans the run (parameters, FLOPs with attention, the Chinchilla-optimal tokens) and logs the
plan, downloads the token shards the mixture's order points at, the order itself and the general sources'
validation shards (the validation loss every `train.eval_every` steps), trains, and commits the artifact:
an HF directory (hf/: config.json, fp32 model.safetensors, the tokenizer, generation_config.json) that
AutoModelForCausalLM loads, the per-step metrics, the loss curve and the kept checkpoints; the manifest
holds the model config, the plan and the first and last loss.

The core (`pretrain_spec`, `run_pretrain`) knows nothing of Prefect; `prepare` resolves the version and the
build from the upstream results, which `pretrain_task` runs here or on train.work_pool (tasks/remote.py).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.artifacts import ArtifactWriter, StageSpec
from pipeline.config import TrainConfig
from pipeline.storage import ObjectStore

from model.families import hf_config_dict

from .remote import run_training_stage
from .stage import RunContext, stage_task, upstream_manifest
from .tokenizer import conventions
from .training import (TrainingJob, describe_plan, export_model, fetch_data, loss_summary, model_summary, plan,
                       run_training, val_shards)

STAGE = "pretrain"
CODE_VERSION = "2"  # 2: transformers model classes, the HF directory is the model


def model_config(model_size: dict, tokenizer: dict) -> dict:
    """The transformers config of the model pretraining builds: the configured size on the tokenizer's ids."""
    found = conventions(tokenizer)
    return hf_config_dict(model_size, found["vocab_size"], found["eos_id"], found["pad_id"], found["bos_id"])


def pretrain_spec(settings: TrainConfig, model_size: dict, mixture: dict, tokenizer: dict,
                  rebuild: str | None = None) -> StageSpec:
    return StageSpec(stage=STAGE, artifact=STAGE, code_version=CODE_VERSION,
                     config={**settings.versioned(), "model_size": model_size},
                     inputs={"mixture": mixture["version"], "tokenizer": tokenizer["version"]}, rebuild=rebuild)


def run_pretrain(settings: TrainConfig, model_size: dict, store: ObjectStore, spec: StageSpec, mixture: dict,
                 tokenizer: dict, progress: Callable[[str], None] = print, validation: list[dict] | None = None) -> dict:
    """Plan, fetch, train (resuming from a stored checkpoint), export and commit; returns the manifest.
    `validation`: the general sources' tokens manifests whose val split the validation loss reads."""
    started = time.monotonic()
    writer = ArtifactWriter(store, spec)
    seq_len = mixture["summary"]["seq_len"]
    config = model_config(model_size, tokenizer)
    planned = plan(config, seq_len, settings, mixture["counts"]["sequences"])
    progress(describe_plan(STAGE, planned, seq_len))
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="pretrain-") as scratch:
        work = Path(scratch)
        job = TrainingJob(STAGE, settings, config, planned["steps"],
                          fetch_data(store, mixture, work, val_shards(validation or []), settings))
        metrics, sync = run_training(job, store, spec.prefix, work, progress)
        files = export_model(job, writer, store, tokenizer, work, metrics, sync)
        described = model_summary(work / "hf")
    losses = loss_summary(STAGE, metrics, progress)
    counts = {"steps": losses["steps"], "tokens": planned["tokens"], "first_loss": losses["first_loss"],
              "last_loss": losses["last_loss"], "final_perplexity": losses["final_perplexity"]}
    summary = {**planned, **described, "seconds": round(time.monotonic() - started, 1),
               "tokens_per_s_median": losses["tokens_per_s_median"], "mfu_median": losses["mfu_median"],
               "last_val_loss": losses.get("last_val_loss"),
               "table": [{"metric": k, "value": v} for k, v in counts.items()]}
    return writer.commit(files, counts, summary=summary)


def prepare(ctx: RunContext, mixture_result: dict, tokenizer_result: dict,
            tokens_results: dict[str, dict] | None = None) -> tuple[StageSpec, Callable]:
    """The version (from the mixture, the tokenizer, the model size and the config) and the build."""
    mixture = upstream_manifest(ctx, mixture_result)
    tokenizer = upstream_manifest(ctx, tokenizer_result)
    validation = [upstream_manifest(ctx, result) for result in (tokens_results or {}).values()]
    settings = ctx.config.train
    model_size = ctx.config.model.size()
    spec = pretrain_spec(settings, model_size, mixture, tokenizer, rebuild=ctx.rebuild_token(STAGE))
    return spec, lambda emit: run_pretrain(settings, model_size, ctx.store, spec, mixture, tokenizer, emit, validation)


@stage_task("pretrain", "pretrain")
def pretrain_task(ctx: RunContext, mixture_result: dict, tokenizer_result: dict,
                  tokens_results: dict[str, dict] | None = None) -> Any:
    """Skip or train, here or as a training flow run on train.work_pool (tasks/remote.py)."""
    return run_training_stage(ctx, STAGE, prepare, {"mixture_result": mixture_result,
                                                     "tokenizer_result": tokenizer_result,
                                                     "tokens_results": tokens_results})
