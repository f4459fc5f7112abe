"""Mixture stage: how many training sequences come from each source, and the exact global order the
trainer reads (`mixture`, one artifact over the `tokens/<source>` of every source with role general).

1. Weights: `mixture.weights` per source (GPT-3 Table 2.2 style), or with `method: temperature` a
   weight proportional to the source's size (train tokens) to the power `alpha`.
2. Budget: `budget_tokens`, or `chinchilla`: tokens_per_parameter x the parameters of the configured
   model (its family and size, the tokenizer's vocabulary); in sequences: ceil(budget / seq_len).
3. Allocation: sequences per source in proportion to the weights (largest remainders, so the total is
   exact), each source capped at `max_epochs` passes over its data; what a capped source cannot take
   goes to the others by weight; if every source is capped the shortfall is reported.
4. Sampling: a source needing k of its n sequences takes floor(k/n) full passes plus a seeded random
   subset of k mod n; all sampled sequences of all sources are then put in one seeded global
   permutation — no shard's data arrives in one block — written as `order.arrow` (shard index, row):
   an index over the token shards, not a copy of them.
5. Rehydration (optional, `rehydration.enabled`, FineWeb-2's upsampling): each train sequence counts
   `rehydration.weights[cluster size]` times, the cluster size being the `minhash_cluster_size` of the
   document with the most tokens in it (the tokens stage's `cluster_sizes/`). A source's available
   sequences are then its rehydrated ones (max_epochs counts passes over them), and a full pass
   holds every sequence as often as its weight.

Manifest: `shards` (index -> source, tokens artifact and version, path, sequences), the table per
source (tokens available, weight, sequences and tokens sampled, epochs, capped) in counts and summary.

The core (`mixture_weights`, `allocate`, `sample_order`, `run_mixture`) knows nothing of Prefect;
`mixture_task` is the thin task.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq

from model.families import hf_config_dict
from model.sizing import chinchilla_tokens, count_parameters
from pipeline.artifacts import ArtifactWriter, StageSpec, fetch_verified, files_with_role
from pipeline.config import MixtureConfig
from pipeline.storage import ObjectStore

from .stage import RunContext, execute_stage, stage_task, upstream_manifest
from .training import write_order

STAGE = "mixture"
CODE_VERSION = "1"


def mixture_weights(settings: MixtureConfig, tokens: dict[str, int]) -> dict[str, float]:
    """Normalised weights per source (sources without data weigh 0)."""
    if settings.method == "temperature":
        raw = {source: float(count) ** settings.alpha if count else 0.0 for source, count in tokens.items()}
    elif settings.weights:
        raw = {source: settings.weights.get(source, 0.0) if tokens[source] else 0.0 for source in tokens}
    else:
        raw = {source: 1.0 if count else 0.0 for source, count in tokens.items()}
    total = sum(raw.values())
    if not total:
        raise ValueError("mixture: no source with a positive weight has training data")
    return {source: value / total for source, value in raw.items()}


def largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Integers proportional to the weights that add up to `total` exactly (ties: source order)."""
    norm = sum(weights.values())
    exact = {source: total * weight / norm for source, weight in weights.items()}
    shares = {source: math.floor(value) for source, value in exact.items()}
    left = total - sum(shares.values())
    order = sorted(weights, key=lambda source: -(exact[source] - shares[source]))
    for source in order[:left]:
        shares[source] += 1
    return shares


def allocate(total: int, available: dict[str, int], weights: dict[str, float],
             max_epochs: float) -> tuple[dict[str, int], int]:
    """(sequences per source, shortfall): by weight, no source beyond max_epochs passes over its data."""
    cap = {source: math.floor(max_epochs * count) for source, count in available.items()}
    allocation = {source: 0 for source in available}
    active = {source: weight for source, weight in weights.items() if weight > 0 and available[source] > 0}
    remaining = total
    while active and remaining > 0:
        shares = largest_remainder(remaining, active)
        over = [source for source in active if allocation[source] + shares[source] > cap[source]]
        if not over:
            for source, share in shares.items():
                allocation[source] += share
            remaining = 0
            break
        for source in over:
            remaining -= cap[source] - allocation[source]
            allocation[source] = cap[source]
            del active[source]
    return allocation, remaining


def sample_indices(wanted: int, available: int, rng: np.random.Generator) -> np.ndarray:
    """floor(wanted/available) full passes, then a random subset without repeats for the rest."""
    passes, rest = divmod(wanted, available)
    subset = np.sort(rng.choice(available, size=rest, replace=False)) if rest else np.zeros(0, dtype=np.int64)
    return np.concatenate([np.tile(np.arange(available), passes), subset]).astype(np.int64)


def sample_order(allocation: dict[str, int], shards: list[dict], seed: int,
                 repeats: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """The global training order: rows (shard index, row in shard), every source's sample permuted together.
    `repeats` (rehydration) gives, per shard index, how often each of its rows counts in a full pass."""
    parts = []
    for source_index, (source, wanted) in enumerate(allocation.items()):
        mine = [(index, shard["sequences"]) for index, shard in enumerate(shards) if shard["source"] == source]
        if not wanted or not mine:
            continue
        offsets = np.cumsum([0] + [rows for _, rows in mine])
        rng = np.random.default_rng([seed, source_index])
        if repeats is None:
            picked = sample_indices(wanted, int(offsets[-1]), rng)
        else:  # a pass over the rehydrated pool: each row as often as its weight
            pool = np.concatenate([np.repeat(np.arange(offsets[k], offsets[k + 1]), repeats[index])
                                   for k, (index, _) in enumerate(mine)])
            picked = pool[sample_indices(wanted, len(pool), rng)] if len(pool) else np.zeros(0, dtype=np.int64)
        where = np.searchsorted(offsets, picked, side="right") - 1
        shard_ids = np.array([index for index, _ in mine], dtype=np.int64)[where]
        parts.append(np.stack([shard_ids, picked - offsets[where]], axis=1))
    if not parts:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.concatenate(parts)
    return order[np.random.default_rng(seed).permutation(len(order))]


def train_shards(inputs: dict[str, dict]) -> list[dict]:
    """Every train-split file of the tokens artifacts, in source then path order: the shard index."""
    return [{"source": source, "artifact": manifest["artifact"], "version": manifest["version"],
             "path": entry["path"], "sequences": entry["sequences"]}
            for source, manifest in inputs.items()
            for entry in sorted(files_with_role(manifest, "tokens"), key=lambda e: e["path"])
            if entry["split"] == "train"]


def rehydration_weights(weights: dict[int, int], sizes: np.ndarray) -> np.ndarray:
    """The times each cluster size counts: the weight of the largest size in `weights` not above it."""
    limits = np.array(sorted(weights), dtype=np.int64)
    times = np.array([weights[limit] for limit in sorted(weights)], dtype=np.int64)
    return times[np.searchsorted(limits, np.maximum(sizes, 1), side="right") - 1]


def rehydration_repeats(settings: MixtureConfig, store: ObjectStore, inputs: dict[str, dict],
                        shards: list[dict], scratch: Path) -> dict[int, np.ndarray]:
    """Per shard index, each train row's weight from the cluster size the tokens stage recorded for it."""
    sizes: dict[tuple[str, str], np.ndarray] = {}  # (source, unit) -> cluster size of every train row
    for source, manifest in inputs.items():
        entries = files_with_role(manifest, "cluster_sizes")
        if not entries and manifest["counts"]["splits"]["train"]["sequences"]:
            raise ValueError(f"mixture.rehydration: {manifest['artifact']}@{manifest['version']} records no cluster "
                             f"sizes (built before rehydration existed); rebuild it with --force tokens")
        for entry in entries:
            path = fetch_verified(store, manifest, entry, scratch)
            sizes[(source, entry["unit"])] = pq.read_table(path).column(0).to_numpy()
            path.unlink()
    repeats, position = {}, {}
    for index, shard in enumerate(shards):  # a unit's train files hold its rows in path order
        unit = Path(shard["path"]).name.rsplit("-", 1)[0]
        start = position.get((shard["source"], unit), 0)
        rows = sizes[(shard["source"], unit)][start:start + shard["sequences"]]
        position[(shard["source"], unit)] = start + shard["sequences"]
        repeats[index] = rehydration_weights(settings.rehydration.weights, rows)
    return repeats


def budget(settings: MixtureConfig, model_size: dict, vocab_size: int) -> tuple[int, dict]:
    """(training tokens, how they were chosen)."""
    parameters = count_parameters(hf_config_dict(model_size, vocab_size, eos_id=0, pad_id=None))
    plan = {"parameters": parameters, "chinchilla_tokens": chinchilla_tokens(parameters, settings.tokens_per_parameter)}
    if settings.budget_tokens == "chinchilla":
        return plan["chinchilla_tokens"], {**plan, "budget": "chinchilla"}
    return int(settings.budget_tokens), {**plan, "budget": "budget_tokens"}


def mixture_table(inputs: dict[str, dict], weights: dict[str, float], allocation: dict[str, int],
                  seq_len: int) -> list[dict]:
    rows = []
    for source, manifest in inputs.items():
        available = manifest["counts"]["splits"]["train"]["sequences"]
        sampled = allocation.get(source, 0)
        rows.append({"source": source, "tokens_available": manifest["counts"]["splits"]["train"]["tokens"],
                     "sequences_available": available, "weight": round(weights[source], 4),
                     "sequences": sampled, "tokens": sampled * seq_len,
                     "epochs": round(sampled / available, 3) if available else 0.0})
    return rows


def mixture_spec(settings: MixtureConfig, inputs: dict[str, dict], model_size: dict[str, int],
                 rebuild: str | None = None) -> StageSpec:
    return StageSpec(stage=STAGE, artifact=STAGE, code_version=CODE_VERSION,
                     config={**settings.versioned(), "model_size": model_size},
                     inputs={manifest["artifact"]: manifest["version"] for manifest in inputs.values()}, rebuild=rebuild)


def run_mixture(settings: MixtureConfig, store: ObjectStore, spec: StageSpec, inputs: dict[str, dict],
                model_size: dict[str, int], progress: Callable[[str], None] = print) -> dict:
    """Weigh, allocate, sample and order; commit the mixture artifact; returns the manifest."""
    started = time.monotonic()
    first = next(iter(inputs.values()))
    seq_len, vocab_size = first["summary"]["seq_len"], first["summary"]["vocab_size"]
    weights = mixture_weights(settings, {s: m["counts"]["splits"]["train"]["tokens"] for s, m in inputs.items()})
    tokens, plan = budget(settings, model_size, vocab_size)
    available = {source: manifest["counts"]["splits"]["train"]["sequences"] for source, manifest in inputs.items()}
    shards = train_shards(inputs)
    repeats = None
    if settings.rehydration.enabled:
        with tempfile.TemporaryDirectory(prefix="mixture-") as scratch:
            repeats = rehydration_repeats(settings, store, inputs, shards, Path(scratch))
        available = {source: int(sum(repeats[index].sum() for index, shard in enumerate(shards)
                                     if shard["source"] == source)) for source in inputs}
    allocation, shortfall = allocate(math.ceil(tokens / seq_len), available, weights, settings.max_epochs)
    order = sample_order(allocation, shards, settings.seed, repeats)
    table = mixture_table(inputs, weights, allocation, seq_len)
    for row in table:
        if repeats is not None:  # epochs count passes over the rehydrated data
            row["sequences_rehydrated"] = available[row["source"]]
            row["epochs"] = round(row["sequences"] / available[row["source"]], 3) if available[row["source"]] else 0.0
        row["capped"] = row["sequences"] >= math.floor(settings.max_epochs * available[row["source"]]) > 0
        progress(f"mixture: {row['source']:12} weight {row['weight']:.3f}  {row['sequences']:>8} sequences  "
                 f"{row['epochs']:.2f} epochs{'  (capped)' if row['capped'] else ''}")
    writer = ArtifactWriter(store, spec)
    with tempfile.TemporaryDirectory(prefix="mixture-") as scratch:
        path = write_order(order, Path(scratch) / "order.arrow")
        files = [writer.put_file("order.arrow", path, "order", rows=len(order))]
    counts = {"sequences": int(len(order)), "tokens": int(len(order)) * seq_len, "shortfall_sequences": shortfall,
              "sources": {row["source"]: {k: v for k, v in row.items() if k != "source"} for row in table}}
    summary = {"seq_len": seq_len, "budget_tokens": tokens, **plan, "shards": shards, "table": table,
               "seconds": round(time.monotonic() - started, 3)}
    if shortfall:
        progress(f"mixture: every source reached max_epochs {settings.max_epochs}; {shortfall} sequences of the "
                 f"budget are not sampled")
    return writer.commit(files, counts, summary=summary)


@stage_task("mixture", "mixture")
def mixture_task(ctx: RunContext, tokens_results: dict[str, dict]) -> Any:
    """Resolve the version from every tokens artifact, the model size and the config; skip or build."""
    general = ctx.config.general_sources()  # domain sources are read by continued pretraining (cpt)
    inputs = {source: upstream_manifest(ctx, result) for source, result in tokens_results.items() if source in general}
    settings = ctx.config.mixture
    model_size = ctx.config.model.size()
    spec = mixture_spec(settings, inputs, model_size, rebuild=ctx.rebuild_token(STAGE))
    return execute_stage(ctx, spec, lambda emit: run_mixture(settings, ctx.store, spec, inputs, model_size, emit))
