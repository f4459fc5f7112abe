"""The DAG of stages, wired in order: which stage reads which, what `only` selects, and what a failed
stage keeps from running. Both flows (the whole pipeline and the CPT refresh) run their stages
through these functions; no stage logic lives here.

    per source: ingest -> clean -> langid ─┐
                                           ├─> dedup (all sources, and the index of earlier runs)
    per source: filter <───────────────────┘
                  │  └──────────────────────> tokenizer (trained on a sample of every source)
    per source: tokens <───────────────────────────┘
                  ├─────────────────────────> mixture (general sources: the global training order)
                  │                                 └──> pretrain (DeepSpeed)
                  └───── domain + replay ─────────────────> cpt (continued pretraining, from pretrain
                                                              │  or from cpt.init's checkpoint)
                                               chat JSONL ──> ift (instruction fine-tuning)
                                                              └──> eval (base vs cpt vs ift; the gate
                                                                   moves the `current` ref)
"""

from __future__ import annotations

from typing import Any

from pipeline.artifacts import STAGES
from pipeline.config import PipelineConfig
from pipeline.parallel import release_local_pools
from tasks.clean import clean_task
from tasks.cpt import cpt_task
from tasks.dedup import dedup_task
from tasks.evaluate import eval_task
from tasks.filter import filter_task
from tasks.ift import ift_task
from tasks.ingest import ingest_task
from tasks.langid import langid_task
from tasks.mixture import mixture_task
from tasks.pretrain import pretrain_task
from tasks.stage import RunContext
from tasks.tokenize import tokenize_task
from tasks.tokenizer import tokenizer_task

# In DAG order. Per-source stages write `<stage>/<source>`; dedup reads every source's langid artifact
# and writes one artifact, which every source's filter reads its own documents from.
SOURCE_STAGES = (("ingest", ingest_task), ("clean", clean_task), ("langid", langid_task))
GLOBAL_STAGES = {"dedup", "tokenizer", "mixture", "pretrain", "cpt", "ift", "eval"}


def artifact_names(config: PipelineConfig, stage: str) -> list[str]:
    return [stage] if stage in GLOBAL_STAGES else [f"{stage}/{source.name}" for source in config.sources]


def stage_names(config: PipelineConfig) -> set[str]:
    return {"all", *STAGES, *(name for stage in STAGES for name in artifact_names(config, stage))}


def downstream(config: PipelineConfig, stage: str, source: str | None) -> list[str]:
    """The artifact of `stage` (for `source`) and every artifact that reads it, directly or through others."""
    names = []
    every_source = source is None  # past a global stage, every source depends on every other
    for later in STAGES[STAGES.index(stage):]:
        if later in GLOBAL_STAGES:
            names.append(later)
            every_source = True
        elif every_source:
            names += artifact_names(config, later)
        else:
            names.append(f"{later}/{source}")
    return names


def needed(ctx: RunContext, stage: str, source: str | None) -> bool:
    """Whether `only` selects this stage or one that reads it."""
    return any(ctx.selected(name) for name in downstream(ctx.config, stage, source))


def run_source_chain(ctx: RunContext, source: str) -> dict[str, Any]:
    """ingest -> clean -> langid for one source; a failed stage stops its source's chain only."""
    states: dict[str, Any] = {}
    upstream = None
    for stage, stage_task in SOURCE_STAGES:
        if not needed(ctx, stage, source):
            break  # `only` names nothing from here on: the rest of the chain is not run
        args = (ctx, source) if upstream is None else (ctx, source, upstream)
        state = stage_task(*args, return_state=True)
        states[f"{stage}/{source}"] = state
        if not state.is_completed():
            break
        upstream = state.result()
    return states


def completed(states: dict[str, Any], names: list[str]) -> bool:
    return all(name in states and states[name].is_completed() for name in names)


def run_global(ctx: RunContext, states: dict[str, Any], stage: str, stage_task, upstream: str) -> bool:
    """Run a stage that reads every source's `upstream` artifact, once they all completed."""
    names = {source.name: f"{upstream}/{source.name}" for source in ctx.config.sources}
    if not needed(ctx, stage, None) or not completed(states, list(names.values())):
        return False
    states[stage] = stage_task(ctx, {source: states[name].result() for source, name in names.items()},
                               return_state=True)
    return states[stage].is_completed()


def run_per_source(ctx: RunContext, states: dict[str, Any], stage: str, stage_task, *upstream: str) -> None:
    """Run a per-source stage for every source, reading its own `<upstream>/<source>` (or a global one)."""
    for source in ctx.config.sources:
        names = [name if name in GLOBAL_STAGES else f"{name}/{source.name}" for name in upstream]
        if needed(ctx, stage, source.name) and completed(states, names):
            states[f"{stage}/{source.name}"] = stage_task(ctx, source.name, *(states[n].result() for n in names),
                                                          return_state=True)


def run_pipeline(ctx: RunContext) -> dict[str, Any]:
    """Every stage in DAG order; returns the Prefect state of each stage that ran, by artifact name."""
    states: dict[str, Any] = {}
    for source in ctx.config.sources:
        states.update(run_source_chain(ctx, source.name))
    if run_global(ctx, states, "dedup", dedup_task, "langid"):
        run_per_source(ctx, states, "filter", filter_task, "dedup")
    if run_global(ctx, states, "tokenizer", tokenizer_task, "filter"):
        run_per_source(ctx, states, "tokens", tokenize_task, "filter", "tokenizer")
    release_local_pools()  # the data stages are done: their workers' memory goes to training
    config = ctx.config
    external_base = config.base_checkpoint() is not None  # the user's checkpoint: no pretraining
    if not external_base and run_global(ctx, states, "mixture", mixture_task, "tokens") and \
            needed(ctx, "pretrain", None):
        general = {source: states[f"tokens/{source}"].result() for source in config.general_sources()}
        states["pretrain"] = pretrain_task(ctx, states["mixture"].result(), states["tokenizer"].result(), general,
                                           return_state=True)
    run_later_phases(ctx, states, None if external_base else "pretrain")
    return states


def run_later_phases(ctx: RunContext, states: dict[str, Any], base: str | None) -> None:
    """cpt -> ift -> eval, each when enabled and what it reads completed. `base` names the state of the
    model artifact CPT (or IFT, with CPT off) starts from (None: the user's checkpoint, cpt.init or ift.init)."""
    release_local_pools()  # the data stages are done: their workers' memory goes to training
    config = ctx.config
    tokens = {source.name: f"tokens/{source.name}" for source in config.sources}

    def result(name: str | None) -> dict | None:
        return states[name].result() if name in states and states[name].is_completed() else None

    if not completed(states, list(tokens.values())):
        return
    models = {"base": base}
    if config.cpt.enabled and needed(ctx, "cpt", None) and (base is None or completed(states, [base])):
        states["cpt"] = cpt_task(ctx, result(base), {s: result(n) for s, n in tokens.items()},
                                 result("tokenizer"), return_state=True)
    if config.cpt.enabled:
        models["cpt"] = "cpt"
    last = "cpt" if config.cpt.enabled else base
    if config.ift.enabled and needed(ctx, "ift", None) and (last is None or completed(states, [last])):
        states["ift"] = ift_task(ctx, result(last), result("tokenizer"), return_state=True)
    if config.ift.enabled:
        models["ift"] = "ift"
    wanted = [name for name in models.values() if name]
    if config.eval.enabled and needed(ctx, "eval", None) and completed(states, wanted):
        filters = {source.name: result(f"filter/{source.name}") for source in config.sources}
        states["eval"] = eval_task(ctx, {phase: result(name) for phase, name in models.items()},
                                   {s: result(n) for s, n in tokens.items()}, filters, return_state=True)


def not_run_after(config: PipelineConfig, failed: str) -> list[str]:
    """The artifacts a failed one keeps from running."""
    stage, _, source = failed.partition("/")
    return downstream(config, stage, source or None)[1:]
