"""CPT stage: continued pretraining (`cpt`) of a model on the domain sources, with replay of general data.

1. The starting model: the `pretrain` artifact (`cpt.init: pretrain`), or the user's transformers
   checkpoint directory (local or s3://) of a supported family (tasks/checkpoints.py), checked before any
   work. A checkpoint's own tokenizer is then the run's tokenizer artifact, so the domain and replay
   sources are tokenized with it (their `tokens/<source>` versions follow that tokenizer's version).
2. The data: the train splits of the `tokens/<source>` artifacts. Domain sources (role: domain) share
   1 - `replay_fraction` of `budget_tokens` in proportion to their size; the general sources share
   `replay_fraction` with pretraining's mixture weights (replay limits catastrophic forgetting).
   `replay_fraction` bounds replay from above: when the domain data cannot fill its share (every domain
   source at `max_epochs`), the phase shrinks — fewer steps — instead of filling up with general data.
   Allocation, epoch caps and the seeded global order are the mixture stage's.
3. Training: the same trainer, from the starting weights, with a learning rate re-warmed from zero to
   `cpt.lr` and decayed by cosine to `cpt.min_lr` (a fresh optimizer: the pretraining optimizer state
   is not carried over); validation loss on the domain sources' held-out split.

Artifact: the model in its own family (hf/, as pretrain's) plus order.arrow; the manifest holds the
starting model (an artifact, or the checkpoint's files with their sha256), the plan and the mixture table.

The core (`cpt_weights`, `replay_bounded`, `run_cpt`) knows nothing of Prefect; `prepare` resolves the version
and the build, which `cpt_task` runs here or on train.work_pool (tasks/remote.py).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.artifacts import ArtifactWriter, StageSpec
from pipeline.config import CptConfig, MixtureConfig, TrainConfig
from pipeline.storage import ObjectStore

from .checkpoints import StartingModel, artifact_model, check_base_checkpoint
from .mixture import allocate, mixture_table, mixture_weights, sample_order, train_shards
from .remote import run_training_stage
from .stage import RunContext, stage_task, upstream_manifest
from .tokenizer import conventions
from .training import (TrainingJob, describe_plan, export_model, loss_summary, model_summary, plan,
                       run_training, training_data, val_shards, write_order)

STAGE = "cpt"
CODE_VERSION = "2"  # 2: any supported family from an HF directory; replay_fraction an upper bound


def check_fits(model_config: dict, tokenizer: dict, seq_len: int, where: str) -> None:
    """The tokenizer's ids and the sequences fit the model."""
    from model.families import context_length

    vocab_size = conventions(tokenizer)["vocab_size"]
    if vocab_size > model_config["vocab_size"]:
        raise ValueError(f"{where}: the tokenizer has {vocab_size} ids but the model's vocabulary is "
                         f"{model_config['vocab_size']}; tokenize with the model's own tokenizer")
    positions = context_length(model_config)
    if positions is not None and seq_len > positions:
        raise ValueError(f"{where}: tokenize.seq_len {seq_len} exceeds the model's context of {positions} positions")


def cpt_weights(domain_tokens: dict[str, int], general_weights: dict[str, float], replay: float) -> dict[str, float]:
    """Domain sources share 1 - replay by size; general sources share `replay` by pretraining's weights."""
    total = sum(domain_tokens.values())
    if not total:
        raise ValueError("cpt: the domain sources have no training tokens")
    weights = {source: (1 - replay) * tokens / total for source, tokens in domain_tokens.items()}
    weights.update({source: replay * weight for source, weight in general_weights.items()})
    return weights


def replay_bounded(allocation: dict[str, int], domain: list[str], replay: float) -> dict[str, int]:
    """Cut the general sources' sequences so they are at most `replay` of the phase (the allocation moved a
    capped domain source's share to them)."""
    domain_sequences = sum(allocation[source] for source in domain)
    general = {source: count for source, count in allocation.items() if source not in domain}
    limit = math.floor(replay / (1 - replay) * domain_sequences)
    if sum(general.values()) <= limit:
        return allocation
    from .mixture import largest_remainder

    cut = largest_remainder(limit, {source: count for source, count in general.items() if count}) if limit else {}
    return {source: allocation[source] if source in domain else cut.get(source, 0) for source in allocation}


def cpt_spec(settings: CptConfig, train: TrainConfig, mixture: MixtureConfig, start: StartingModel,
             inputs: dict[str, dict], tokenizer: dict, rebuild: str | None = None) -> StageSpec:
    return StageSpec(stage=STAGE, artifact=STAGE, code_version=CODE_VERSION,
                     config={**settings.versioned(), "train": settings.train_settings(train).versioned(),
                             "general_weights": mixture.versioned()},
                     inputs={"init": start.identity, "tokenizer": tokenizer["version"],
                             **{manifest["artifact"]: manifest["version"] for manifest in inputs.values()}},
                     rebuild=rebuild)


def run_cpt(settings: CptConfig, train: TrainConfig, mixture: MixtureConfig, store: ObjectStore, spec: StageSpec,
            start: StartingModel, domain: dict[str, dict], general: dict[str, dict], tokenizer: dict,
            progress: Callable[[str], None] = print) -> dict:
    """Mix, order, train from the starting weights, export and commit; returns the manifest."""
    started = time.monotonic()
    inputs = {**domain, **general}
    first = next(iter(inputs.values()))
    seq_len = first["summary"]["seq_len"]
    check_fits(start.config, tokenizer, seq_len, "cpt.init")
    train_tokens = {source: manifest["counts"]["splits"]["train"]["tokens"] for source, manifest in inputs.items()}
    general_weights = mixture_weights(mixture, {s: train_tokens[s] for s in general}) if general else {}
    replay = settings.replay_fraction if general else 0.0
    weights = cpt_weights({s: train_tokens[s] for s in domain}, general_weights, replay)
    available = {source: manifest["counts"]["splits"]["train"]["sequences"] for source, manifest in inputs.items()}
    wanted = math.ceil(settings.budget_tokens / seq_len)
    allocation, shortfall = allocate(wanted, available, weights, settings.max_epochs)
    allocation = replay_bounded(allocation, list(domain), replay)
    shortfall = wanted - sum(allocation.values())
    shards = train_shards(inputs)
    order = sample_order(allocation, shards, settings.seed)
    table = mixture_table(inputs, weights, allocation, seq_len)
    for row in table:
        row["role"] = "domain" if row["source"] in domain else "replay"
        progress(f"cpt: {row['source']:12} {row['role']:7} weight {row['weight']:.3f}  {row['sequences']:>8} "
                 f"sequences  {row['epochs']:.2f} epochs")
    if shortfall:
        progress(f"cpt: the domain data fills {sum(allocation[s] for s in domain)} sequences at max_epochs "
                 f"{settings.max_epochs}; replay stays at most {replay:.0%}, so the phase is {shortfall} sequences "
                 f"shorter than budget_tokens")
    phase = settings.train_settings(train)
    writer = ArtifactWriter(store, spec)
    with tempfile.TemporaryDirectory(dir=train.work_dir, prefix="cpt-") as scratch:
        work = Path(scratch)
        init = start.hf_dir(store, work)
        planned = plan(start.config, seq_len, phase, len(order))
        progress(f"cpt: starting from {start.name}; " + describe_plan(STAGE, planned, seq_len))
        order_path = write_order(order, work / "order.arrow")
        data = training_data(store, phase, shards, order_path, seq_len, conventions(tokenizer)["pad_id"],
                             val_shards(list(domain.values())), work)
        job = TrainingJob(STAGE, phase, start.config, planned["steps"], data, init=str(init))
        metrics, sync = run_training(job, store, spec.prefix, work, progress)
        files = export_model(job, writer, store, tokenizer, work, metrics, sync)
        files.append(writer.put_file("order.arrow", order_path, "order", rows=len(order)))
        described = model_summary(work / "hf")
    losses = loss_summary(STAGE, metrics, progress)
    counts = {"steps": losses["steps"], "tokens": planned["tokens"], "first_loss": losses["first_loss"],
              "last_loss": losses["last_loss"], "final_perplexity": losses["final_perplexity"],
              "domain_sequences": sum(allocation[s] for s in domain),
              "replay_sequences": sum(allocation[s] for s in general), "shortfall_sequences": shortfall}
    summary = {**planned, **described, "init": start.name, "init_lineage": start.lineage(), "seq_len": seq_len,
               "shards": shards, "table": table, "seconds": round(time.monotonic() - started, 1),
               "tokens_per_s_median": losses["tokens_per_s_median"], "mfu_median": losses["mfu_median"],
               "last_val_loss": losses.get("last_val_loss")}
    return writer.commit(files, counts, summary=summary)


def starting_model(ctx: RunContext, base_result: dict | None) -> StartingModel:
    """The model artifact `base_result` (the pretrain artifact, or in a refresh the CPT model behind the promoted
    one), else the user's checkpoint (cpt.init)."""
    if base_result is not None:
        return artifact_model(upstream_manifest(ctx, base_result))
    checkpoint = check_base_checkpoint(ctx.config, ctx.base_dir)
    if checkpoint is None:
        raise ValueError("cpt.init: pretrain, but there is no pretrain artifact to start from")
    return checkpoint


def prepare(ctx: RunContext, base_result: dict | None, tokens_results: dict[str, dict],
            tokenizer_result: dict) -> tuple[StageSpec, Callable]:
    """The version (from the starting model, every tokens artifact, the tokenizer and the config) and the build."""
    config = ctx.config
    start = starting_model(ctx, base_result)
    domain = {s: upstream_manifest(ctx, tokens_results[s]) for s in config.domain_sources()}
    general = {s: upstream_manifest(ctx, tokens_results[s]) for s in config.general_sources()}
    tokenizer = upstream_manifest(ctx, tokenizer_result)
    spec = cpt_spec(config.cpt, config.train, config.mixture, start, {**domain, **general}, tokenizer,
                    rebuild=ctx.rebuild_token(STAGE))
    return spec, lambda emit: run_cpt(config.cpt, config.train, config.mixture, ctx.store, spec, start, domain,
                                      general, tokenizer, emit)


@stage_task("cpt", "cpt")
def cpt_task(ctx: RunContext, base_result: dict | None, tokens_results: dict[str, dict],
             tokenizer_result: dict) -> Any:
    """Skip or train (`base_result`: the model artifact `cpt.init: pretrain` starts from), here or as a training
    flow run on train.work_pool (tasks/remote.py)."""
    return run_training_stage(ctx, STAGE, prepare, {"base_result": base_result, "tokens_results": tokens_results,
                                                    "tokenizer_result": tokenizer_result})
