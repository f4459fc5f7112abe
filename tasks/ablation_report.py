"""The report of a data-recipe ablation: per recipe and metric the mean and the spread over seeds, each
recipe against the baseline with the difference judged against the seed spread, and the compute spent.

Pure: it takes the proxies' results and returns numbers, markdown and a plot; no Prefect, no storage.

A run (one proxy model) is a dict:
    {"recipe": str, "seed": int, "metrics": {name: float}, "documents": int, "tokens": int,
     "train_flops": float, "data_cpu_s": float, "train_cpu_s": float, "cached_cpu_s": float,
     "model": {"artifact": str, "version": str}, "lineage": {...}}
where documents and tokens are what the recipe's data stages kept, and the costs are what this run did:
data_cpu_s the CPU seconds of the data stages it executed (a stage shared with an earlier run is Cached and
counts 0), cached_cpu_s the CPU seconds those Cached stages had cost when they ran (what the cache saved).

Small proxies are noisy: a difference between two recipes counts only when it exceeds the larger of their
seed spreads (max - min over seeds), and the report says which side of that line every difference falls.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

# Substrings of a metric name whose metric is better when lower; every other metric is better when higher.
METRIC_DIRECTION = {"bpb": "lower", "bits_per_byte": "lower", "perplexity": "lower", "ppl": "lower",
                    "loss": "lower"}
COST_FIELDS = {"train_flops": "train_flops", "data_cpu_s": "data_cpu_s", "train_cpu_s": "train_cpu_s",
               "cached_cpu_s": "cached_cpu_s_saved"}
MINUS = "\u2212"


def lower_is_better(metric: str) -> bool:
    name = metric.lower()
    return any(marker in name for marker in METRIC_DIRECTION)


def summarize(runs: list[dict[str, Any]], baseline: str | None = None) -> dict[str, Any]:
    """The table (rows: recipe x metric), the comparisons with the baseline recipe (default: the first
    recipe), and the cost per recipe and in total."""
    if not runs:
        raise ValueError("no proxy runs to summarize")
    recipes = list(dict.fromkeys(run["recipe"] for run in runs))
    if "total" in recipes:
        raise ValueError("a recipe may not be named 'total' (the cost table's totals row)")
    baseline = recipes[0] if baseline is None else baseline
    if baseline not in recipes:
        raise ValueError(f"baseline {baseline!r} is not a recipe of these runs; recipes: {', '.join(recipes)}")
    seeds = sorted({run["seed"] for run in runs})
    metrics = list(dict.fromkeys(name for run in runs for name in (run.get("metrics") or {})))

    rows = [_row(recipe, metric, [run for run in runs if run["recipe"] == recipe])
            for recipe in recipes for metric in metrics]
    by_key = {(row["recipe"], row["metric"]): row for row in rows}
    comparisons = [_compare(by_key[(recipe, metric)], by_key[(baseline, metric)])
                   for recipe in recipes if recipe != baseline for metric in metrics]
    cost: dict[str, dict[str, float]] = {}
    for recipe in recipes:
        mine = [run for run in runs if run["recipe"] == recipe]
        cost[recipe] = {out: float(sum(run.get(field) or 0 for run in mine)) for field, out in COST_FIELDS.items()}
        cost[recipe]["runs"] = len(mine)
    cost["total"] = {out: sum(cost[recipe][out] for recipe in recipes) for out in [*COST_FIELDS.values(), "runs"]}
    return {"recipes": recipes, "seeds": seeds, "metrics": metrics, "baseline": baseline, "rows": rows,
            "comparisons": comparisons, "cost": cost}


def _row(recipe: str, metric: str, runs: list[dict]) -> dict[str, Any]:
    per_seed, missing = {}, []
    for run in sorted(runs, key=lambda run: run["seed"]):
        value = (run.get("metrics") or {}).get(metric)
        if value is None or not math.isfinite(float(value)):
            missing.append(run["seed"])
        else:
            per_seed[run["seed"]] = float(value)
    values = list(per_seed.values())
    return {
        "recipe": recipe, "metric": metric, "lower_is_better": lower_is_better(metric), "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "spread": max(values) - min(values) if values else None,
        "std": statistics.stdev(values) if len(values) >= 2 else None,
        "per_seed": per_seed, "missing_seeds": missing,
        "documents": next((run["documents"] for run in runs if run.get("documents") is not None), None),
        "tokens": next((run["tokens"] for run in runs if run.get("tokens") is not None), None),
    }


def _compare(row: dict, base: dict) -> dict[str, Any]:
    recipe, baseline, metric = row["recipe"], base["recipe"], row["metric"]
    head = f"{recipe} vs {baseline}:"
    result = {"recipe": recipe, "baseline": baseline, "metric": metric, "delta": None, "spread": None,
              "exceeds_spread": False, "better": None}
    if row["mean"] is None or base["mean"] is None:
        lacking = " and ".join(r["recipe"] for r in (row, base) if r["mean"] is None)
        return {**result, "sentence": f"{head} no {metric} for {lacking}"}
    delta = row["mean"] - base["mean"]
    if min(row["n"], base["n"]) < 2:
        thin = " and ".join(r["recipe"] for r in (row, base) if r["n"] < 2)
        return {**result, "delta": delta,
                "sentence": f"{head} {signed(delta)} {metric}, but only one seed of {thin} was scored: no seed "
                            f"spread to judge it by"}
    spread = max(row["spread"], base["spread"])
    if abs(delta) <= spread:
        return {**result, "delta": delta, "spread": spread,
                "sentence": f"{head} {signed(delta)} {metric}, inside the seed spread of {number(spread)}"}
    better = (delta < 0) == lower_is_better(metric)
    return {**result, "delta": delta, "spread": spread, "exceeds_spread": True, "better": better,
            "sentence": f"{head} {signed(delta)} {metric}, outside the seed spread of {number(spread)}: "
                        f"{'better' if better else 'worse'}"}


def number(value: float | None) -> str:
    if value is None:
        return "–"
    if value != 0 and abs(value) < 0.001:
        return f"{value:.1e}".replace("-", MINUS)
    if abs(value) >= 1000:
        return f"{value:,.1f}".replace("-", MINUS)
    return f"{value:.3f}".replace("-", MINUS)


def signed(value: float) -> str:
    return ("+" if value >= 0 else "") + number(value)


def _count(value: Any) -> str:
    return "–" if value is None else f"{int(value):,}"


def _seed_value(per_seed: dict, seed: int) -> float | None:
    """A summary read back from JSON has its seeds as strings."""
    return per_seed.get(seed, per_seed.get(str(seed)))


def markdown_table(summary: dict[str, Any]) -> str:
    """The results table, the comparisons in words, and the cost table, as markdown."""
    seeds = summary["seeds"]
    header = ["recipe", "metric", "mean", "spread (max−min)", "std", *[f"seed {seed}" for seed in seeds],
              "documents", "tokens"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    for row in summary["rows"]:
        arrow = "↓" if row["lower_is_better"] else "↑"
        cells = [row["recipe"], f"{row['metric']} {arrow}", number(row["mean"]), number(row["spread"]),
                 number(row["std"]), *[number(_seed_value(row["per_seed"], seed)) for seed in seeds],
                 _count(row["documents"]), _count(row["tokens"])]
        lines.append("| " + " | ".join(cells) + " |")
    parts = ["\n".join(lines)]
    if summary["comparisons"]:
        parts.append(f"Against {summary['baseline']} (a difference counts only when it exceeds the larger seed "
                     f"spread of the two recipes; ↓: lower is better, ↑: higher is better):\n\n"
                     + "\n".join(f"- {c['sentence']}" for c in summary["comparisons"]))
    cost = ["| recipe | proxies | training FLOPs | data-stage CPU s | training CPU s | CPU s saved by cached stages |",
            "|---|---:|---:|---:|---:|---:|"]
    for recipe in [*summary["recipes"], "total"]:
        spent = summary["cost"][recipe]
        name = "**total**" if recipe == "total" else recipe
        cost.append(f"| {name} | {int(spent['runs'])} | {spent['train_flops']:.3g} | {spent['data_cpu_s']:,.1f} | "
                    f"{spent['train_cpu_s']:,.1f} | {spent['cached_cpu_s_saved']:,.1f} |")
    parts.append("\n".join(cost))
    return "\n\n".join(parts) + "\n"


PANEL_INCHES = (4.0, 3.6)
DPI = 100


def plot(summary: dict[str, Any], path: Path) -> None:
    """One panel per metric: per recipe each seed's value as a point, the mean as a square with the seed
    spread (min to max) as its error bar. A PNG at `path`."""
    from matplotlib.figure import Figure

    metrics = summary["metrics"] or ["(no metrics)"]
    recipes = summary["recipes"]
    figure = Figure(figsize=(PANEL_INCHES[0] * len(metrics), PANEL_INCHES[1]), dpi=DPI)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    rows = {(row["recipe"], row["metric"]): row for row in summary["rows"]}
    seeds = summary["seeds"]
    for axis, metric in zip(axes, metrics):
        for index, recipe in enumerate(recipes):
            row = rows.get((recipe, metric))
            if row is None or row["mean"] is None:
                continue
            values = [(seed, _seed_value(row["per_seed"], seed)) for seed in seeds]
            values = [(seed, value) for seed, value in values if value is not None]
            low, high = min(v for _, v in values), max(v for _, v in values)
            axis.errorbar([index], [row["mean"]], yerr=[[row["mean"] - low], [high - row["mean"]]], fmt="s",
                          color="black", capsize=6, markersize=7, zorder=3)
            offsets = [(k - (len(values) - 1) / 2) * 0.12 for k in range(len(values))]
            axis.scatter([index + offset for offset in offsets], [v for _, v in values], s=18, alpha=0.7,
                         color="tab:blue", zorder=2)
        axis.set_xticks(range(len(recipes)), recipes, rotation=30, ha="right")
        axis.set_xlim(-0.6, len(recipes) - 0.4)
        direction = "lower is better" if lower_is_better(metric) else "higher is better"
        axis.set_title(f"{metric} ({direction})", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"per recipe: each seed (points), the mean (square) and the seed spread (bar, min to max); {len(seeds)} seeds", fontsize=9)
    figure.tight_layout()
    figure.savefig(Path(path), format="png", metadata={"Software": None})
