"""The training flow (the `pretrain-pipeline/train` deployment): one training stage of a pipeline run, on the
work pool that deployment is on (e.g. a GPU pool). The pipeline's flow starts it when `train.work_pool` is set
(tasks/remote.py), as a child of the stage's task run, and reads the artifact it commits.

Parameters (the pipeline's run fills them in):
  stage        pretrain, cpt or ift (TRAINING_STAGES)
  inputs       the stage's upstream results as artifact references ({artifact, version})
  version      the version the pipeline's run resolved; a different one here fails the run (the deployment's
               code or config differs from the pipeline's)
  run_id       the pipeline's flow run (its lineage, and the salt of a forced stage), run_name its name
  config_path, overrides, force   as the pipeline's run had them

The ranks of the stage are started inside this one flow run by the launcher (tasks/training.py), never as
Prefect tasks; the run holds a slot of `train.concurrency_limit` while it trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from pipeline.config import ConfigError, load_config
from pipeline.storage import open_store
from tasks import cpt, ift, pretrain
from tasks.remote import train_here
from tasks.stage import RunContext

FLOW_NAME = "pretrain-pipeline"  # the deployment is pretrain-pipeline/train, beside pretrain-pipeline/full
TRAINING_STAGES = {"pretrain": pretrain.prepare, "cpt": cpt.prepare, "ift": ift.prepare}


@flow(name=FLOW_NAME, log_prints=True, validate_parameters=True)
def train(stage: str, inputs: dict[str, Any], version: str, run_id: str, run_name: str | None = None,
          config_path: str = "pipeline.yaml", overrides: dict[str, Any] | None = None,
          force: list[str] | None = None) -> dict[str, Any]:
    if stage not in TRAINING_STAGES:
        raise ConfigError(f"parameter stage: {stage!r} is not a training stage; allowed: {sorted(TRAINING_STAGES)}")
    config = load_config(config_path, overrides)
    ctx = RunContext(config=config, store=open_store(config.storage), base_dir=Path(config_path).resolve().parent,
                     run_id=run_id, recorder=None, force=frozenset(force or []), config_path=config_path,
                     overrides=overrides)
    return train_here(ctx, stage, TRAINING_STAGES[stage], inputs, version, run_name)


if __name__ == "__main__":
    train()
