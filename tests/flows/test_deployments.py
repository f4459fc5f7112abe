"""The local stack end to end: `prefect deployment run pretrain-pipeline/full` through a real Prefect
server and worker, writing to a real SeaweedFS; and a failed run retried with `prefect flow-run retry`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from flows.dag import GLOBAL_STAGES, STAGES
from pipeline import stack as local_stack
from pipeline.follow import follow
from pipeline.runs import read_run
from pipeline.seaweed import free_port_block
from pipeline.storage import S3Store
from tests.conftest import REPO
from tests.flows.helpers import sample_sources, write_pages

pytestmark = pytest.mark.stack
SCHEDULER_LOOP_S = 5


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # _store points boto3 at this stack's credentials through the environment; the modules after this one get the
    # session SeaweedFS's back.
    environment = dict(os.environ)
    s3_port, prefect_port = free_port_block(2)
    directory = tmp_path_factory.mktemp("stack")
    with pytest.MonkeyPatch.context() as patch:
        # The server's scheduler visits every deployment every 60 s by default; every SCHEDULER_LOOP_S here, so
        # that the schedule test's run can be due soon.
        patch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", str(SCHEDULER_LOOP_S))
        running = local_stack.up(directory, s3_port=s3_port, prefect_port=prefect_port)
    yield running
    local_stack.down(directory)
    os.environ.clear()
    os.environ.update(environment)


def _prefect(stack, *args: str, timeout: int = 700) -> subprocess.CompletedProcess:
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


def _run_deployment(stack, overrides: dict, deployment: str = "full",
                    parameters: dict | None = None) -> tuple[subprocess.CompletedProcess, str]:
    result = _prefect(stack, "deployment", "run", f"pretrain-pipeline/{deployment}", "--params",
                      json.dumps({"overrides": {**QUICK_TRAINING, **overrides}, **(parameters or {})}), "--watch",
                      "--watch-timeout", "600")
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", result.stdout)
    assert match, result.stdout + result.stderr
    return result, match.group(1)


@pytest.mark.timeout(900)  # a full run and a refresh; minutes more when the machine is busy
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
    assert {refreshed["stages"][name]["status"] for name in ("filter/docs", "tokens/docs", "cpt", "ift", "eval")} \
        == {"not_run"}
    assert refreshed["note"].startswith("not trained: no new domain documents since run ")
    assert refreshed["stages"]["ingest/docs"]["status"] == "cached" and "ingest/web" not in refreshed["stages"]


def _finished_full_run(client):
    """The run of test_deployment_run_completes_and_writes_artifacts (its bucket starts with deploy-)."""
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterName, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType

    finished = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
            any_=[StateType.COMPLETED]))), deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["full"])))
    finished = [run for run in finished
                if (run.parameters.get("overrides") or {}).get("storage.bucket", "").startswith("deploy-")]
    assert finished, "no completed run of pretrain-pipeline/full (test_deployment_run_completes_... runs first)"
    return finished[0]


def test_lineage_of_the_promoted_model_reaches_every_raw_file(stack, capsys):
    """`pretrain-pipeline lineage current`: from the model the gate promoted back to the sample's files,
    each step with its config digest, code version, git sha and the flow run (through the worker) that built it."""
    from pipeline.artifacts import sha256_file
    from pipeline.cli import main

    with _client(stack) as client:
        run = _finished_full_run(client)
    bucket = run.parameters["overrides"]["storage.bucket"]
    _store(stack, bucket)
    settings = ["-c", str(REPO / "pipeline.yaml"), "--set", f"storage.endpoint_url={stack.s3.endpoint_url}",
                "--set", f"storage.bucket={bucket}"]
    assert main(["lineage", "current", "--json", *settings]) == 0
    tree = json.loads(capsys.readouterr().out)
    nodes = tree["nodes"]
    assert tree["root"].startswith(("ift@", "cpt@"))
    sources = sample_sources()
    artifacts = {node["artifact"] for node in nodes.values()}
    assert {"cpt", "pretrain", "mixture", "tokenizer", "dedup"} <= artifacts
    assert {f"{stage}/{s['name']}" for stage in ("ingest", "clean", "langid", "filter", "tokens") for s in sources} \
        <= artifacts
    git_sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    for node in nodes.values():
        assert (node["flow_run_id"], node["flow_run_name"]) == (str(run.id), run.name), node
        assert node["git_sha"] == git_sha and node["code_version"] and len(node["config_sha256"]) == 64
    for source in sources:
        [ingest] = [node for node in nodes.values() if node["artifact"] == f"ingest/{source['name']}"]
        location = Path(source["location"])
        assert ingest["files"] and all(
            row["fingerprint"] == sha256_file(location / row["path"] if location.is_dir() else location)
            for row in ingest["files"])
    assert main(["lineage", "current", *settings]) == 0
    text = capsys.readouterr().out
    assert text.startswith(tree["root"]) and "(above)" in text and text.count("── file ") == sum(
        len(node.get("files", [])) for node in nodes.values())


def test_the_run_shows_its_summary_and_funnel_first_and_keys_sort_in_dag_order(stack):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from pipeline.artifacts import STAGES

    with _client(stack) as client:
        run = _finished_full_run(client)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    own = {artifact.key: artifact for artifact in artifacts if artifact.task_run_id is None}
    assert set(own) == {"00-run-summary", "00-run-funnel"}  # the UI's "Flow run" section, above the task runs'
    assert f"### Run {run.id}: completed" in own["00-run-summary"].data
    funnel = json.loads(own["00-run-funnel"].data) if isinstance(own["00-run-funnel"].data, str) \
        else own["00-run-funnel"].data
    rows = {(row["stage"], row["source"]): row for row in funnel}
    for source in (s["name"] for s in sample_sources()):
        for earlier, later in (("ingest", "clean"), ("clean", "langid"), ("langid", "dedup"), ("dedup", "filter"),
                               ("filter", "tokens")):
            assert rows[earlier, source]["documents_out"] == rows[later, source]["documents_in"], (earlier, source)
    assert rows["dedup", "(all)"]["removed_by_reason"]
    keys = sorted(artifact.key for artifact in artifacts if artifact.task_run_id is not None
                  and not artifact.key.endswith("-loss-curve"))  # tasks/training.py names these itself
    assert keys
    for key in keys:
        position, stage = re.match(r"^(\d\d)-([a-z]+)", key).groups()
        assert STAGES[int(position) - 1] == stage, key


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


@pytest.mark.timeout(600)  # two runs through the whole DAG: ~5 min on a busy 2-core machine
def test_retry_of_a_failed_run_reexecutes_only_the_failed_stage(stack, tmp_path):
    bucket = "retry-" + uuid.uuid4().hex[:10]
    store = _store(stack, bucket)
    sources = sample_sources() + [{"name": "late", "kind": "warc", "location": f"s3://{bucket}/incoming/"}]
    overrides = {"storage.endpoint_url": stack.s3.endpoint_url, "storage.bucket": bucket, "sources": sources}
    result, run_id = _run_deployment(stack, overrides)
    assert result.returncode != 0 and "Failed" in result.stdout, result.stdout
    first = read_run(store, run_id)
    assert first["status"] == "failed" and first["stages"]["ingest/late"]["status"] == "failed"
    followed: list[str] = []
    assert follow(stack.api_url, run_id, emit=followed.append) == "Failed"
    assert re.fullmatch(r"flow run \S+: Failed: .*stage\(s\) failed: ingest/late; run record: s3://.*", followed[-2])
    assert followed[-1].startswith("  ingest[late]: Failed: ")
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
    with _client(stack) as client:
        _wait_final(client, run_id, timeout=60)  # the flow run's state follows its record by a moment
    inspect = _prefect(stack, "flow-run", "inspect", run_id)
    assert re.search(r"type=StateType.COMPLETED|'type': 'COMPLETED'|COMPLETED", inspect.stdout), inspect.stdout
    assert second["status"] == "completed" and second["attempt"] == 2
    for name in not_run | {"ingest/late"}:
        assert second["stages"][name]["status"] == "executed"
        assert second["stages"][name]["attempt"] == 2
    for name, version in built.items():
        assert second["stages"][name] == {**second["stages"][name], "status": "cached", "version": version}


def _training_runs(client, parent_id) -> list:
    """The flow runs of the train deployment that are children of the pipeline run `parent_id`."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    train = client.read_deployment_by_name("pretrain-pipeline/train")
    return [run for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]))) if run.deployment_id == train.id]


@pytest.mark.timeout(1500)  # the DAG to ift, two Cached reruns, a failing forced pretrain (busy machine: minutes)
def test_training_runs_as_child_flow_runs_on_the_gpu_pool(stack):
    """`train.work_pool: local-gpu`: pretrain, cpt and ift run as flow runs of pretrain-pipeline/train on the
    second pool (its own worker), children of the pipeline run's task runs, holding the stage's progress
    bar; a rerun is Cached without any training run, and so is a rerun in-process (the versions the training
    runs committed are the in-process ones); a training run that fails (the pool's job variable `command`
    set to `false`) fails the stage with a one-line reason. Eval is off: it is not a training stage."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from pipeline.artifacts import read_manifest

    bucket = "pool-" + uuid.uuid4().hex[:10]
    store = _store(stack, bucket)
    in_process = {"storage.endpoint_url": stack.s3.endpoint_url, "storage.bucket": bucket, "eval.enabled": False}
    pooled = {**in_process, "train.work_pool": local_stack.TRAIN_POOL}
    result, run_id = _run_deployment(stack, pooled)
    assert result.returncode == 0, result.stdout + result.stderr
    record = read_run(store, run_id)
    assert record["status"] == "completed"
    assert {stage["status"] for stage in record["stages"].values()} == {"executed"}
    with _client(stack) as client:
        run = client.read_flow_run(run_id)
        children = _training_runs(client, run_id)
        parents = {child.name: client.read_task_run(child.parent_task_run_id) for child in children}
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[child.id for child in children])))
    assert sorted(child.parameters["stage"] for child in children) == ["cpt", "ift", "pretrain"]
    for child in children:
        stage = child.parameters["stage"]
        assert child.name == f"{run.name}-{stage}" and child.work_pool_name == local_stack.TRAIN_POOL
        assert child.state.is_completed() and parents[child.name].flow_run_id == run.id
        assert parents[child.name].state.is_completed()
        build = read_manifest(store, stage, record["stages"][stage]["version"])["build"]
        assert (build["flow_run_id"], build["training_flow_run_id"]) == (run_id, str(child.id))
    assert {artifact.key for artifact in artifacts} >= {"09-pretrain-progress", "10-cpt-progress", "11-ift-progress"}

    for overrides in (pooled, in_process):  # cached on the pool: no training run; in-process: the same versions
        rerun, rerun_id = _run_deployment(stack, overrides)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        again = read_run(store, rerun_id)["stages"]
        assert {name: (stage["status"], stage["version"]) for name, stage in again.items()} == \
            {name: ("cached", stage["version"]) for name, stage in record["stages"].items()}
        with _client(stack) as client:
            assert _training_runs(client, rerun_id) == []

    failing, failing_id = _run_deployment(stack, {**pooled, "train.job_variables": {"command": "false"}},
                                          parameters={"force": ["pretrain"]})
    assert failing.returncode != 0 and "Failed" in failing.stdout
    failed = read_run(store, failing_id)
    error = failed["stages"]["pretrain"]["error"]
    assert failed["status"] == "failed" and failed["stages"]["pretrain"]["status"] == "failed"
    assert "\n" not in error and re.search(r"pretrain: training flow run \S+-pretrain on work pool local-gpu ended "
                                           r"Crashed: .*exited", error), error
    assert {failed["stages"][name]["status"] for name in ("cpt", "ift")} == {"not_run"}


def test_the_ui_shows_a_finished_run_with_every_stage_completed(stack, tmp_path, record_property):
    """Headless Chromium opens the UI page of the finished full run; the page says Completed with all its
    task runs, and the screenshot (test-reports/ui/, recorded as the test's `screenshot` property) shows
    the run graph with every task run in the Completed colour and none in Failed's."""
    import re

    from matplotlib.image import imread
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.objects import StateType

    from tests.flows.ui_browser import render

    with _client(stack) as client:
        # the run of test_deployment_run_completes_and_writes_artifacts (the retried run of the retry test
        # also ended Completed, but keeps its first attempt's failed task run)
        run = _finished_full_run(client)
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


@contextlib.contextmanager
def _client(stack):
    """A Prefect client of the stack's server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        yield client


def _wait_final(client, flow_run_id, timeout: float = 420):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} not final after {timeout:.0f}s: {run.state}")


def test_a_due_schedule_gets_a_flow_run_that_the_worker_completes(stack):
    """The Prefect scheduler service itself creates the run (with SQLAlchemy 2.1 it created none and logged
    `Can't evaluate bulk DML statement` every loop), and the worker runs it to Completed: a one-off
    schedule on the `ingest` deployment, writing to a bucket of its own, due 4 scheduler loops ahead so that the
    scheduler (every SCHEDULER_LOOP_S in this stack) comes by while it is still in the future."""
    import datetime as dt

    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
    from prefect.client.schemas.schedules import RRuleSchedule

    bucket = "scheduled-" + uuid.uuid4().hex[:10]
    store = _store(stack, bucket)
    due = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=4 * SCHEDULER_LOOP_S)).replace(microsecond=0)
    schedule = RRuleSchedule(rrule=f"DTSTART:{due:%Y%m%dT%H%M%S}\nRRULE:FREQ=MINUTELY;COUNT=1", timezone="UTC")
    overrides = {"storage.endpoint_url": stack.s3.endpoint_url, "storage.bucket": bucket}
    with _client(stack) as client:
        deployment = client.read_deployment_by_name("pretrain-pipeline/ingest")
        [created] = client.create_deployment_schedules(deployment.id, [DeploymentScheduleCreate(
            schedule=schedule, active=True, slug="test-due-soon", parameters={"overrides": overrides})])
        try:
            deadline, runs = time.monotonic() + 240, []
            while not runs and time.monotonic() < deadline:
                runs = [run for run in client.read_flow_runs(deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[deployment.id])), flow_run_filter=FlowRunFilter())
                        if run.created_by is not None and run.created_by.id == created.id]
                time.sleep(2)
            assert len(runs) == 1, "the scheduler created no flow run for a schedule that was due"
            [run] = runs
            assert run.auto_scheduled and run.created_by.type == "SCHEDULE"
            finished = _wait_final(client, run.id)
        finally:
            client.delete_deployment_schedule(deployment.id, created.id)
    assert finished.state.is_completed(), finished.state
    assert finished.parameters["overrides"] == overrides and finished.parameters["only"] == ["ingest"]
    record = read_run(store, str(run.id))
    assert record["status"] == "completed"
    assert {name: stage["status"] for name, stage in record["stages"].items()} == \
        {f"ingest/{source['name']}": "executed" for source in sample_sources()}


def test_the_automations_exist_and_fire_on_a_failed_run(stack, tmp_path):
    """`make up` created both automations of pipeline.yaml's `alerts:`; pointed at a webhook block (a local
    HTTP server), the failed-run one sends a notification naming a run that failed."""
    import http.server
    import threading

    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipeline.alerts import FAILED_RUN, LATE_REFRESH, apply_alerts
    from pipeline.config import AlertsConfig, load_config
    from pipeline.seaweed import free_port_block

    with _client(stack) as client:
        [failed] = client.read_automations_by_name(FAILED_RUN)
        [late] = client.read_automations_by_name(LATE_REFRESH)
        refresh = client.read_deployment_by_name("pretrain-pipeline/cpt-refresh")
    assert failed.enabled and failed.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert failed.trigger.match_related.get("prefect.resource.name") == ["pretrain-pipeline"]
    assert [action.type for action in failed.actions] == ["do-nothing"]  # pipeline.yaml: notify: null
    assert late.trigger.posture == "Proactive" and late.trigger.after == {"prefect.flow-run.Late"}
    assert late.trigger.within.total_seconds() == load_config(REPO / "pipeline.yaml").alerts.late_refresh.within_seconds
    assert late.trigger.match_related.get("prefect.resource.id") == [f"prefect.deployment.{refresh.id}"]

    received: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    [port] = free_port_block(1)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with temporary_settings({PREFECT_API_URL: stack.api_url}):
            CustomWebhookNotificationBlock(name="alerts-test", url=f"http://127.0.0.1:{port}/hook",
                                           json_data={"subject": "{{subject}}", "body": "{{body}}"}).save(
                "alerts-test", overwrite=True)
        apply_alerts(stack.api_url, AlertsConfig(notify="custom-webhook/alerts-test"))
        bucket = "alert-" + uuid.uuid4().hex[:10]
        _store(stack, bucket)
        result, run_id = _run_deployment(stack, {"storage.endpoint_url": stack.s3.endpoint_url,
                                                 "storage.bucket": bucket, "sources": [
                                                     {"name": "gone", "kind": "warc", "location": str(tmp_path / "gone")}]},
                                         deployment="ingest")
        assert result.returncode != 0 and "Failed" in result.stdout
        # `prefect deployment run --watch` says only "Failed"; `pretrain-pipeline watch` says why
        watch = subprocess.run([sys.executable, "-m", "pipeline.cli", "watch", run_id], cwd=REPO, capture_output=True,
                               text=True, env={**os.environ, **stack.env()}, timeout=120)
        assert watch.returncode == 1
        assert re.search(r"^flow run \S+: Failed: .*ConfigError: .*\n.*mixture\.weights: no source named",
                         watch.stdout, re.M), watch.stdout
        deadline = time.monotonic() + 120
        while not received and time.monotonic() < deadline:
            time.sleep(1)
        with _client(stack) as client:
            run_name = client.read_flow_run(run_id).name
    finally:
        apply_alerts(stack.api_url, load_config(REPO / "pipeline.yaml").alerts)  # back to what `make up` made
        server.shutdown()
    assert received, "the failed-run automation sent nothing"
    assert received[0]["subject"] == f"pretrain-pipeline: run {run_name} failed"
    assert f"Flow run {run_name} of pretrain-pipeline ended Failed" in received[0]["body"]
    assert f"/runs/flow-run/{run_id}" in received[0]["body"]


def test_every_server_of_the_stack_listens_on_loopback_only(stack):
    """`ss` lists every listening socket of the stack's processes (SeaweedFS, the Prefect server, the
    worker, and their children): each is bound to 127.0.0.1, and the S3 and Prefect ports are among them."""
    groups = {stack.s3.pid, stack.server_pid, stack.worker_pid, stack.train_worker_pid}
    listing = subprocess.run(["ps", "-e", "-o", "pid=,pgid="], capture_output=True, text=True, check=True).stdout
    pids = {int(pid) for pid, pgid in (line.split() for line in listing.splitlines()) if int(pgid) in groups}
    sockets = subprocess.run(["ss", "-H", "-l", "-n", "-p", "-t", "-u"], capture_output=True, text=True,
                             check=True).stdout
    ours = []
    for line in sockets.splitlines():
        owners = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            local = line.split()[4]
            ours.append(local)
    assert ours, sockets
    assert [local for local in ours if not local.startswith("127.0.0.1:")] == [], ours
    ports = {int(local.rsplit(":", 1)[1]) for local in ours}
    assert {stack.s3.s3_port, stack.prefect_port} <= ports, (ports, ours)


def test_make_up_keeps_the_schedules_active_state_unless_the_config_changes(stack, tmp_path):
    """Resumed by hand, the cpt-refresh schedule stays resumed (same id) across `make down` + `make up`;
    paused by hand, a changed `refresh.active: true` in pipeline.yaml wins at the next start."""
    import yaml

    from pipeline.schedule import SLUG, apply_refresh_schedule
    from pipeline.config import load_config, validate_config

    def schedule():
        with _client(stack) as client:
            deployment = client.read_deployment_by_name("pretrain-pipeline/cpt-refresh")
            [found] = [s for s in client.read_deployment_schedules(deployment.id) if s.slug == SLUG]
            return deployment.id, found

    deployment_id, before = schedule()
    assert before.active is False
    with _client(stack) as client:
        client.update_deployment_schedule(deployment_id, before.id, active=True)  # the UI's toggle
    directory = Path(stack.directory)
    local_stack.down(directory, say=lambda _m: None)
    restarted = local_stack.up(directory, s3_port=stack.s3.s3_port, prefect_port=stack.prefect_port,
                               say=lambda _m: None)
    stack.s3, stack.server_pid, stack.worker_pid, stack.train_worker_pid = (
        restarted.s3, restarted.server_pid, restarted.worker_pid, restarted.train_worker_pid)
    _, after = schedule()
    assert (after.id, after.active) == (before.id, True)
    # `. .stack/env` is all a shell needs: the venv's `prefect` is found, talking to this server
    found = subprocess.run(["bash", "-c", f". {directory / 'env'} && command -v prefect && echo $PREFECT_API_URL"],
                           capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}).stdout.split()
    assert found == [local_stack._bin("prefect"), stack.api_url]

    with _client(stack) as client:
        client.update_deployment_schedule(deployment_id, before.id, active=False)
    config = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    config["refresh"]["active"] = True
    applied = apply_refresh_schedule(stack.api_url, validate_config(config, base_dir=REPO).refresh,
                                     directory / local_stack.SCHEDULE_STATE)
    assert applied == {**applied, "active": True, "kept": False, "schedule_id": str(before.id)}
    _, changed = schedule()
    assert (changed.id, changed.active) == (before.id, True)
    # and back to pipeline.yaml's `active: false` (it changed again): paused
    applied = apply_refresh_schedule(stack.api_url, load_config(REPO / "pipeline.yaml").refresh,
                                     directory / local_stack.SCHEDULE_STATE)
    assert applied["active"] is False and schedule()[1].active is False
