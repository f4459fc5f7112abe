"""The `pretrain-pipeline` Prefect flow: reads and validates the config, records the run, runs the DAG
of stages (flows/dag.py) or the CPT refresh (flows/refresh.py), and reports what failed. No stage
logic lives here.

cpt, ift and eval run when enabled in pipeline.yaml; with cpt.init naming a checkpoint, mixture and
pretrain are skipped (the checkpoint is the base).

Parameters:
  config_path  pipeline.yaml to read (relative paths in it resolve against its directory)
  overrides    dotted keys to override for this run, e.g. {"ingest.workers": 4}
  only         stages to execute (e.g. ["ingest"] or ["clean/web"]); the stages before them must
               already have an artifact for their current version, which is read as is, and the
               stages after them are not run
  force        stages to rebuild even though their version exists; they get a new version salted
               with this run's id (committed artifacts are never overwritten), and so do the
               stages after them
  refresh      the CPT refresh instead of the whole DAG (flows/refresh.py; the `cpt-refresh`
               deployment): the domain sources again, dedup against everything already used, then
               cpt -> ift -> eval from the promoted model

Every stage whose version is already committed ends Cached, so rerunning or retrying a flow run
re-executes only the stages that failed or never ran, and those after them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from pipeline.config import ConfigError, PipelineConfig, load_config
from pipeline.parallel import cluster_session
from pipeline.report import publish_run_report
from pipeline.runs import RunRecorder
from pipeline.storage import open_store
from flows.dag import not_run_after, run_pipeline, stage_names
from flows.refresh import refresh_artifacts, run_refresh
from tasks.stage import RunContext

FLOW_NAME = "pretrain-pipeline"


class PipelineFailed(RuntimeError):
    """One or more stages failed; the run record (of `run_id`) says which and why."""

    def __init__(self, message: str, run_id: str | None = None):
        super().__init__(message)
        self.run_id = run_id


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
    refresh: bool = False,
) -> dict[str, Any]:
    logger = get_run_logger()
    config = load_config(config_path, overrides)
    check_selection(config, only, force)
    store = open_store(config.storage)
    run_id = flow_run.get_id() or "local"
    recorder = RunRecorder(
        store, run_id, flow=FLOW_NAME, config=config.model_dump(mode="json"),
        parameters={"config_path": config_path, "overrides": overrides, "only": only, "force": force,
                    "refresh": refresh},
    )
    ctx = RunContext(
        config=config, store=store, base_dir=Path(config_path).resolve().parent, run_id=run_id,
        recorder=recorder, only=frozenset(only) if only is not None else None, force=frozenset(force or []),
    )
    logger.info("run %s (attempt %s): storage %s", run_id, recorder.record["attempt"], store.uri())

    with cluster_session(config.cluster, log=logger.info):  # data stages' units: local pool, Dask or Ray
        states = run_refresh(ctx, FLOW_NAME) if refresh else run_pipeline(ctx)
    failed = {name: state.message for name, state in states.items() if not state.is_completed()}
    if failed:
        for name, message in failed.items():
            recorder.stage_failed(name, message or "failed")
        blocked = {later for name in failed for later in not_run_after(config, name)} - set(states)
        blocked -= {phase for phase in ("cpt", "ift", "eval") if not getattr(config, phase).enabled}
        if refresh:
            blocked &= set(refresh_artifacts(ctx))
        for name in sorted(blocked):
            recorder.stage(name, {"status": "not_run", "error": "an upstream stage failed"})
        publish_run_report({**recorder.record, "status": "failed"}, store.uri(recorder.key))
        recorder.finish("failed")
        raise PipelineFailed(f"stage(s) failed: {', '.join(sorted(failed))}; run record: {store.uri(recorder.key)}",
                             run_id=run_id)
    # the flow run's own artifacts (summary, funnel) before the record says it finished
    publish_run_report({**recorder.record, "status": "completed"}, store.uri(recorder.key))
    record = recorder.finish("completed")
    for name, stage in sorted(record["stages"].items()):
        logger.info("%-28s %-9s %s", name, stage["status"], stage.get("uri", ""))
    return {"run_id": run_id, "record": store.uri(recorder.key), "stages": record["stages"]}


if __name__ == "__main__":
    pretrain_pipeline()
