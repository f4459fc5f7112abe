"""The local stack end to end: `prefect deployment run pretrain-pipeline/full` through a real Prefect
server and worker, writing to a real SeaweedFS; and a failed run retried with `prefect flow-run retry`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid

import pytest

from flows.dag import GLOBAL_STAGES, STAGES
from pipeline import stack as local_stack
from pipeline.runs import read_run
from pipeline.seaweed import free_port_block
from pipeline.storage import S3Store
from tests.conftest import REPO
from tests.flows.helpers import sample_sources, write_pages

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s3_port, prefect_port = free_port_block(2)
    directory = tmp_path_factory.mktemp("stack")
    running = local_stack.up(directory, s3_port=s3_port, prefect_port=prefect_port)
    yield running
    local_stack.down(directory)


def _prefect(stack, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, **stack.env()}
    return subprocess.run([local_stack._bin("prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _store(stack, bucket: str) -> S3Store:
    os.environ.update(stack.s3.env())
    store = S3Store(bucket, "demo", endpoint_url=stack.s3.endpoint_url)
    store.ensure_bucket()
    return store


# The sample as the demo runs it, with a few training steps instead of the demo's ~600.
QUICK_TRAINING = {"train.steps": 4, "train.checkpoint_every": 2, "train.warmup_steps": 1, "cpt.steps": 2,
                  "cpt.warmup_steps": 1, "ift.steps": 2, "ift.warmup_steps": 1, "eval.max_chat_sequences": 8,
                  "eval.generated.cloze_items": 10, "eval.generated.last_word_items": 10}


def _run_deployment(stack, overrides: dict, deployment: str = "full") -> tuple[subprocess.CompletedProcess, str]:
    result = _prefect(stack, "deployment", "run", f"pretrain-pipeline/{deployment}", "--params",
                      json.dumps({"overrides": {**QUICK_TRAINING, **overrides}}), "--watch", "--watch-timeout", "300")
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", result.stdout)
    assert match, result.stdout + result.stderr
    return result, match.group(1)


def test_deployment_run_completes_and_writes_artifacts(stack):
    bucket = "deploy-" + uuid.uuid4().hex[:10]
    store = _store(stack, bucket)
    result, run_id = _run_deployment(stack, {"storage.endpoint_url": stack.s3.endpoint_url, "storage.bucket": bucket})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Completed" in result.stdout
    record = read_run(store, run_id)
    assert record["status"] == "completed"
    assert set(record["stages"]) == {stage if stage in GLOBAL_STAGES else f"{stage}/{source['name']}"
                                     for stage in STAGES for source in sample_sources()}
    for name, stage in record["stages"].items():
        counts = stage["counts"]
        assert stage["status"] == "executed"
        assert counts.get("documents", counts.get("sequences", counts.get("vocab_size", counts.get(
            "steps", counts.get("models"))))) > 0, name
        assert store.exists(stage["uri"].split(f"s3://{bucket}/demo/", 1)[1] + "/manifest.json")

    # the cpt-refresh deployment: its schedule from pipeline.yaml, created paused; a manual run after the
    # full one finds no new domain document (dedup against everything already used) and stops there
    refresh, refresh_id = _run_deployment(stack, {"storage.endpoint_url": stack.s3.endpoint_url,
                                                  "storage.bucket": bucket}, deployment="cpt-refresh")
    assert refresh.returncode == 0, refresh.stdout + refresh.stderr
    refreshed = read_run(store, refresh_id)
    assert refreshed["status"] == "completed" and refreshed["parameters"]["refresh"] is True
    assert refreshed["stages"]["dedup"]["counts"]["removed"] == {
        "duplicate_of_earlier_run": record["stages"]["dedup"]["counts"]["sources"]["docs"]["documents_in"]}
    assert refreshed["stages"]["cpt"]["status"] == "not_run"
    assert refreshed["stages"]["ingest/docs"]["status"] == "cached" and "ingest/web" not in refreshed["stages"]


def test_the_refresh_schedule_comes_from_the_config_and_is_paused(stack):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipeline.config import load_config

    expected = load_config(REPO / "pipeline.yaml").refresh
    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("pretrain-pipeline/cpt-refresh")
        [schedule] = client.read_deployment_schedules(deployment.id)
    assert schedule.schedule.cron == expected.cron and schedule.schedule.timezone == expected.timezone
    assert schedule.active is False and deployment.parameters["refresh"] is True


def test_retry_of_a_failed_run_reexecutes_only_the_failed_stage(stack, tmp_path):
    bucket = "retry-" + uuid.uuid4().hex[:10]
    store = _store(stack, bucket)
    sources = sample_sources() + [{"name": "late", "kind": "warc", "location": f"s3://{bucket}/incoming/"}]
    overrides = {"storage.endpoint_url": stack.s3.endpoint_url, "storage.bucket": bucket, "sources": sources}
    result, run_id = _run_deployment(stack, overrides)
    assert result.returncode != 0 and "Failed" in result.stdout, result.stdout
    first = read_run(store, run_id)
    assert first["status"] == "failed" and first["stages"]["ingest/late"]["status"] == "failed"
    # dedup reads every source: it and the filters wait for the late one; the other chains ran
    not_run = {name for name, stage in first["stages"].items() if stage["status"] == "not_run"}
    assert not_run == {"clean/late", "langid/late", "dedup", "tokenizer", "mixture", "pretrain", "cpt", "ift", "eval",
                       *(f"{stage}/{s['name']}" for stage in ("filter", "tokens") for s in sources)}
    built = {name: stage["version"] for name, stage in first["stages"].items()
             if not name.endswith("/late") and name not in not_run}
    assert all(first["stages"][name]["status"] == "executed" for name in built)

    store.client.upload_file(str(write_pages(tmp_path / "late.warc.gz", pages=3, seed=5)), bucket,
                             "incoming/late.warc.gz")
    retry = _prefect(stack, "flow-run", "retry", run_id)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        second = read_run(store, run_id)
        if second["attempt"] == 2 and second["status"] != "running":
            break
        time.sleep(1)
    inspect = _prefect(stack, "flow-run", "inspect", run_id)
    assert re.search(r"type=StateType.COMPLETED|'type': 'COMPLETED'|COMPLETED", inspect.stdout), inspect.stdout
    assert second["status"] == "completed" and second["attempt"] == 2
    for name in not_run | {"ingest/late"}:
        assert second["stages"][name]["status"] == "executed"
        assert second["stages"][name]["attempt"] == 2
    for name, version in built.items():
        assert second["stages"][name] == {**second["stages"][name], "status": "cached", "version": version}


def test_the_ui_shows_a_finished_run_with_every_stage_completed(stack, tmp_path, record_property):
    """Headless Chromium opens the UI page of the finished full run; the page says Completed with all its
    task runs, and the screenshot (test-reports/ui/, recorded as the test's `screenshot` property) shows
    the run graph with every task run in the Completed colour and none in Failed's."""
    import re

    import numpy as np
    from matplotlib.image import imread
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterName, FlowRunFilter,
                                                FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.flows.ui_browser import render

    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        finished = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.COMPLETED]))), deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["full"])))
        # the run of test_deployment_run_completes_and_writes_artifacts (the retried run of the retry test
        # also ended Completed, but keeps its first attempt's failed task run)
        finished = [run for run in finished
                    if (run.parameters.get("overrides") or {}).get("storage.bucket", "").startswith("deploy-")]
        assert finished, "no completed run of pretrain-pipeline/full (test_deployment_run_completes_... runs first)"
        run = finished[0]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert tasks and {task.state.type for task in tasks} == {StateType.COMPLETED}

    screenshot = REPO / "test-reports" / "ui" / f"flow-run-{run.name}.png"
    dom = render(f"{stack.ui_url}/runs/flow-run/{run.id}", tmp_path / "chromium", screenshot=screenshot)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert run.name in text and "Completed" in text, text[:2000]
    assert f"{len(tasks)} Task runs" in text, text[:2000]
    assert "Failed" not in text.split("Logs")[0]  # the header and the graph's legend: no failed state
    record_property("screenshot", str(screenshot))
    print(f"screenshot: {screenshot}")

    image = imread(screenshot)[..., :3]
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    completed = (green > 0.5) & (red < 0.35) & (blue < 0.45)  # Prefect's Completed green
    failed = (red > 0.7) & (green < 0.3) & (blue < 0.3)  # Failed / Crashed red
    graph = slice(int(image.shape[0] * 0.08), int(image.shape[0] * 0.36))  # the run graph under the header
    assert completed[graph].sum() > 2000, "the run graph shows no completed task runs"
    assert failed[graph].sum() < 50, "the run graph shows failed task runs"
