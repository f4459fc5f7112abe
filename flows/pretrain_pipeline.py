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

pipeline.yaml's `stop_after` (e.g. tokens: the data stages only) acts as an `only` of every stage up
to it when `only` is not given. A failed run's record lists as not_run only the stages this run
selected that a failure kept from running; a retry forgets the not_run entries of the attempt before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from pipeline.config import PIPELINE_STAGES, ConfigError, PipelineConfig, load_config
from pipeline.parallel import cluster_session
from pipeline.report import publish_run_report
from pipeline.runs import RunRecorder
from pipeline.sources import check_location
from pipeline.storage import open_store
from flows.dag import downstream, not_run_after, run_pipeline, stage_names
from flows.refresh import refresh_artifacts, run_refresh
from tasks.checkpoints import check_base_checkpoint
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


def selection(config: PipelineConfig, only: list[str] | None) -> frozenset[str] | None:
    """What a run executes: `only`, else every stage up to `stop_after`, else everything (None)."""
    if only is not None:
        return frozenset(only)
    if config.stop_after is not None:
        return frozenset(PIPELINE_STAGES[: PIPELINE_STAGES.index(config.stop_after) + 1])
    return None


def sources_read(config: PipelineConfig, only: list[str] | None, refresh: bool = False) -> list:
    """The sources whose inputs a run lists: those whose ingest or a stage after it is selected."""
    chosen = selection(config, only)
    sources = [s for s in config.sources if s.role == "domain"] if refresh else config.sources
    return [source for source in sources
            if chosen is None or any(RunContext._named(name, chosen) for name in downstream(config, "ingest", source.name))]


def preflight(config: PipelineConfig, config_path: str | Path, only: list[str] | None, force: list[str] | None,
              refresh: bool = False) -> None:
    """What `pretrain-pipeline run` checks before it starts the flow: the stage names, that every source the
    run reads exists and can be read (SourceError naming sources.<name>.location), and the user's checkpoint the
    model phases start from, if any (ConfigError naming cpt.init or ift.init)."""
    check_selection(config, only, force)
    base_dir = Path(config_path).resolve().parent
    for source in sources_read(config, only, refresh):
        check_location(source, config.storage, base_dir)
    check_base_checkpoint(config, base_dir)


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
    check_base_checkpoint(config, Path(config_path).resolve().parent)  # before any work: can it be used?
    store = open_store(config.storage)
    run_id = flow_run.get_id() or "local"
    recorder = RunRecorder(
        store, run_id, flow=FLOW_NAME, config=config.model_dump(mode="json"),
        parameters={"config_path": config_path, "overrides": overrides, "only": only, "force": force,
                    "refresh": refresh},
    )
    recorder.forget("not_run")  # an earlier attempt's; this attempt decides again
    ctx = RunContext(
        config=config, store=store, base_dir=Path(config_path).resolve().parent, run_id=run_id,
        recorder=recorder, only=selection(config, only), force=frozenset(force or []), config_path=config_path,
        overrides=overrides,
    )
    logger.info("run %s (attempt %s): storage %s", run_id, recorder.record["attempt"], store.uri())

    with cluster_session(config.cluster, log=logger.info):  # data stages' units: local pool, Dask or Ray
        states = run_refresh(ctx, FLOW_NAME) if refresh else run_pipeline(ctx)
    failed = {name: state.message for name, state in states.items() if not state.is_completed()}
    if failed:
        for name, message in failed.items():
            recorder.stage_failed(name, message or "failed")
        blocked = {later for name in failed for later in not_run_after(config, name)} - set(states)
        blocked = {name for name in blocked if ctx.selected(name)}  # never what `only` left out
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
