"""Credentials never leak: run the flow through Prefect against a SeaweedFS of this test's own, whose
access key and secret are random and recognisable, then look for either of them everywhere the
pipeline writes: logs (Python logging, stdout/stderr, the Prefect API's log records), every object
version in the bucket (manifests, run records, data, parts), the Prefect artifacts of each run, the
flow runs' parameters and state messages, the task runs' state messages, and Prefect's result files.

Runs covered: a successful build of every data stage, a run in which a stage fails (a source with no
input files, read from S3), and a run whose secret key is wrong (the server refuses every request).

With `storage.presigned_links` on (the local stack's pipeline.yaml turns it on for clickable links),
the Prefect artifacts link to manifests with presigned URLs, which carry the access key ID (never the
secret) in their X-Amz-Credential parameter; it is off by default, and so off here: nothing may appear.
"""

from __future__ import annotations

import secrets
import urllib.parse
from pathlib import Path

import pytest

from pipeline.seaweed import start_seaweed, stop_seaweed
from pipeline.storage import S3Store
from tests.flows.helpers import write_config, write_pages

pytestmark = pytest.mark.usefixtures("prefect_harness")

DATA_STAGES = ["ingest", "clean", "langid", "dedup", "filter", "tokenizer", "tokens"]


@pytest.fixture
def keyed_seaweed(tmp_path, monkeypatch):
    access_key = "AKIALEAKTEST" + secrets.token_hex(6).upper()
    secret_key = "leak-test-secret-" + secrets.token_urlsafe(24)
    server = start_seaweed(tmp_path / "weed", access_key=access_key, secret_key=secret_key)
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    yield server
    stop_seaweed(server)


def forms(value: str) -> set[str]:
    """The key as it would appear written plainly, URL-quoted or JSON-escaped."""
    return {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}


def assert_clean(where: str, text: str, access_key: str, secret_key: str) -> None:
    for form in forms(secret_key):
        assert form not in text, f"the secret key appears in {where}"
    for form in forms(access_key):
        assert form not in text, f"the access key ID appears in {where}"


def test_credentials_appear_in_no_log_object_record_or_prefect_artifact(tmp_path, keyed_seaweed, caplog, capfd,
                                                                       monkeypatch):
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH

    from flows.pretrain_pipeline import pretrain_pipeline

    server = keyed_seaweed
    access_key, secret_key = server.access_key, server.secret_key
    caplog.set_level("INFO")
    bucket = "leaks"
    S3Store(bucket, "t", endpoint_url=server.endpoint_url).ensure_bucket()
    write_pages(tmp_path / "in" / "a.warc.gz", pages=6, seed=1)
    write_pages(tmp_path / "in" / "b.warc.gz", pages=4, seed=2)
    web = {"name": "web", "kind": "warc", "location": str(tmp_path / "in")}
    good = write_config(tmp_path / "good.yaml", endpoint=server.endpoint_url, bucket=bucket, sources=[web])
    failing = write_config(tmp_path / "failing.yaml", endpoint=server.endpoint_url, bucket=bucket, sources=[
        web, {"name": "late", "kind": "warc", "location": f"s3://{bucket}/incoming/"}])

    runs = []
    built = pretrain_pipeline(config_path=str(good), only=DATA_STAGES, return_state=True)
    assert built.is_completed(), built.message
    assert {stage["status"] for stage in built.result()["stages"].values()} == {"executed"}
    runs.append(built)
    stage_failed = pretrain_pipeline(config_path=str(failing), only=DATA_STAGES, return_state=True)
    assert stage_failed.is_failed()
    runs.append(stage_failed)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-" + secrets.token_urlsafe(12))
    refused = pretrain_pipeline(config_path=str(good), only=DATA_STAGES, return_state=True)
    assert refused.is_failed() and "403" in (refused.message or "") + str(refused.data), refused.message
    runs.append(refused)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    APILogWorker.drain_all(timeout=10)

    # logs: Python logging and everything written to the process's stdout/stderr
    assert_clean("the captured log records", "\n".join(
        f"{record.getMessage()} {record.exc_text or ''} {record.__dict__}" for record in caplog.records),
        access_key, secret_key)
    out, err = capfd.readouterr()
    assert_clean("stdout/stderr", out + err, access_key, secret_key)

    # every version of every object in the bucket: manifests, run records, data, parts
    store = S3Store(bucket, "t", endpoint_url=server.endpoint_url)
    keys = 0
    for page in store.client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for version in page.get("Versions", []):
            body = store.client.get_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
            data = body["Body"].read()
            assert_clean(f"s3://{bucket}/{version['Key']}", data.decode("latin-1"), access_key, secret_key)
            keys += 1
    assert keys > 20

    # the Prefect API: flow runs (parameters, state history), task runs, artifacts, log records
    ids = [state.state_details.flow_run_id for state in runs]
    with get_client(sync_client=True) as client:
        for flow_run_id in ids:
            flow_run = client.read_flow_run(flow_run_id)
            assert_clean("flow run parameters", str(flow_run.parameters), access_key, secret_key)
            states = client.read_flow_run_states(flow_run_id)
            assert_clean("flow run states", "\n".join(f"{s.name} {s.message} {s.state_details}" for s in states),
                         access_key, secret_key)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        assert task_runs
        assert_clean("task runs", "\n".join(f"{run.name} {run.state.message if run.state else ''} "
                                            f"{run.task_inputs}" for run in task_runs), access_key, secret_key)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=ids)))
        assert len(artifacts) >= len(DATA_STAGES)
        assert_clean("Prefect artifacts", "\n".join(f"{a.key} {a.type} {a.description} {a.data}" for a in artifacts),
                     access_key, secret_key)  # storage.presigned_links is off by default
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        assert logs
        assert_clean("Prefect log records", "\n".join(log.message for log in logs), access_key, secret_key)

    # Prefect's result files
    results = Path(PREFECT_RESULTS_LOCAL_STORAGE_PATH.value())
    for path in results.rglob("*") if results.is_dir() else []:
        if path.is_file():
            assert_clean(str(path), path.read_bytes().decode("latin-1"), access_key, secret_key)
