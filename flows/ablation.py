"""The `ablation` Prefect flow (deployment `pretrain-pipeline/ablation`, CLI `pretrain-pipeline ablate`):
data recipes compared with small proxy models under one fixed budget and one fixed yardstick.

    recipes.yaml ─ load_ablation + recipe_config of every recipe and seed (all validated before any work)
      base config (base + base_overrides): ingest .. filter, tokenizer ──> heldout (the fixed held-out set)
                                                                   └──> the fixed tokenizer.json
      per recipe:  ingest .. tokens, mixture (tokenizer.path = the fixed one; unchanged stages Cached)
        per seed:  pretrain (the proxy model) ──> proxy-eval (held-out bpb, perplexity, the tasks)
      ──> ablation (results.json, report.md, plot.png; the table and the plot in the UI)

Every stage goes through the DAG machinery (flows/dag.py, tasks/stage.py): a stage's version is a hash
of its config and inputs, so a stage two recipes share executes once and is Cached for the other, and a
rerun of the same ablation is Cached from end to end. The run record (runs/<run id>.json) lists every
stage under `<scope>:<artifact>` — scope `_base` for the base config's stages, the recipe's name for its
data stages, `<recipe>/seed<N>` for its proxy model and scores — with its version and whether it was
executed or Cached.

The tokenizer is fixed: the base config's trained tokenizer, handed to every recipe as `tokenizer.path`
(a recipe that changed the filters would otherwise train another one). The held-out set is fixed: see
tasks/heldout.py. No stage logic lives here.

Parameters:
  recipes_path  the recipe file (ablations/sample.yaml)
  overrides     dotted keys applied to the base config of every recipe (e.g. storage.prefix), as
                the recipe file's base_overrides
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.dag import run_pipeline
from pipeline.artifacts import fetch_verified, files_with_role, read_manifest
from pipeline.config import PIPELINE_STAGES, PipelineConfig
from pipeline.parallel import cluster_session
from pipeline.recipes import Ablation, Recipe, check_base_key, load_ablation, recipe_config
from pipeline.runs import RunRecorder
from pipeline.storage import ObjectStore, open_store
from tasks.ablation import ablation_task
from tasks.heldout import heldout_task
from tasks.pretrain import pretrain_task
from tasks.proxy_eval import proxy_eval_task
from tasks.stage import RunContext

# The Prefect flow shares the project's flow name, so that its deployment is `pretrain-pipeline/ablation`
# (a deployment is named <flow>/<deployment>); its run records say flow: ablation.
PREFECT_FLOW = "pretrain-pipeline"
FLOW_NAME = "ablation"
BASE_SCOPE = "_base"  # never a recipe's name (those start with a letter or digit)
DATA_STAGES = frozenset(PIPELINE_STAGES[: PIPELINE_STAGES.index("mixture") + 1])
BASE_STAGES = frozenset({*PIPELINE_STAGES[: PIPELINE_STAGES.index("tokenizer") + 1], "heldout", "ablation"})
DATA_COST_STAGES = ("ingest", "clean", "langid", "dedup", "filter", "tokenizer", "tokens", "mixture")


class AblationFailed(RuntimeError):
    """A stage of the ablation failed; the run record says which and why."""


@dataclass(frozen=True)
class Plan:
    """A validated ablation: the recipe file, the base config, every recipe's config per seed, the held-out settings."""

    ablation: Ablation
    base: PipelineConfig
    configs: dict[tuple[str, int], PipelineConfig]
    held_out: dict

    @property
    def base_dir(self) -> Path:
        return Path(self.ablation.base_config).resolve().parent


def plan_ablation(recipes_path: str | Path, overrides: dict[str, Any] | None = None) -> Plan:
    """Load and validate the recipe file and every (recipe, seed) config; raises RecipeError naming the file,
    the recipe and the key before any work. `overrides` join the file's base_overrides (checked alike)."""
    ablation = load_ablation(recipes_path)
    if overrides:
        for key in overrides:
            check_base_key(ablation.path, key)
        ablation = dataclasses.replace(ablation, base_overrides={**ablation.base_overrides, **overrides})
    base = recipe_config(ablation, Recipe(BASE_SCOPE, {}), ablation.seeds[0])
    configs = {(recipe.name, seed): recipe_config(ablation, recipe, seed)
               for recipe in ablation.recipes for seed in ablation.seeds}
    return Plan(ablation, base, configs, dict(ablation.held_out))


def preflight_ablation(recipes_path: str | Path, overrides: dict[str, Any] | None = None) -> Plan:
    """What `pretrain-pipeline ablate` checks before the flow starts: the recipe file and every recipe's config
    (plan_ablation), and that every source any recipe reads exists and can be read."""
    from pipeline.sources import check_location

    plan = plan_ablation(recipes_path, overrides)
    checked = set()
    for config in [plan.base, *plan.configs.values()]:
        for source in config.sources:
            if source.location not in checked:
                check_location(source, config.storage, plan.base_dir)
                checked.add(source.location)
    return plan


def definition(plan: Plan) -> dict:
    """What the ablation compares, as recorded and versioned in the ablation artifact (where the base config
    lies and its overrides are not: what they change reaches the ablation through its inputs' versions)."""
    described = plan.ablation.to_json()
    return {key: value for key, value in described.items() if key not in ("base_config", "base_overrides")}


class ScopedRecorder:
    """The flow's run recorder, seen by one recipe's (or seed's) stages: their artifacts are recorded as
    `<scope>:<artifact>`, so two recipes' `filter/web` stay apart in one run record."""

    def __init__(self, recorder: RunRecorder, scope: str):
        self.recorder, self.scope = recorder, scope
        self.record = recorder.record

    def stage(self, artifact: str, result: dict) -> None:
        self.recorder.stage(f"{self.scope}:{artifact}", result)

    def stage_failed(self, artifact: str, error: str) -> None:
        self.recorder.stage_failed(f"{self.scope}:{artifact}", error)


def fixed_tokenizer(store: ObjectStore, manifest: dict, directory: Path) -> Path:
    """The base config's tokenizer.json, verified, as a local file."""
    [entry] = [entry for entry in files_with_role(manifest, "tokenizer") if entry["path"] == "tokenizer.json"]
    path = directory / "tokenizer.json"
    fetch_verified(store, manifest, entry, directory).rename(path)
    return path


def check(states: dict[str, Any], scope: str, recorder: RunRecorder, wanted: list[str]) -> None:
    """Raise AblationFailed if a stage failed or one the ablation needs did not run."""
    failed = {name: state.message for name, state in states.items() if not state.is_completed()}
    missing = [name for name in wanted if name not in states]
    for name, message in failed.items():
        recorder.stage_failed(f"{scope}:{name}", message or "failed")
    if failed or missing:
        recorder.finish("failed")
        raise AblationFailed(f"{scope}: stage(s) failed: {', '.join(sorted(failed)) or '-'}"
                             + (f"; not run: {', '.join(missing)}" if missing else "")
                             + f"; run record: {recorder.store.uri(recorder.key)}")


def manifest_of(store: ObjectStore, result: dict) -> dict:
    return read_manifest(store, result["artifact"], result["version"])


@dataclass
class Built:
    """What one (recipe, seed) of the flow produced: the recipe's data stages' results, the proxy and its scores."""

    recipe: str
    seed: int
    config: PipelineConfig
    data: dict[str, dict]
    model: dict
    scores: dict


def cpu_of(manifest: dict) -> float:
    return float(manifest.get("summary", {}).get("cpu_s") or 0.0)


def run_entries(store: ObjectStore, built: list[Built], heldout: dict, record: dict) -> list[dict]:
    """results.json's runs (tasks/ablation_report.py's interface), with the costs of what this flow run did: a
    stage this run executed is charged (its CPU seconds) to the first recipe that reads it — data_cpu_s, or
    train_cpu_s for the proxy — and counts as saved (cached_cpu_s) for every later one; a stage that was
    already committed before the run counts as saved for every recipe that reads it. The data stages count
    with a recipe's first seed (the other seeds read the same artifacts)."""
    executed = {(stage["artifact"], stage["version"]) for stage in record["stages"].values()
                if stage.get("status") == "executed"}
    charged: set[tuple[str, str]] = set()

    def charge(result: dict) -> tuple[float, float]:
        """(spent, saved) CPU seconds of one stage for the entry reading it."""
        key = (result["artifact"], result["version"])
        cpu = cpu_of(manifest_of(store, result))
        if key in executed and key not in charged:
            charged.add(key)
            return cpu, 0.0
        return 0.0, cpu

    runs, seen = [], set()
    for item in built:
        manifests = {name: manifest_of(store, result) for name, result in item.data.items()}
        general = [f"tokens/{source}" for source in item.config.general_sources()]
        data_cpu = saved = 0.0
        if item.recipe not in seen:
            seen.add(item.recipe)
            for name in sorted(item.data):
                if name.split("/")[0] in DATA_COST_STAGES:
                    spent, kept = charge(item.data[name])
                    data_cpu, saved = data_cpu + spent, saved + kept
        train_cpu, kept = charge(item.model)
        model = manifest_of(store, item.model)
        runs.append({
            "recipe": item.recipe, "seed": item.seed,
            "metrics": manifest_of(store, item.scores)["summary"]["metrics"],
            "documents": sum(manifests[name]["counts"]["splits"]["train"]["documents"] for name in general),
            "tokens": sum(manifests[name]["counts"]["splits"]["train"]["tokens"] for name in general),
            "train_flops": float(model["summary"]["flops"]),
            "data_cpu_s": round(data_cpu, 3), "train_cpu_s": round(train_cpu, 3), "cached_cpu_s": round(saved + kept, 3),
            "model": {"artifact": item.model["artifact"], "version": item.model["version"]},
            "eval": {"artifact": item.scores["artifact"], "version": item.scores["version"]},
            "lineage": {**{name: result["version"] for name, result in sorted(item.data.items())},
                        "pretrain": item.model["version"], "proxy-eval": item.scores["version"],
                        "heldout": heldout["version"]},
        })
    return runs


@flow(name=PREFECT_FLOW, log_prints=True, validate_parameters=True)
def ablation(recipes_path: str = "ablations/sample.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    logger = get_run_logger()
    plan = plan_ablation(recipes_path, overrides)
    ablation_def = plan.ablation
    store = open_store(plan.base.storage)
    run_id = flow_run.get_id() or "local"
    recorder = RunRecorder(store, run_id, flow=FLOW_NAME, config={"ablation": definition(plan)},
                           parameters={"recipes_path": recipes_path, "overrides": overrides})

    def context(config: PipelineConfig, scope: str, only: frozenset[str] | None) -> RunContext:
        return RunContext(config=config, store=store, base_dir=plan.base_dir, run_id=run_id,
                          recorder=ScopedRecorder(recorder, scope), only=only)  # type: ignore[arg-type]

    built: list[Built] = []
    with cluster_session(plan.base.cluster, log=logger.info), tempfile.TemporaryDirectory(prefix="ablation-") as tmp:
        # The base config: the fixed held-out set and the fixed tokenizer.
        base_ctx = context(plan.base, BASE_SCOPE, BASE_STAGES)
        general = plan.base.general_sources()
        stage = plan.held_out["stage"]
        states = run_pipeline(base_ctx)
        check(states, BASE_SCOPE, recorder, ["tokenizer", *(f"{stage}/{source}" for source in general)])
        heldout = heldout_task(base_ctx, plan.held_out, {s: states[f"{stage}/{s}"].result() for s in general},
                               return_state=True)
        check({"heldout": heldout}, BASE_SCOPE, recorder, [])
        heldout = heldout.result()
        tokenizer = fixed_tokenizer(store, manifest_of(store, states["tokenizer"].result()), Path(tmp))
        logger.info("ablation: held-out set heldout@%s, tokenizer fixed from tokenizer@%s", heldout["version"],
                    states["tokenizer"].result()["version"])

        for recipe in ablation_def.recipes:
            seeds = ablation_def.seeds
            configs = {seed: recipe_config(ablation_def, recipe, seed, fixed_overrides={"tokenizer.path": str(tokenizer)})
                       for seed in seeds}
            data_ctx = context(configs[seeds[0]], recipe.name, DATA_STAGES)
            states = run_pipeline(data_ctx)
            tokens = {source: f"tokens/{source}" for source in configs[seeds[0]].general_sources()}
            check(states, recipe.name, recorder, ["mixture", "tokenizer", *tokens.values()])
            data = {name: state.result() for name, state in states.items()}
            for seed in seeds:
                scope = f"{recipe.name}/seed{seed}"
                seed_ctx = context(configs[seed], scope, None)
                model = pretrain_task(seed_ctx, data["mixture"], data["tokenizer"],
                                      {source: data[name] for source, name in tokens.items()}, return_state=True)
                check({"pretrain": model}, scope, recorder, [])
                scores = proxy_eval_task(seed_ctx, scope, list(ablation_def.tasks), model.result(), heldout,
                                         return_state=True)
                check({"proxy-eval": scores}, scope, recorder, [])
                built.append(Built(recipe.name, seed, configs[seed], data, model.result(), scores.result()))

        runs = run_entries(store, built, heldout, recorder.record)
        title = Path(recipes_path).name
        result_state = ablation_task(base_ctx, definition(plan), runs, heldout, title,
                                     ablation_def.recipes[0].name, return_state=True)
        check({"ablation": result_state}, BASE_SCOPE, recorder, [])
    result = result_state.result()
    manifest = manifest_of(store, result)
    record = recorder.finish("completed")
    from tasks.ablation_report import markdown_table
    from tasks.ablation import read_results

    with tempfile.TemporaryDirectory() as scratch:
        summary = read_results(store, manifest, Path(scratch))["summary"]
    table = markdown_table(summary)
    logger.info("ablation@%s (%s):\n%s", manifest["version"], result["status"], table)
    return {"run_id": run_id, "record": store.uri(recorder.key), "artifact": result, "uri": manifest["uri"],
            "table": table, "summary": json.loads(json.dumps(summary, default=str)), "stages": record["stages"]}


if __name__ == "__main__":
    ablation()
