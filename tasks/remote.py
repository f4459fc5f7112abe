"""Training stages as their own flow run: what runs a training stage (pretrain, cpt, ift; any stage that
trains) in the pipeline's flow run or, with `train.work_pool` set, as a flow run of the
`pretrain-pipeline/train` deployment (flows/train.py) on that pool, e.g. a GPU pool. Not a stage itself.

A training stage is described by a `prepare(ctx, **inputs) -> (spec, build)` function: its StageSpec (hence
its version) from its upstream results, and the function that builds and commits the artifact. Both sides
call the same `prepare`:

- the pipeline's task (`run_training_stage`) resolves the version; a committed version is Cached without any
  other flow run. Otherwise, in-process, it builds; on a pool, it starts the training flow run with
  `run_deployment` (linked as a child of the task, so the run graph shows it), with the run's config path,
  overrides, the inputs (as artifact references) and the version it expects; waits for it; and reads the
  committed manifest, so the run record, the UI summary and the loss curve are the in-process ones.
- the training flow run (`train_here`) reads the same config, prepares the same spec, refuses a different
  version (its code or config differs from the pipeline's), holds a slot of the global concurrency limit
  `train.concurrency_limit` while it builds, and commits the artifact with the pipeline run's id in its lineage.

A retry of a failed stage starts a new training flow run, which resumes from the checkpoints the failed one
stored under the artifact's prefix, as a retried in-process stage does.
"""

from __future__ import annotations

from typing import Any, Callable

from pipeline.artifacts import StageSpec, built_by, read_manifest

from .stage import RunContext, StageProgress, artifact_key, execute_stage, stage_result
from .training import publish_curve

TRAIN_DEPLOYMENT = "pretrain-pipeline/train"
POLL_SECONDS = 2
Prepare = Callable[..., tuple[StageSpec, Callable[[Callable[[str], None]], dict]]]


class TrainingRunFailed(RuntimeError):
    """The training flow run did not complete (or could not be started); the message is one line."""


def reference(value: Any) -> Any:
    """An upstream result (or a mapping of them) as the artifact references a training flow run's parameters
    carry: {artifact, version} is all `upstream_manifest` reads."""
    if isinstance(value, dict) and "artifact" in value and "version" in value:
        return {"artifact": value["artifact"], "version": value["version"]}
    if isinstance(value, dict):
        return {key: reference(item) for key, item in value.items()}
    return value


def run_training_stage(ctx: RunContext, stage: str, prepare: Prepare, inputs: dict[str, Any]) -> Any:
    """The body of a training stage's task: Cached, or built here, or built by a training flow run on the pool."""
    spec, build = prepare(ctx, **inputs)
    remote = (lambda: start_training_run(ctx, stage, spec, inputs)) if ctx.config.train.work_pool else None
    result = execute_stage(ctx, spec, build, remote=remote)
    publish_curve(ctx.store, spec.prefix, stage)
    return result


def training_parameters(ctx: RunContext, stage: str, spec: StageSpec, inputs: dict[str, Any],
                        run_name: str | None) -> dict[str, Any]:
    """The parameters of flows/train.py's flow for this stage of this run."""
    return {"stage": stage, "inputs": reference(inputs), "version": spec.version, "run_id": ctx.run_id,
            "run_name": run_name, "config_path": str(ctx.config_path or "pipeline.yaml"), "overrides": ctx.overrides,
            "force": sorted(ctx.force)}


def failure_reason(stage: str, run_name: str, pool: str, state_name: str, message: str | None) -> str:
    """One line: which training flow run ended how, and the first line of why."""
    reason = (message or "").strip().splitlines()[0] if (message or "").strip() else "no message"
    reason = reason.removeprefix("Flow run encountered an exception: ")
    return f"{stage}: training flow run {run_name} on work pool {pool} ended {state_name}: {reason}"


def start_training_run(ctx: RunContext, stage: str, spec: StageSpec, inputs: dict[str, Any]) -> dict:
    """Run the stage as a flow run of the train deployment, wait for it, and return the committed manifest."""
    from prefect import get_client, get_run_logger
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.runtime import flow_run

    settings, logger = ctx.config.train, get_run_logger()
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(TRAIN_DEPLOYMENT)
        except ObjectNotFound:
            raise TrainingRunFailed(f"{stage}: train.work_pool is {settings.work_pool!r} but the Prefect server has no "
                                    f"deployment {TRAIN_DEPLOYMENT}; register it on that pool: prefect deploy --name "
                                    f"train --pool {settings.work_pool}") from None
    if deployment.work_pool_name != settings.work_pool:
        raise TrainingRunFailed(f"{stage}: train.work_pool is {settings.work_pool!r} but the deployment "
                                f"{TRAIN_DEPLOYMENT} is on work pool {deployment.work_pool_name!r}; register it there: "
                                f"prefect deploy --name train --pool {settings.work_pool}")
    run_name = flow_run.get_name()
    logger.info("%s: starting a training flow run of %s on work pool %s%s", spec.artifact, TRAIN_DEPLOYMENT,
                settings.work_pool, f" with job variables {settings.job_variables}" if settings.job_variables else "")
    child = run_deployment(TRAIN_DEPLOYMENT, parameters=training_parameters(ctx, stage, spec, inputs, run_name),
                           flow_run_name=f"{run_name}-{stage}" if run_name else None,
                           job_variables=dict(settings.job_variables) or None, work_queue_name=settings.work_queue,
                           as_subflow=True, timeout=None, poll_interval=POLL_SECONDS)
    if child.state is None or not child.state.is_completed():
        raise TrainingRunFailed(failure_reason(stage, child.name, settings.work_pool,
                                               child.state.name if child.state else "without a state",
                                               child.state.message if child.state else None))
    manifest = read_manifest(ctx.store, spec.artifact, spec.version)
    if manifest is None:
        raise TrainingRunFailed(f"{stage}: training flow run {child.name} completed but {spec.artifact}@{spec.version} "
                                f"is not committed in {ctx.store.uri()}")
    logger.info("%s: training flow run %s committed version %s", spec.artifact, child.name, spec.version)
    return manifest


def train_here(ctx: RunContext, stage: str, prepare: Prepare, inputs: dict[str, Any], version: str,
               run_name: str | None) -> dict:
    """What a training flow run does: the same spec as the pipeline's run, one concurrency slot, build, commit.
    Returns the stage's result (status executed, or cached when an earlier training run committed it)."""
    from prefect.logging import get_run_logger
    from prefect.runtime import flow_run

    logger = get_run_logger()
    spec, build = prepare(ctx, **inputs)
    if spec.version != version:
        raise RuntimeError(f"{stage}: this training run resolves version {spec.version} where the pipeline's run "
                           f"{ctx.run_id} resolved {version}: the train deployment's code or config differs from "
                           f"the pipeline's")
    existing = read_manifest(ctx.store, spec.artifact, spec.version)
    if existing is not None:
        logger.info("%s: version %s already committed at %s", spec.artifact, version, existing["uri"])
        return stage_result(existing, "cached")
    progress = StageProgress(logger.info, artifact_key(spec.artifact), spec.artifact)
    with concurrency_slot(ctx.config.train.concurrency_limit, logger.info), \
            built_by(flow_run_id=ctx.run_id, flow_run_name=run_name, training_flow_run_id=flow_run.get_id(),
                     training_flow_run_name=flow_run.get_name()):
        logger.info("%s: building version %s at %s", spec.artifact, version, ctx.store.uri(spec.prefix))
        manifest = build(progress)
    return stage_result(manifest, "executed")


def concurrency_slot(limit, log: Callable[[str], None]):
    """A slot of the global concurrency limit `limit.name` (none when it is null), waited for as long as it takes.
    A limit missing on the server is an error, not a free pass (Prefect's default)."""
    import contextlib

    if limit.name is None:
        return contextlib.nullcontext()
    from prefect import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(limit.name)
        except ObjectNotFound:
            raise RuntimeError(f"train.concurrency_limit.name: the Prefect server has no global concurrency limit "
                               f"{limit.name!r}; create it (`prefect gcl create {limit.name} --limit {limit.slots}`; "
                               f"make up does) or set the name to null") from None
    log(f"waiting for a slot of the concurrency limit {limit.name!r} ({found.active_slots}/{found.limit} taken)")
    return concurrency(limit.name, occupy=1, strict=True)
