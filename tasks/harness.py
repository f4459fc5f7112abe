"""lm-evaluation-harness for the eval stage: the task index, one model's run, its numbers as the harness
reports them, and the CORE-style aggregate.

- Tasks: harness task names (`eval.tasks`: hellaswag, arc_easy, mmlu, ...: their datasets come from the
  Hugging Face hub or its local cache) and local task YAMLs (`eval.include_path`, and the tasks the
  stage generates from held-out documents). `task_manager` indexes them; `check_tasks` refuses a name
  that is in neither, before any model is scored.
- A run (`run_tasks`): `lm_eval.simple_evaluate` with the harness's HF model class (`HFLM`) on a local
  model directory, per-sample logs on. `load_model` is the HFLM; its `.model` and `.tokenizer` are the
  loaded transformers objects, which the stage reuses for held-out bits per byte.
- Numbers (`task_metrics`): the harness's results, {task: {metric: value}}, named `metric` for the
  default filter and `metric/filter` otherwise; stderr entries are left out.
- CORE (`core_score`): for each configured task, centred accuracy (acc - chance) / (1 - chance), chance
  being the mean of 1 / choices over the task's scored items (0 for tasks scored by exact or greedy
  match, e.g. LAMBADA's acc), averaged over the tasks that report the metric; a group (mmlu) pools its
  subtasks weighted by their items. As DCLM's and nanochat's CORE, with the harness's own scores.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

HARNESS = "lm_eval"
NO_POOL = "DISABLE_MULTIPROC"  # lm_eval.api.metrics.bootstrap_stderr: no process pool


def harness_version() -> str:
    return importlib.metadata.version(HARNESS)


def task_manager(include_paths: list[Path], names: list[str] | tuple[str, ...] = ()):
    """The harness's task index: its own tasks and the YAMLs of the given folders. When the folders define
    every one of `names` as a task (not a group or tag, which may name the harness's tasks), only the folders
    are indexed: indexing the harness's own ~15,000 task YAMLs takes about 4 s on every eval."""
    from lm_eval.tasks import TaskManager

    folders = [str(path) for path in include_paths]
    if folders and names:
        local = TaskManager(include_path=folders, include_defaults=False)
        if all(name in local.all_subtasks for name in names):
            return local
    return TaskManager(include_path=folders or None)


def check_tasks(manager, names: list[str], key: str = "eval.tasks") -> None:
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise ValueError(f"{key}: unknown task(s) {unknown}: neither an lm-evaluation-harness task, group or tag "
                         f"nor defined by a YAML in eval.include_path")


def load_model(directory: Path, dtype: str, device: str | None, batch_size: int):
    """The harness's HF model on a local directory (model and tokenizer from the same directory)."""
    import torch
    from lm_eval.models.huggingface import HFLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return HFLM(pretrained=str(directory), tokenizer=str(directory), dtype=dtype, device=device,
                batch_size=batch_size)


def run_tasks(lm, manager, tasks: list[str], limit: int | None, num_fewshot: int | None,
              bootstrap_iters: int) -> dict:
    """The harness's results for one model (its dict, with per-sample logs under "samples")."""
    import lm_eval

    # The bootstrap of non-mean metrics' stderr runs in this process: the harness's multiprocessing pool
    # would start its workers by re-running the main module, which under a Prefect worker is the flow
    # engine (they hang).
    previous = os.environ.get(NO_POOL)
    os.environ[NO_POOL] = "1"
    try:
        return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                       num_fewshot=num_fewshot, bootstrap_iters=bootstrap_iters, log_samples=True)
    finally:
        if previous is None:
            os.environ.pop(NO_POOL, None)
        else:
            os.environ[NO_POOL] = previous


def task_metrics(raw: dict) -> dict[str, dict[str, float]]:
    """{task or group: {metric: value}} from the harness's results."""
    metrics: dict[str, dict[str, float]] = {}
    for task, values in raw["results"].items():
        for key, value in values.items():
            metric, comma, filter_name = key.partition(",")
            if not comma or "_stderr" in metric or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metrics.setdefault(task, {})[metric if filter_name == "none" else f"{metric}/{filter_name}"] = float(value)
    return metrics


def chance_levels(raw: dict) -> dict[str, float]:
    """Each scored task's accuracy by chance: the mean of 1 / choices over its items for multiple choice,
    0 for the rest (a generated or greedy answer is matched exactly)."""
    levels = {}
    for task, samples in raw.get("samples", {}).items():
        if raw["configs"][task].get("output_type") != "multiple_choice" or not samples:
            levels[task] = 0.0
            continue
        inverse = []
        for sample in samples:
            requests = len(sample["arguments"])  # one per choice, twice with acc_mutual_info's unconditional ones
            choices = requests // 2 if "acc_mutual_info" in sample.get("metrics", []) else requests
            inverse.append(1 / choices)
        levels[task] = sum(inverse) / len(inverse)
    return levels


def leaves(raw: dict, name: str) -> list[str]:
    """The scored tasks under a name: itself, or a group's subtasks (recursively)."""
    children = raw.get("group_subtasks", {}).get(name)
    if not children:
        return [name]
    return [leaf for child in children for leaf in leaves(raw, child)]


def core_score(raw: dict, tasks: list[str], metric: str = "acc") -> dict[str, Any]:
    """{"core": mean centred accuracy or None, "tasks": {task: centred accuracy}, "chance": {task: level}}."""
    metrics, chance = task_metrics(raw), chance_levels(raw)
    counts = {task: entry.get("effective", entry.get("original", 0)) for task, entry in raw.get("n-samples", {}).items()}
    centred: dict[str, float] = {}
    levels: dict[str, float] = {}
    for name in tasks:
        scored = [leaf for leaf in leaves(raw, name) if metric in metrics.get(leaf, {}) and counts.get(leaf)]
        if not scored:
            continue
        items = sum(counts[leaf] for leaf in scored)
        accuracy = sum(metrics[leaf][metric] * counts[leaf] for leaf in scored) / items
        level = sum(chance.get(leaf, 0.0) * counts[leaf] for leaf in scored) / items
        centred[name] = (accuracy - level) / (1 - level)
        levels[name] = level
    return {"core": sum(centred.values()) / len(centred) if centred else None, "tasks": centred, "chance": levels,
            "metric": metric}


def task_versions(raw: dict) -> dict[str, dict]:
    """What the manifest keeps of each task: its version, items scored, shots and the hash of its items."""
    hashes = raw.get("task_hashes") or {}
    return {task: {"version": version, "items": raw.get("n-samples", {}).get(task, {}).get("effective"),
                   "shots": raw.get("n-shot", {}).get(task), "hash": hashes.get(task)}
            for task, version in sorted(raw.get("versions", {}).items())}


def write_outputs(raw: dict, directory: Path) -> list[Path]:
    """The harness's results (results.json, without the samples) and one JSONL of per-sample logs per task."""
    from lm_eval.utils import handle_non_serializable

    directory.mkdir(parents=True, exist_ok=True)
    summary = {key: value for key, value in raw.items() if key != "samples"}
    paths = [directory / "results.json"]
    paths[0].write_text(json.dumps(summary, indent=2, sort_keys=True, default=handle_non_serializable))
    for task, samples in sorted(raw.get("samples", {}).items()):
        path = directory / f"samples_{task}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for sample in samples:
                handle.write(json.dumps(sample, ensure_ascii=False, default=handle_non_serializable) + "\n")
        paths.append(path)
    return paths
