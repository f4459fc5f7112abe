"""The `pretrain-pipeline` Prefect flow: the DAG of stages, wired in order. No stage logic lives here.

Parameters:
  config_path  pipeline.yaml to read (relative paths in it resolve against its directory)
  overrides    dotted keys to override for this run, e.g. {"ingest.workers": 4}
  only         stages to execute (e.g. ["ingest"] or ["clean/web"]); the stages before them must
               already have an artifact for their current version, which is read as is, and the
               stages after them are not run
  force        stages to rebuild even though their version exists; they get a new version salted
               with this run's id (committed artifacts are never overwritten), and so do the
               stages after them

Every stage whose version is already committed ends Cached, so rerunning or retrying a flow run
re-executes only the stages that failed or never ran, and those after them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from pipeline.config import ConfigError, PipelineConfig, load_config
from pipeline.runs import RunRecorder
from pipeline.storage import open_store
from tasks.clean import clean_task
from tasks.filter import filter_task
from tasks.ingest import ingest_task
from tasks.langid import langid_task
from tasks.stage import RunContext

FLOW_NAME = "pretrain-pipeline"
# The per-source chain, in DAG order: each stage reads the artifact of the one before it.
SOURCE_STAGES = (("ingest", ingest_task), ("clean", clean_task), ("langid", langid_task), ("filter", filter_task))
STAGES = tuple(name for name, _ in SOURCE_STAGES)


class PipelineFailed(RuntimeError):
    """One or more stages failed; the run record says which and why."""


def stage_names(config: PipelineConfig) -> set[str]:
    return {"all", *STAGES, *(f"{stage}/{source.name}" for stage in STAGES for source in config.sources)}


def run_source_chain(ctx: RunContext, source: str) -> dict[str, Any]:
    """ingest -> clean -> langid -> filter for one source; a failed stage stops its source's chain only."""
    states: dict[str, Any] = {}
    upstream = None
    for index, (stage, stage_task) in enumerate(SOURCE_STAGES):
        if not any(ctx.selected(f"{later}/{source}") for later in STAGES[index:]):
            break  # `only` names nothing from here on: the rest of the chain is not run
        args = (ctx, source) if upstream is None else (ctx, source, upstream)
        state = stage_task(*args, return_state=True)
        states[f"{stage}/{source}"] = state
        if not state.is_completed():
            break
        upstream = state.result()
    return states


def check_selection(config: PipelineConfig, only: list[str] | None, force: list[str] | None) -> None:
    known = stage_names(config)
    for parameter, names in (("only", only), ("force", force)):
        unknown = sorted(set(names or []) - known)
        if unknown:
            raise ConfigError(f"parameter {parameter}: unknown stage(s) {unknown}; allowed: {sorted(known)}")


@flow(name=FLOW_NAME, log_prints=True, validate_parameters=True)
def pretrain_pipeline(
    config_path: str = "pipeline.yaml",
    overrides: dict[str, Any] | None = None,
    only: list[str] | None = None,
    force: list[str] | None = None,
) -> dict[str, Any]:
    logger = get_run_logger()
    config = load_config(config_path, overrides)
    check_selection(config, only, force)
    store = open_store(config.storage)
    run_id = flow_run.get_id() or "local"
    recorder = RunRecorder(
        store, run_id, flow=FLOW_NAME, config=config.model_dump(mode="json"),
        parameters={"config_path": config_path, "overrides": overrides, "only": only, "force": force},
    )
    ctx = RunContext(
        config=config, store=store, base_dir=Path(config_path).resolve().parent, run_id=run_id,
        recorder=recorder, only=frozenset(only) if only is not None else None, force=frozenset(force or []),
    )
    logger.info("run %s (attempt %s): storage %s", run_id, recorder.record["attempt"], store.uri())

    states: dict[str, Any] = {}
    for source in config.sources:
        states.update(run_source_chain(ctx, source.name))

    failed = {name: state.message for name, state in states.items() if not state.is_completed()}
    if failed:
        for name, message in failed.items():
            recorder.stage_failed(name, message or "failed")
            for stage in STAGES[STAGES.index(name.split("/")[0]) + 1:]:
                recorder.stage(f"{stage}/{name.split('/', 1)[1]}", {"status": "not_run", "error": f"{name} failed"})
        recorder.finish("failed")
        raise PipelineFailed(f"stage(s) failed: {', '.join(sorted(failed))}; run record: {store.uri(recorder.key)}")
    record = recorder.finish("completed")
    for name, stage in sorted(record["stages"].items()):
        logger.info("%-28s %-9s %s", name, stage["status"], stage.get("uri", ""))
    return {"run_id": run_id, "record": store.uri(recorder.key), "stages": record["stages"]}


if __name__ == "__main__":
    pretrain_pipeline()
