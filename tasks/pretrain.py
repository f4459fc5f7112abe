"""Pretrain stage: the mixture's sequences -> a trained GPT (`pretrain`), trained from scratch by
model/train.py under DeepSpeed (see tasks/training.py for the launch, checkpoints and export).

The task plans the run (parameters, FLOPs ~ 6·N·D, the Chinchilla-optimal tokens) and logs the plan,
downloads the token shards the mixture's order points at and the order itself, trains, and commits
the artifact: fp32 weights (safetensors), the model config, an HF `GPT2LMHeadModel` directory (hf/)
with the tokenizer, the per-step metrics and the loss curve; the manifest holds the plan and the first
and last loss.

The core (`pretrain_spec`, `run_pretrain`) knows nothing of Prefect; `pretrain_task` is the thin task.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.artifacts import ArtifactWriter, StageSpec
from pipeline.config import TrainConfig
from pipeline.storage import ObjectStore
from prefect import task
from prefect.cache_policies import NO_CACHE

from .stage import RunContext, execute_stage, upstream_manifest
from .training import (TrainingJob, describe_plan, export_model, fetch_data, loss_summary, plan, publish_curve,
                       run_training)

STAGE = "pretrain"
CODE_VERSION = "1"


def pretrain_spec(settings: TrainConfig, model_size: dict, mixture: dict, tokenizer: dict,
                  rebuild: str | None = None) -> StageSpec:
    return StageSpec(stage=STAGE, artifact=STAGE, code_version=CODE_VERSION,
                     config={**settings.versioned(), "model_size": model_size},
                     inputs={"mixture": mixture["version"], "tokenizer": tokenizer["version"]}, rebuild=rebuild)


def run_pretrain(settings: TrainConfig, model_size: dict, store: ObjectStore, spec: StageSpec, mixture: dict,
                 tokenizer: dict, progress: Callable[[str], None] = print) -> dict:
    """Plan, fetch, train (resuming from a stored checkpoint), export and commit; returns the manifest."""
    started = time.monotonic()
    writer = ArtifactWriter(store, spec)
    vocab_size = tokenizer["counts"]["vocab_size"]
    seq_len = mixture["summary"]["seq_len"]
    planned = plan(model_size, vocab_size, seq_len, settings, mixture["counts"]["sequences"])
    progress(describe_plan(STAGE, planned, seq_len))
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="pretrain-") as scratch:
        work = Path(scratch)
        job = TrainingJob(STAGE, settings, {"vocab_size": vocab_size, **model_size}, planned["steps"],
                          fetch_data(store, mixture, work))
        metrics = run_training(job, store, spec.prefix, work, progress)
        files = export_model(job, writer, store, tokenizer, work, metrics)
    losses = loss_summary(STAGE, metrics, progress)
    counts = {"steps": losses["steps"], "tokens": planned["tokens"], "first_loss": losses["first_loss"],
              "last_loss": losses["last_loss"], "final_perplexity": losses["final_perplexity"]}
    summary = {**planned, "seconds": round(time.monotonic() - started, 1),
               "tokens_per_s_median": losses["tokens_per_s_median"],
               "table": [{"metric": k, "value": v} for k, v in counts.items()]}
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
    publish_curve(ctx.store, spec.prefix, STAGE)
    return result
