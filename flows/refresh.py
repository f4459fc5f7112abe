"""The CPT refresh (the `pretrain-pipeline/cpt-refresh` deployment, the flow with `refresh=True`): keep a
domain model current by continued pretraining on what is new in the domain sources.

    domain sources: ingest -> clean -> langid ─> dedup (against everything already used) ─> filter ─> tokens ─┐
    from the last completed run: the tokenizer, the general sources' filter and tokens (replay) ─────────┤
    from the promoted model (`eval.gate.ref`): the CPT model behind it (or the pretrained one) ──────────┴─>
        cpt -> ift -> eval -> the gate promotes on success

Only the domain sources are read again; a source whose files did not change keeps its artifact
versions (Cached). Dedup runs over the domain sources against the last completed run's dedup — whose
index chains to every earlier run — so documents already used (by pretraining or an earlier refresh)
are removed as `duplicate_of_earlier_run` and CPT trains on the new ones, with replay of the general
data the base model saw. The tokenizer is the one the model was trained with (never retrained here).
Nothing new after dedup: filter, tokens, cpt, ift and eval are not run, and the run record says so
(its `note`, each stage's `error`); fewer new domain training tokens than `refresh.min_new_tokens`
after filter and tokens: cpt, ift and eval are not run, the same way. Every artifact read without
being rebuilt is in the run record with status `reused`, so `pretrain-pipeline refresh history` can
say which data, which model and which scores each refresh had.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.states import Completed

from pipeline.artifacts import read_manifest
from pipeline.config import ConfigError
from pipeline.runs import get_ref, list_runs
from pipeline.storage import ObjectStore
from flows.dag import completed, run_later_phases, run_source_chain
from tasks.dedup import dedup_task
from tasks.filter import filter_task
from tasks.stage import RunContext, stage_result
from tasks.tokenize import tokenize_task

START = "start"  # the run record's name for the model CPT continues from


class RefreshError(RuntimeError):
    """The refresh has nothing to start from (no completed run, no model)."""


def last_completed_run(store: ObjectStore, flow: str) -> dict | None:
    """The latest completed run of the flow that built (or reused) a dedup and a tokenizer, and trained:
    a refresh that stopped untrained (`stop`) is passed over, so the documents it found stay new for
    the next one (they add up until there are `refresh.min_new_tokens`)."""
    runs = [run for run in list_runs(store) if run.get("flow") == flow and run.get("status") == "completed"
            and run["stages"].get("dedup", {}).get("version") and run["stages"].get("tokenizer", {}).get("version")
            and run["stages"].get("cpt", {}).get("status") != "not_run"]
    return max(runs, key=lambda run: run.get("finished_at") or "", default=None)


def continued_model(store: ObjectStore, ref_name: str, run: dict) -> dict:
    """The model artifact CPT continues from: the CPT model behind the one the ref points at (an IFT
    model records the CPT it started from), else the last run's CPT, else its pretrained model."""
    ref = get_ref(store, ref_name)
    manifest = read_manifest(store, ref["artifact"], ref["version"]) if ref else None
    if manifest is not None and manifest["artifact"] == "ift":
        artifact, _, version = manifest["summary"]["init"].rpartition("@")
        manifest = read_manifest(store, artifact, version)
    if manifest is not None:
        return manifest
    for name in ("cpt", "pretrain"):
        stage = run["stages"].get(name, {})
        if stage.get("version"):
            return read_manifest(store, name, stage["version"])
    raise RefreshError(f"no model to continue from: the ref {ref_name!r} is unset and run {run['run_id']} has "
                       f"no cpt or pretrain artifact")


def reuse(ctx: RunContext, states: dict[str, Any], name: str, manifest: dict | None) -> None:
    """Put a committed artifact in the run as a completed stage that was not rebuilt."""
    if manifest is None:
        raise RefreshError(f"{name}: the artifact the refresh reuses is not committed in {ctx.store.uri()}")
    result = stage_result(manifest, "reused")
    ctx.recorder.stage(name, result)
    states[name] = Completed(name="Reused", data=result, message=f"{manifest['artifact']}@{manifest['version']} reused")


def refresh_artifacts(ctx: RunContext) -> list[str]:
    """The artifacts a refresh can build (for the failure bookkeeping)."""
    domain = ctx.config.domain_sources()
    return [f"{stage}/{source}" for stage in ("ingest", "clean", "langid") for source in domain] + ["dedup"] + \
        [f"{stage}/{source}" for stage in ("filter", "tokens") for source in domain] + ["cpt", "ift", "eval"]


def run_refresh(ctx: RunContext, flow: str) -> dict[str, Any]:
    """The refresh DAG; returns the state of every stage, by artifact name."""
    config, store, logger = ctx.config, ctx.store, get_run_logger()
    if not config.cpt.enabled:
        raise ConfigError("cpt.enabled: the refresh continues pretraining on the domain sources; set it to true")
    base_run = last_completed_run(store, flow)
    if base_run is None:
        raise RefreshError(f"no completed run in {store.uri()} to refresh: run pretrain-pipeline/full first")
    logger.info("refresh: from run %s (%s); domain sources %s", base_run["run_id"], base_run["finished_at"],
                config.domain_sources())
    states: dict[str, Any] = {}
    for name in ["tokenizer", *(f"{stage}/{source}" for stage in ("filter", "tokens")
                                for source in config.general_sources())]:
        stage = base_run["stages"].get(name, {})
        reuse(ctx, states, name, read_manifest(store, name, stage["version"]) if stage.get("version") else None)
    reuse(ctx, states, START, continued_model(store, config.eval.gate.ref, base_run))

    domain = config.domain_sources()
    for source in domain:
        states.update(run_source_chain(ctx, source))
    if not completed(states, [f"langid/{source}" for source in domain]):
        return states
    states["dedup"] = dedup_task(ctx, {source: states[f"langid/{source}"].result() for source in domain},
                                 against=base_run["stages"]["dedup"]["version"], return_state=True)
    if not states["dedup"].is_completed():
        return states
    new_documents = sum(states["dedup"].result()["counts"]["sources"].get(source, {}).get("documents", 0)
                        for source in domain)
    if not new_documents:
        stop(ctx, [f"{stage}/{source}" for stage in ("filter", "tokens") for source in domain],
             f"no new domain documents since run {base_run['run_id']}: nothing to continue pretraining on")
        return states
    for source in domain:
        states[f"filter/{source}"] = filter_task(ctx, source, states["dedup"].result(), return_state=True)
        if states[f"filter/{source}"].is_completed():
            states[f"tokens/{source}"] = tokenize_task(ctx, source, states[f"filter/{source}"].result(),
                                                       states["tokenizer"].result(), return_state=True)
    if not completed(states, [f"tokens/{source}" for source in domain]):
        return states
    new_tokens = sum(states[f"tokens/{source}"].result()["counts"]["splits"]["train"]["tokens"] for source in domain)
    minimum = config.refresh.min_new_tokens
    if not new_tokens or new_tokens < minimum:
        stop(ctx, [], f"{new_tokens:,} new domain training tokens since run {base_run['run_id']}, fewer than "
                      f"refresh.min_new_tokens ({minimum:,}): not trained")
        return states
    run_later_phases(ctx, states, START)
    return states


def stop(ctx: RunContext, skipped: list[str], message: str) -> None:
    """End the refresh early, completed but not trained: the stages it does not run, and the run itself,
    say why in the run record; the flow run logs it as a warning."""
    get_run_logger().warning("refresh stops: %s", message)
    for name in [*skipped, "cpt", "ift", "eval"]:
        ctx.recorder.stage(name, {"status": "not_run", "error": message})
    ctx.recorder.note(f"not trained: {message}")


def refresh_history(store: ObjectStore, flow: str) -> list[dict]:
    """Every refresh run, oldest first: which data (the domain sources' ingest versions and the documents
    that were new after dedup), which model (cpt, ift and what CPT continued from) and which scores (the
    gate's candidate against its baseline, promoted or not)."""
    history = []
    for run in list_runs(store):
        if run.get("flow") != flow or not run.get("parameters", {}).get("refresh"):
            continue
        stages = run["stages"]
        domain = sorted(name.split("/", 1)[1] for name in stages if name.startswith("ingest/"))
        entry = {"run_id": run["run_id"], "status": run["status"], "finished_at": run.get("finished_at"),
                 "data": {source: {"ingest": stages[f"ingest/{source}"].get("version"),
                                   "new_documents": stages.get(f"filter/{source}", {}).get("counts", {}).get(
                                       "documents")} for source in domain},
                 "model": {name: stages[name].get("version") for name in ("cpt", "ift") if name in stages},
                 "continued_from": (f"{stages[START]['artifact']}@{stages[START]['version']}"
                                    if START in stages else None)}
        evaluation = stages.get("eval", {})
        manifest = read_manifest(store, "eval", evaluation["version"]) if evaluation.get("version") else None
        if manifest is not None:
            gate, metrics = manifest["summary"]["gate"], manifest["summary"]["metrics"]
            entry["scores"] = {name: {"domain_bpb": metrics[name].get("bpb domain"),
                                      "general_bpb": metrics[name].get("bpb general"),
                                      "core": metrics[name].get("CORE")}
                               for name in (gate["candidate"], gate["baseline"]) if name}
            entry["gate"] = {key: gate.get(key) for key in ("candidate_model", "baseline_model", "promote", "reason")}
        else:
            entry["note"] = run.get("note") or next((stage.get("error") for stage in stages.values()
                                                      if stage.get("error")), None)
        history.append(entry)
    return history
