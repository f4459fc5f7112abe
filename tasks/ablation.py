"""Ablation stage (`ablation`): the comparison of data recipes, committed as one artifact.

It reads what the ablation flow (flows/ablation.py) built — per recipe and seed a proxy model (`pretrain`)
and its scores (`proxy-eval`), the recipe's data artifacts, and the fixed held-out set (`heldout`) — and
writes:

    results.json   {"ablation": the recipe file's content, "runs": [...], "summary": {...}}
    report.md      the table (recipe x metric: mean, seed spread, per-seed values, documents and tokens
                   kept), the comparisons with the baseline in words, and the cost per recipe
    plot.png       one panel per metric: per recipe the seeds as points, the mean with its spread

`runs` holds one entry per (recipe, seed) (the interface of tasks/ablation_report.py): metrics, the
documents and tokens the recipe kept for training, training FLOPs, the CPU seconds of the recipe's data
stages and of training, the CPU seconds of the stages that were Cached when this ablation needed them
(what sharing saved), the model and its lineage (every artifact version it came from).

The version is a hash of the ablation's definition and its inputs' versions (every proxy model, every
score, the held-out set), so rerunning the same ablation is Cached; the cost figures are those of the
run that built it.

The core (`ablation_spec`, `run_ablation`, `report_markdown`, `table_rows`) knows nothing of Prefect;
`ablation_task` is the thin task, which also puts the table, the report and the plot in the Prefect UI.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

from pipeline.artifacts import ArtifactWriter, StageSpec, artifact_prefix, read_manifest
from pipeline.storage import ObjectStore, join_key

from . import ablation_report
from .stage import RunContext, artifact_key, execute_stage, stage_task

STAGE = "ablation"
CODE_VERSION = "1"


def ablation_spec(definition: dict, runs: list[dict], heldout: dict, rebuild: str | None = None) -> StageSpec:
    """`runs`: per (recipe, seed) the model and eval versions; `heldout`: the held-out set's manifest."""
    inputs: dict[str, Any] = {"heldout": heldout["version"], "runs": {}}
    for run in runs:
        inputs["runs"].setdefault(run["recipe"], {})[str(run["seed"])] = {
            "pretrain": run["model"]["version"], "proxy-eval": run["eval"]["version"]}
    return StageSpec(stage=STAGE, artifact=STAGE, code_version=CODE_VERSION, config=definition, inputs=inputs,
                     rebuild=rebuild)


def table_rows(summary: dict) -> list[dict]:
    """The summary's rows as a table: recipe, metric, mean, spread, one column per seed, documents, tokens."""
    seeds = list(dict.fromkeys(str(seed) for row in summary["rows"] for seed in row["per_seed"]))
    table = []
    for row in summary["rows"]:
        entry = {"recipe": row["recipe"], "metric": row["metric"], "mean": _round(row["mean"]),
                 "spread": _round(row["spread"])}
        per_seed = {str(seed): value for seed, value in row["per_seed"].items()}
        entry.update({f"seed {seed}": _round(per_seed.get(seed)) for seed in seeds})
        entry.update({"documents": row.get("documents"), "tokens": row.get("tokens")})
        table.append(entry)
    return table


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def report_markdown(summary: dict, title: str, plot_link: str | None = None) -> str:
    """report.md: the table, the comparisons in words and the cost (tasks/ablation_report.py), and the plot."""
    lines = [f"# Ablation: {title}", "", ablation_report.markdown_table(summary).rstrip(), "",
             "Small proxy models are noisy: a difference inside the seed spread is not evidence either way."]
    if plot_link:
        lines += ["", f"![metrics per recipe]({plot_link})"]
    return "\n".join(lines) + "\n"


def run_ablation(store: ObjectStore, spec: StageSpec, definition: dict, runs: list[dict], title: str,
                 baseline: str | None = None, progress: Callable[[str], None] = print) -> dict:
    """Summarize, write results.json, report.md and plot.png, and commit; returns the manifest."""
    writer = ArtifactWriter(store, spec)
    summary = ablation_report.summarize(runs, baseline)
    with tempfile.TemporaryDirectory(prefix="ablation-") as scratch:
        work = Path(scratch)
        (work / "results.json").write_text(json.dumps({"ablation": definition, "runs": runs, "summary": summary},
                                                      indent=2, sort_keys=True, default=str))
        ablation_report.plot(summary, work / "plot.png")
        (work / "report.md").write_text(report_markdown(summary, title, "plot.png"))
        files = [writer.put_file("results.json", work / "results.json", "results"),
                 writer.put_file("report.md", work / "report.md", "report"),
                 writer.put_file("plot.png", work / "plot.png", "plot")]
    recipes = list(dict.fromkeys(run["recipe"] for run in runs))
    progress(f"ablation: {len(recipes)} recipes x {len(runs) // max(len(recipes), 1)} seeds compared")
    counts = {"recipes": len(recipes), "models": len(runs),
              "documents": {recipe: next(r["documents"] for r in runs if r["recipe"] == recipe) for recipe in recipes},
              "tokens": {recipe: next(r["tokens"] for r in runs if r["recipe"] == recipe) for recipe in recipes}}
    return writer.commit(files, counts, summary={"title": title, "table": table_rows(summary),
                                                 "comparisons": summary.get("comparisons", []),
                                                 "cost": summary["cost"]})


def read_results(store: ObjectStore, manifest: dict, scratch: Path) -> dict:
    """results.json of a committed ablation artifact."""
    from pipeline.artifacts import fetch_verified, files_with_role

    [entry] = list(files_with_role(manifest, "results"))
    return json.loads(fetch_verified(store, manifest, entry, scratch).read_text())


def publish_report(store: ObjectStore, manifest: dict, summary: dict) -> None:
    """The report (markdown, the plot embedded when the store gives links) and the plot as an image artifact."""
    from prefect.artifacts import create_image_artifact, create_markdown_artifact

    prefix = artifact_prefix(manifest["artifact"], manifest["version"])
    link = store.http_link(join_key(prefix, "plot.png"))
    key = artifact_key(STAGE)
    create_markdown_artifact(key=f"{key}-report", markdown=report_markdown(summary, manifest["summary"]["title"], link),
                             description=f"ablation @ {manifest['version']}: the report")
    if link:
        create_image_artifact(image_url=link, key=f"{key}-plot",
                              description="each metric per recipe: the seeds and their spread")


@stage_task("ablation", "ablation")
def ablation_task(ctx: RunContext, definition: dict, runs: list[dict], heldout_result: dict, title: str,
                  baseline: str | None = None) -> Any:
    """Resolve the version from the definition and the runs' versions; skip or build; publish the report."""
    heldout = read_manifest(ctx.store, heldout_result["artifact"], heldout_result["version"])
    spec = ablation_spec(definition, runs, heldout, rebuild=ctx.rebuild_token(STAGE))
    result = execute_stage(ctx, spec, lambda emit: run_ablation(ctx.store, spec, definition, runs, title, baseline,
                                                                emit))
    manifest = read_manifest(ctx.store, spec.artifact, spec.version)
    with tempfile.TemporaryDirectory(prefix="ablation-") as scratch:
        summary = read_results(ctx.store, manifest, Path(scratch))["summary"]
    publish_report(ctx.store, manifest, summary)
    return result
