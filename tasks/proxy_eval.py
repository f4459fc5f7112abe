"""Proxy evaluation stage (`proxy-eval`): one proxy model of an ablation scored on the ablation's fixed
held-out set (tasks/heldout.py) and its harness tasks.

The model is read as its HF directory (tasks/checkpoints.py) and scored by the eval stage's own code
(tasks/evaluate.py `evaluate_model`): bits per byte and perplexity on each held-out source, pooled over
them (summed nats / (ln 2 x summed bytes)), the configured lm-evaluation-harness tasks (the eval
section's include_path, limit, shots, bootstrap), and CORE over those tasks. The metrics, flat:
`bpb`, `perplexity` (pooled), `bpb <source>`, `CORE` (with tasks), `<task> <metric>`.

The version: the model's, the held-out set's, the tasks, the task files and the harness version, and the
eval settings that change numbers — the same model on the same data always reuses its scores.

The core (`proxy_eval_spec`, `proxy_metrics`, `run_proxy_eval`) knows nothing of Prefect; `proxy_eval_task`
is the thin task.
"""

from __future__ import annotations

import json
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from pipeline.artifacts import ArtifactWriter, StageSpec
from pipeline.config import EvalConfig
from pipeline.storage import ObjectStore

from . import harness
from .checkpoints import artifact_model
from .evaluate import evaluate_model, folder_files, include_paths, metric_rows
from .heldout import read_heldout
from .stage import RunContext, execute_stage, stage_task, upstream_manifest

STAGE = "proxy-eval"
CODE_VERSION = "1"
# The eval settings that change a proxy's numbers (batch size and device do not).
SETTINGS = ("limit", "num_fewshot", "bootstrap_iters", "dtype", "core_metric")


@lru_cache(maxsize=4)
def _task_manager(folders: tuple[Path, ...], names: tuple[str, ...]):
    """The harness's task index, built once per process for an ablation's task folders and tasks (indexing
    every harness task takes seconds; every proxy of an ablation reads the same folders)."""
    return harness.task_manager(list(folders), names)


def proxy_eval_spec(settings: EvalConfig, tasks: list[str], model: dict, heldout: dict, task_folders: list[Path],
                    rebuild: str | None = None) -> StageSpec:
    versioned = settings.versioned()
    return StageSpec(stage=STAGE, artifact=STAGE, code_version=CODE_VERSION,
                     config={**{key: versioned[key] for key in SETTINGS}, "heldout": versioned["heldout"],
                             "tasks": list(tasks)},
                     inputs={"model": {model["artifact"]: model["version"]},
                             "heldout": {heldout["artifact"]: heldout["version"]},
                             "task_files": folder_files(task_folders), "harness": harness.harness_version()},
                     rebuild=rebuild)


def proxy_metrics(results: dict) -> dict[str, float]:
    """evaluate_model's results as the ablation's flat metrics (pooled held-out numbers under plain names)."""
    rows = metric_rows(results)
    metrics = {"bpb": rows.pop("bpb general"), "perplexity": rows.pop("perplexity general")}
    for name in ("bpb domain", "perplexity domain"):
        rows.pop(name, None)
    sources = [name for name in rows if name.startswith("bpb ")]
    metrics.update({name: rows.pop(name) for name in sources})
    rows = {name: value for name, value in rows.items() if not name.startswith("perplexity ")}
    metrics.update(rows)
    return {name: value for name, value in metrics.items() if value is not None}


def run_proxy_eval(settings: EvalConfig, tasks: list[str], store: ObjectStore, spec: StageSpec, model: dict,
                   heldout: dict, task_folders: list[Path], progress: Callable[[str], None] = print) -> dict:
    """Score the model and commit results.json and the harness's outputs; returns the manifest."""
    started = time.monotonic()
    writer = ArtifactWriter(store, spec)
    with tempfile.TemporaryDirectory(prefix="proxy-eval-") as scratch:
        work = Path(scratch)
        documents = read_heldout(store, heldout, work)
        manager = _task_manager(tuple(task_folders), tuple(tasks))
        harness.check_tasks(manager, tasks, key="tasks")
        lm = harness.load_model(artifact_model(model).hf_dir(store, work / "model"), settings.dtype, settings.device,
                                settings.batch_size)
        results, raw = evaluate_model(lm, manager, settings, tasks, documents, sorted(documents), [], None)
        metrics = proxy_metrics(results)
        files = [writer.put_file(f"harness/{path.name}", path, "harness")
                 for path in harness.write_outputs(raw, work / "harness")] if tasks else []
        path = work / "results.json"
        path.write_text(json.dumps({"model": f"{model['artifact']}@{model['version']}", "metrics": metrics,
                                    "results": results}, indent=2, sort_keys=True))
        files.append(writer.put_file("results.json", path, "results"))
    progress(f"proxy-eval: {model['artifact']}@{model['version']}: "
             + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    counts = {"heldout_documents": {source: len(docs) for source, docs in documents.items()}}
    return writer.commit(files, counts, summary={"metrics": metrics, "seconds": round(time.monotonic() - started, 1),
                                                 "table": [{"metric": k, "value": v} for k, v in metrics.items()]})


# log_prints off, as the eval stage's: dill's disassembly would go to the run's log
@stage_task("proxy-eval", "proxy-eval[{label}]", log_prints=False)
def proxy_eval_task(ctx: RunContext, label: str, tasks: list[str], model_result: dict, heldout_result: dict) -> Any:
    """Resolve the version from the model, the held-out set, the tasks and the settings; skip or score."""
    model = upstream_manifest(ctx, model_result)
    heldout = upstream_manifest(ctx, heldout_result)
    folders = include_paths(ctx.config.eval, ctx.base_dir)
    spec = proxy_eval_spec(ctx.config.eval, tasks, model, heldout, folders, rebuild=ctx.rebuild_token(STAGE))
    return execute_stage(ctx, spec, lambda emit: run_proxy_eval(ctx.config.eval, tasks, ctx.store, spec, model,
                                                                heldout, folders, emit))
