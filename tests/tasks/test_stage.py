"""The stage modules' thin Prefect tasks: real Prefect tasks when a flow uses them, no Prefect import before."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prefect import Task

from tasks.clean import clean_task
from tasks.proxy_eval import proxy_eval_task

REPO = Path(__file__).resolve().parents[2]
STAGE_MODULES = ("ingest", "clean", "langid", "dedup", "filter", "tokenizer", "tokenize", "mixture", "pretrain",
                 "cpt", "ift", "evaluate", "heldout", "proxy_eval", "ablation")


def test_the_stage_cores_and_the_config_load_without_prefect():
    """What a local pool's fork server and its workers import (they unpickle the unit functions from these
    modules), and what a config load validates, cron schedule included."""
    code = ("import sys\n"
            + "".join(f"import tasks.{module}\n" for module in STAGE_MODULES)
            + "from pipeline.config import load_config\n"
            + "load_config('pipeline.yaml', {'refresh.cron': '*/5 * * * 1-5', 'refresh.timezone': 'Europe/Berlin'})\n"
            + "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_stage_task_is_a_prefect_task_with_the_stage_options():
    task = clean_task.task
    assert isinstance(task, Task) and clean_task.task is task  # built once
    assert (task.name, task.task_run_name, task.persist_result) == ("clean", "clean[{source_name}]", False)
    assert type(task.cache_policy).__name__ == "_None"  # NO_CACHE: the artifact version is the cache
    assert clean_task.fn is task.fn and clean_task.__name__ == "clean_task" and clean_task.__doc__ == task.fn.__doc__
    assert proxy_eval_task.log_prints is False and clean_task.log_prints is None
