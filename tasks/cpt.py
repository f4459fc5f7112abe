"""CPT stage: continued pretraining (`cpt`) of a model on the domain sources, with replay of general data.

1. The starting model: the `pretrain` artifact (`cpt.init: pretrain`), or any GPT-2-format checkpoint
   directory (an HF GPT-2 one, or one of our model artifacts downloaded): its size and vocabulary come
   from its config; the tokenizer must fit its vocabulary and `tokenize.seq_len` its positions.
2. The data: the train splits of the same `tokens/<source>` artifacts pretraining reads. Domain
   sources (role: domain) share 1 - `replay_fraction` of `budget_tokens` in proportion to their size;
   the general sources share `replay_fraction` with pretraining's mixture weights (replay limits
   catastrophic forgetting). Allocation, epoch caps and the seeded global order are the mixture stage's.
3. Training: the same trainer, from the starting weights, with a learning rate re-warmed from zero to
   `cpt.lr` and decayed by cosine to `cpt.min_lr` (a fresh optimizer: the pretraining optimizer state
   is not carried over).

Artifact: the model (as pretrain's: weights, config, hf/, metrics, loss curve) plus order.arrow; the
manifest holds the starting model, the plan and the mixture table.

The core (`cpt_weights`, `resolve_init`, `run_cpt`) knows nothing of Prefect; `cpt_task` is the thin task.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.artifacts import ArtifactWriter, StageSpec, sha256_file
from pipeline.config import CptConfig, MixtureConfig, TrainConfig
from pipeline.storage import ObjectStore
from prefect import task
from prefect.cache_policies import NO_CACHE

from .mixture import allocate, mixture_table, mixture_weights, sample_order, train_shards
from .stage import RunContext, execute_stage, upstream_manifest
from .training import (TrainingJob, describe_plan, export_model, fetch_model, fetch_token_shards, loss_summary, plan,
                       publish_curve, run_training, write_order)

STAGE = "cpt"
CODE_VERSION = "1"


@dataclass(frozen=True)
class StartingModel:
    """Where a phase starts: a model artifact, or a checkpoint directory on disk."""

    name: str                   # e.g. pretrain@<version>, or the directory
    identity: str               # what the version depends on: an artifact version or the files' sha256
    manifest: dict | None = None
    directory: Path | None = None

    def fetch(self, store: ObjectStore, work: Path) -> tuple[Path, dict]:
        """(safetensors weights, GPTConfig fields) in `work`."""
        if self.manifest is not None:
            return fetch_model(store, self.manifest, work / "init")
        from model.export import load_checkpoint, save_weights

        model = load_checkpoint(self.directory)
        path = work / "init.safetensors"
        save_weights(model, path)
        return path, model.config.to_dict()


def artifact_model(manifest: dict) -> StartingModel:
    return StartingModel(f"{manifest['artifact']}@{manifest['version']}", manifest["version"], manifest=manifest)


def resolve_init(reference: str, pretrain: dict | None, base_dir: Path) -> StartingModel:
    """`cpt.init` -> the starting model; `pretrain` is the model artifact `cpt.init: pretrain` means (the
    pretrain artifact, or in a refresh the CPT model behind the promoted one)."""
    if reference == "pretrain":
        if pretrain is None:
            raise ValueError("cpt.init: pretrain, but there is no pretrain artifact to start from")
        return artifact_model(pretrain)
    directory = Path(reference) if Path(reference).is_absolute() else base_dir / reference
    files = sorted(path for path in directory.glob("*")
                   if path.name in ("config.json", "model_config.json", "model.safetensors", "pytorch_model.bin"))
    if not files:
        raise ValueError(f"cpt.init: {reference!r} is neither `pretrain` nor a GPT-2 checkpoint directory "
                         f"(config.json or model_config.json, and model.safetensors) in {directory}")
    identity = ",".join(f"{path.name}:{sha256_file(path)}" for path in files)
    return StartingModel(str(directory), identity, directory=directory)


def check_fits(model: dict, vocab_size: int, seq_len: int, where: str) -> None:
    if vocab_size > model["vocab_size"]:
        raise ValueError(f"{where}: the tokenizer has {vocab_size} ids but the model's vocabulary is "
                         f"{model['vocab_size']}; tokenize with the model's own tokenizer (tokenizer.path)")
    if seq_len > model["n_positions"]:
        raise ValueError(f"{where}: tokenize.seq_len {seq_len} exceeds the model's n_positions {model['n_positions']}")


def cpt_weights(domain_tokens: dict[str, int], general_weights: dict[str, float], replay: float) -> dict[str, float]:
    """Domain sources share 1 - replay by size; general sources share `replay` by pretraining's weights."""
    total = sum(domain_tokens.values())
    if not total:
        raise ValueError("cpt: the domain sources have no training tokens")
    weights = {source: (1 - replay) * tokens / total for source, tokens in domain_tokens.items()}
    weights.update({source: replay * weight for source, weight in general_weights.items()})
    return weights


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
    seq_len, vocab_size = first["summary"]["seq_len"], first["summary"]["vocab_size"]
    train_tokens = {source: manifest["counts"]["splits"]["train"]["tokens"] for source, manifest in inputs.items()}
    general_weights = mixture_weights(mixture, {s: train_tokens[s] for s in general}) if general else {}
    replay = settings.replay_fraction if general else 0.0
    weights = cpt_weights({s: train_tokens[s] for s in domain}, general_weights, replay)
    available = {source: manifest["counts"]["splits"]["train"]["sequences"] for source, manifest in inputs.items()}
    allocation, shortfall = allocate(math.ceil(settings.budget_tokens / seq_len), available, weights,
                                     settings.max_epochs)
    shards = train_shards(inputs)
    order = sample_order(allocation, shards, settings.seed)
    table = mixture_table(inputs, weights, allocation, seq_len)
    for row in table:
        row["role"] = "domain" if row["source"] in domain else "replay"
        progress(f"cpt: {row['source']:12} {row['role']:7} weight {row['weight']:.3f}  {row['sequences']:>8} "
                 f"sequences  {row['epochs']:.2f} epochs")
    phase = settings.train_settings(train)
    writer = ArtifactWriter(store, spec)
    with tempfile.TemporaryDirectory(dir=train.work_dir, prefix="cpt-") as scratch:
        work = Path(scratch)
        weights_path, model = start.fetch(store, work)
        check_fits(model, vocab_size, seq_len, "cpt.init")
        planned = plan({k: model[k] for k in ("n_layer", "d_model", "n_positions")}, model["vocab_size"], seq_len,
                       phase, len(order))
        progress(f"cpt: starting from {start.name}; " + describe_plan(STAGE, planned, seq_len))
        order_path = write_order(order, work / "order.arrow")
        data = {"shards": fetch_token_shards(store, shards, work / "shards"), "order": str(order_path),
                "seq_len": seq_len, "pad_id": first["summary"]["pad_id"]}
        job = TrainingJob(STAGE, phase, model, planned["steps"], data, init=str(weights_path))
        metrics = run_training(job, store, spec.prefix, work, progress)
        files = export_model(job, writer, store, tokenizer, work, metrics)
        files.append(writer.put_file("order.arrow", order_path, "order", rows=len(order)))
    losses = loss_summary(STAGE, metrics, progress)
    counts = {"steps": losses["steps"], "tokens": planned["tokens"], "first_loss": losses["first_loss"],
              "last_loss": losses["last_loss"], "final_perplexity": losses["final_perplexity"],
              "domain_sequences": sum(allocation[s] for s in domain),
              "replay_sequences": sum(allocation[s] for s in general), "shortfall_sequences": shortfall}
    summary = {**planned, "init": start.name, "seq_len": seq_len, "shards": shards, "table": table,
               "seconds": round(time.monotonic() - started, 1), "tokens_per_s_median": losses["tokens_per_s_median"]}
    return writer.commit(files, counts, summary=summary)


def starting_model(ctx: RunContext, base_result: dict | None) -> StartingModel:
    base = upstream_manifest(ctx, base_result) if base_result is not None else None
    return resolve_init(ctx.config.cpt.init, base, ctx.base_dir)


@task(name="cpt", task_run_name="cpt", cache_policy=NO_CACHE, persist_result=False)
def cpt_task(ctx: RunContext, base_result: dict | None, tokens_results: dict[str, dict],
             tokenizer_result: dict) -> Any:
    """Resolve the version from the starting model (`base_result`: the model artifact `cpt.init: pretrain`
    starts from), every tokens artifact, the tokenizer and the config; skip or train."""
    config = ctx.config
    start = starting_model(ctx, base_result)
    domain = {s: upstream_manifest(ctx, tokens_results[s]) for s in config.domain_sources()}
    general = {s: upstream_manifest(ctx, tokens_results[s]) for s in config.general_sources()}
    tokenizer = upstream_manifest(ctx, tokenizer_result)
    spec = cpt_spec(config.cpt, config.train, config.mixture, start, {**domain, **general}, tokenizer,
                    rebuild=ctx.rebuild_token(STAGE))
    result = execute_stage(ctx, spec, lambda emit: run_cpt(config.cpt, config.train, config.mixture, ctx.store, spec,
                                                           start, domain, general, tokenizer, emit))
    publish_curve(ctx.store, spec.prefix, STAGE)
    return result
