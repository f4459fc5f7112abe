"""What every stage task shares: the run context, skip-if-committed, and reporting to Prefect.

A stage task computes its StageSpec (hence its version) and hands it here with a function that
builds the artifact. If that version is committed, the task ends in Prefect's Cached state with a
link to the artifact; otherwise it builds, commits, records the result in the run record and
publishes a summary artifact in the Prefect UI.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.artifacts import MANIFEST, STAGES, StageSpec, artifact_prefix, built_by, read_manifest
from pipeline.config import PipelineConfig
from pipeline.runs import RunRecorder
from pipeline.storage import ObjectStore, join_key


def stage_task(name: str, task_run_name: str, **options: Any) -> Callable[[Callable], "DeferredTask"]:
    """The thin Prefect task around a stage's core: `@stage_task("clean", "clean[{source_name}]")`. No result
    persistence and no Prefect cache: a stage's artifact version is its cache (execute_stage)."""
    return lambda fn: DeferredTask(fn, {"name": name, "task_run_name": task_run_name, "persist_result": False,
                                        **options})


class DeferredTask:
    """A Prefect task that is built the first time it is called or inspected. Every local pool worker imports
    the stage modules (it unpickles a stage's unit function from one) and runs only the pure cores, so these
    modules must not import Prefect when they load: that import costs about 0.6 CPU-s in each fork server and
    in each process that runs the cores without a flow (benchmarks/README.md, *1 → 2 workers*)."""

    def __init__(self, fn: Callable, options: dict[str, Any]):
        self._fn, self._options, self._task = fn, options, None
        functools.update_wrapper(self, fn)

    @property
    def task(self):
        if self._task is None:
            from prefect import task
            from prefect.cache_policies import NO_CACHE

            self._task = task(cache_policy=NO_CACHE, **self._options)(self._fn)
        return self._task

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.task(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_fn", "_options", "_task"):  # copies and pickles probe these
            raise AttributeError(name)
        return getattr(self.task, name)


class StageNotSelected(RuntimeError):
    """A stage outside `only` has no artifact for its current version, so nothing downstream can read it."""


@dataclass
class RunContext:
    config: PipelineConfig
    store: ObjectStore
    base_dir: Path
    run_id: str
    recorder: RunRecorder
    only: frozenset[str] | None = None
    force: frozenset[str] = frozenset()
    config_path: str | None = None  # what the config was read from, and the run's overrides: a training
    overrides: dict[str, Any] | None = None  # flow run (tasks/remote.py) reads the same config from them

    @staticmethod
    def _named(artifact: str, names: frozenset[str]) -> bool:
        return "all" in names or artifact in names or artifact.split("/")[0] in names

    def selected(self, artifact: str) -> bool:
        return self.only is None or self._named(artifact, self.only)

    def rebuild_token(self, artifact: str) -> str | None:
        """A forced stage gets a new version salted with this run's id (artifacts are never overwritten)."""
        return f"run:{self.run_id}" if self._named(artifact, self.force) else None


def stage_result(manifest: dict, status: str) -> dict[str, Any]:
    return {
        "stage": manifest["stage"],
        "artifact": manifest["artifact"],
        "version": manifest["version"],
        "uri": manifest["uri"],
        "status": status,
        "counts": manifest.get("counts", {}),
    }


def upstream_manifest(ctx: RunContext, result: dict) -> dict:
    """The committed manifest of an upstream stage's result (what this stage reads)."""
    manifest = read_manifest(ctx.store, result["artifact"], result["version"])
    if manifest is None:
        raise RuntimeError(f"{result['artifact']}@{result['version']} is not committed in {ctx.store.uri()}")
    return manifest


def execute_stage(ctx: RunContext, spec: StageSpec, build: Callable[[Callable[[str], None]], dict],
                  remote: Callable[[], dict] | None = None) -> Any:
    """Skip (Cached) or build the artifact of `spec`. `remote`, when given, builds it elsewhere instead of `build`
    (a training stage's own flow run, tasks/remote.py) and returns its committed manifest."""
    from prefect.logging import get_run_logger
    from prefect.runtime import flow_run
    from prefect.states import Completed

    logger = get_run_logger()
    existing = read_manifest(ctx.store, spec.artifact, spec.version)
    if existing is not None:
        result = stage_result(existing, "cached")
        ctx.recorder.stage(spec.artifact, result)
        logger.info("%s: version %s already committed at %s; skipped", spec.artifact, spec.version, existing["uri"])
        publish(ctx, existing, result)
        return Completed(name="Cached", data=result, message=f"artifact {spec.artifact}@{spec.version} exists")
    if not ctx.selected(spec.artifact):
        message = (
            f"{spec.artifact}: not selected by `only` and its version {spec.version} does not exist at "
            f"{ctx.store.uri(spec.prefix)}; add it to `only` or drop `only`"
        )
        raise StageNotSelected(message)
    logger.info("%s: building version %s at %s", spec.artifact, spec.version, ctx.store.uri(spec.prefix))
    if remote is not None:
        manifest = remote()
    else:
        with built_by(flow_run_id=ctx.run_id, flow_run_name=flow_run.get_name()):
            manifest = build(StageProgress(logger.info, artifact_key(spec.artifact), spec.artifact))
    result = stage_result(manifest, "executed")
    ctx.recorder.stage(spec.artifact, result)
    publish(ctx, manifest, result)
    return result


class StageProgress:
    """What a stage's core reports through: called with a message, it logs it; `fraction(done)` keeps a
    progress artifact in the Prefect UI (created at the first call) at done x 100 %. Cores that only
    log call it like a plain function."""

    def __init__(self, log: Callable[[str], None], key: str, artifact: str):
        self.log, self.key, self.artifact = log, key, artifact
        self.artifact_id = None

    def __call__(self, message: str) -> None:
        self.log(message)

    def fraction(self, done: float) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        percent = round(100 * min(max(done, 0.0), 1.0), 1)
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(percent, key=f"{self.key}-progress",
                                                        description=f"{self.artifact}: progress")
        else:
            update_progress_artifact(self.artifact_id, percent)


def artifact_key(artifact: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for an artifact name, led by the stage's
    place in the DAG so that keys sort in DAG order: filter/web -> 05-filter-web (a flow run's own
    summary and funnel are 00-run-...)."""
    stage = artifact.split("/")[0]
    position = STAGES.index(stage) + 1 if stage in STAGES else len(STAGES) + 1
    return f"{position:02d}-" + re.sub(r"[^a-z0-9-]+", "-", artifact.lower()).strip("-")


def publish(ctx: RunContext, manifest: dict, result: dict) -> None:
    """A markdown summary in the Prefect UI: counts, removals by reason, and where the artifact is."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = artifact_key(manifest["artifact"])
    link = ctx.store.http_link(join_key(artifact_prefix(manifest["artifact"], manifest["version"]), MANIFEST))
    description = f"{manifest['artifact']} @ {manifest['version']}"
    create_markdown_artifact(key=key, markdown=summary_markdown(manifest, result["status"], link),
                             description=description)
    create_table_artifact(key=f"{key}-counts", table=counts_table(manifest.get("counts", {})),
                          description=f"{description}: counts (in, out, removed by reason, histograms)")
    if manifest.get("summary", {}).get("table"):  # a stage's own report, e.g. the mixture per source
        create_table_artifact(key=f"{key}-table", table=manifest["summary"]["table"], description=description)


def counts_table(counts: dict) -> list[dict]:
    """Counts as table rows: plain counters, then one row per reason / language of each group."""
    rows = [{"counter": name, "key": "", "value": value} for name, value in counts.items()
            if not isinstance(value, dict)]
    for group, values in counts.items():
        if isinstance(values, dict):
            rows += [{"counter": group, "key": key, "value": value} for key, value in flatten(values).items()]
    return rows


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """{"web": {"documents": 3}} -> {"web.documents": 3}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def summary_markdown(manifest: dict, status: str, link: str | None) -> str:
    counts = manifest.get("counts", {})
    lines = [
        f"### {manifest['artifact']} — {status}",
        "",
        f"- version: `{manifest['version']}`",
        f"- artifact: `{manifest['uri']}`",
        f"- manifest: {f'[manifest.json]({link})' if link else '`' + manifest['uri'] + '/manifest.json`'}",
        "",
        "| counter | value |",
        "|---|---:|",
    ]
    for row in counts_table(counts):
        lines.append(f"| {row['counter']}{': ' + row['key'] if row['key'] else ''} | {row['value']:,} |")
    summary = manifest.get("summary", {})
    if summary.get("seconds") is not None:
        rates = [f"{summary[key]:,} {unit}" for key, unit in (("mb_per_s", "MB/s"), ("docs_per_s", "docs/s"),
                                                               ("tokens_per_s_median", "tokens/s (median step)"))
                 if summary.get(key) is not None]
        lines += ["", f"Built in {summary['seconds']} s" + (f" ({', '.join(rates)})." if rates else ".")]
    return "\n".join(lines)
