"""The pretrain-pipeline flow under Prefect's test harness, writing to a real SeaweedFS."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flows.dag import GLOBAL_STAGES, STAGES
from pipeline.artifacts import list_versions, read_manifest
from pipeline.config import ConfigError, load_config
from pipeline.sources import list_inputs
from pipeline.runs import read_run
from pipeline.storage import S3Store
from tasks.ingest import ingest_spec
from tests.conftest import REPO
from tests.flows.helpers import LATER_PHASES, write_config, write_pages
from tests.reliability.stages import kill_once_parts_appear
from tests.raw_inputs import PNG, Page, write_jsonl, write_warc

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def bucket(seaweed) -> str:
    name = "flow-" + uuid.uuid4().hex[:12]
    S3Store(name, "t", endpoint_url=seaweed.endpoint_url).ensure_bucket()
    return name


@pytest.fixture
def inputs(tmp_path) -> Path:
    write_pages(tmp_path / "in" / "web" / "a.warc.gz", pages=6, seed=1)
    write_pages(tmp_path / "in" / "web" / "b.warc.gz", pages=4, seed=2)
    write_jsonl(tmp_path / "in" / "docs" / "d.jsonl", [{"id": "1", "text": "first document"}, "{not json",
                                                          {"id": "2", "text": "second document"}])
    return tmp_path / "in"


def _sources(inputs: Path) -> list[dict]:
    return [{"name": "web", "kind": "warc", "location": str(inputs / "web")},
            {"name": "docs", "kind": "jsonl", "location": str(inputs / "docs"), "id_field": "id"}]


def _task_state_names(flow_run_id) -> dict[str, str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.state.name for run in runs}


def test_flow_builds_each_source_then_skips_them_as_cached(tmp_path, seaweed, bucket, inputs):
    """The whole DAG, continued pretraining (on a domain source), IFT and eval included."""
    from flows.pretrain_pipeline import pretrain_pipeline

    write_pages(inputs / "manual" / "m.warc.gz", pages=8, seed=7)
    sources = _sources(inputs) + [{"name": "manual", "kind": "warc", "location": str(inputs / "manual"),
                                   "role": "domain"}]
    config = write_config(tmp_path / "p.yaml", endpoint=seaweed.endpoint_url, bucket=bucket, sources=sources,
                          mixture={"budget_tokens": 20_000, "weights": {"web": 1.0}}, **LATER_PHASES)
    first = pretrain_pipeline(config_path=str(config), return_state=True)
    assert first.is_completed(), first.message
    result = first.result()
    assert {s["status"] for s in result["stages"].values()} == {"executed"}
    assert _task_state_names(first.state_details.flow_run_id) == {
        **{stage: "Completed" for stage in GLOBAL_STAGES},
        **{f"{stage}[{source}]": "Completed" for stage in STAGES if stage not in GLOBAL_STAGES
           for source in ("web", "docs", "manual")}}
    store = S3Store(bucket, "t", endpoint_url=seaweed.endpoint_url)
    web = read_manifest(store, "ingest/web", result["stages"]["ingest/web"]["version"])
    assert web["counts"]["documents"] == 10 and web["counts"]["skipped"] == {"warc_request_record": 10}
    docs = read_manifest(store, "ingest/docs", result["stages"]["ingest/docs"]["version"])
    assert docs["counts"]["documents"] == 2 and docs["counts"]["quarantined"] == {"invalid_json": 1}

    second = pretrain_pipeline(config_path=str(config), return_state=True)
    assert second.is_completed()
    again = second.result()
    assert {s["status"] for s in again["stages"].values()} == {"cached"}
    assert {k: s["version"] for k, s in again["stages"].items()} == \
        {k: s["version"] for k, s in result["stages"].items()}
    assert set(_task_state_names(second.state_details.flow_run_id).values()) == {"Cached"}
    record = read_run(store, str(second.state_details.flow_run_id))
    assert record["status"] == "completed" and record["config"]["storage"]["bucket"] == bucket
    assert "AWS_SECRET_ACCESS_KEY" not in str(record) and os.environ["AWS_SECRET_ACCESS_KEY"] not in str(record)
    assert len(list_versions(store, "ingest/web")) == 1
    cpt = read_manifest(store, "cpt", result["stages"]["cpt"]["version"])
    assert cpt["summary"]["init"] == f"pretrain@{result['stages']['pretrain']['version']}"
    assert {row["source"]: row["role"] for row in cpt["summary"]["table"]} == \
        {"manual": "domain", "web": "replay", "docs": "replay"}
    evaluation = read_manifest(store, "eval", result["stages"]["eval"]["version"])
    assert set(evaluation["summary"]["models"]) == {"base", "cpt", "ift"}
    assert evaluation["summary"]["metrics"]["ift"]["assistant loss"] > 0


def test_continued_pretraining_of_a_users_checkpoint_through_the_dag(tmp_path, seaweed, bucket, inputs):
    """cpt.init names a Qwen2 checkpoint: its tokenizer tokenizes the data, mixture and pretrain do not run, CPT,
    IFT (with its ChatML template) and eval follow, and the exports stay Qwen2."""
    from transformers import AutoTokenizer

    from flows.pretrain_pipeline import pretrain_pipeline
    from tasks.checkpoints import fetch_hf_dir
    from tests.checkpoints import FAMILIES, make_checkpoint

    checkpoint = make_checkpoint("qwen2", tmp_path / "Qwen2-tiny", positions=512)
    write_pages(inputs / "manual" / "m.warc.gz", pages=8, seed=7)
    sources = _sources(inputs) + [{"name": "manual", "kind": "warc", "location": str(inputs / "manual"),
                                   "role": "domain"}]
    config = write_config(tmp_path / "p.yaml", endpoint=seaweed.endpoint_url, bucket=bucket, sources=sources,
                          mixture={"budget_tokens": 20_000, "weights": {"web": 1.0}},
                          **{**LATER_PHASES, "cpt": {**LATER_PHASES["cpt"], "init": str(checkpoint)}})
    result = pretrain_pipeline(config_path=str(config))
    stages = result["stages"]
    assert "mixture" not in stages and "pretrain" not in stages
    assert {stages[name]["status"] for name in ("tokenizer", "cpt", "ift", "eval")} == {"executed"}
    store = S3Store(bucket, "t", endpoint_url=seaweed.endpoint_url)
    tokenizer = read_manifest(store, "tokenizer", stages["tokenizer"]["version"])
    assert tokenizer["summary"]["conventions"]["origin"] == f"checkpoint:{checkpoint}"
    cpt = read_manifest(store, "cpt", stages["cpt"]["version"])
    assert cpt["summary"]["init"] == str(checkpoint) and cpt["summary"]["model_config"]["model_type"] == "qwen2"
    ift = read_manifest(store, "ift", stages["ift"]["version"])
    exported = AutoTokenizer.from_pretrained(str(fetch_hf_dir(store, ift, tmp_path / "ift")))
    assert exported.chat_template == FAMILIES["qwen2"]["template"]
    evaluation = read_manifest(store, "eval", stages["eval"]["version"])
    assert set(evaluation["summary"]["models"]) == {"base", "cpt", "ift"}
    assert evaluation["summary"]["models"]["base"] == str(checkpoint)


def test_changed_source_is_reingested_and_unchanged_one_skipped(tmp_path, seaweed, bucket, inputs):
    from flows.pretrain_pipeline import pretrain_pipeline

    config = write_config(tmp_path / "p.yaml", endpoint=seaweed.endpoint_url, bucket=bucket, sources=_sources(inputs))
    first = pretrain_pipeline(config_path=str(config))
    write_pages(inputs / "web" / "c.warc.gz", pages=3, seed=3)
    second = pretrain_pipeline(config_path=str(config))
    assert second["stages"]["ingest/web"]["status"] == "executed"
    assert second["stages"]["ingest/web"]["version"] != first["stages"]["ingest/web"]["version"]
    assert second["stages"]["ingest/web"]["counts"]["documents"] == 13
    assert second["stages"]["ingest/docs"]["status"] == "cached"


def test_only_and_force(tmp_path, seaweed, bucket, inputs):
    from flows.pretrain_pipeline import pretrain_pipeline

    config = write_config(tmp_path / "p.yaml", endpoint=seaweed.endpoint_url, bucket=bucket, sources=_sources(inputs))
    only_web = pretrain_pipeline(config_path=str(config), only=["ingest/web"])
    assert {name: stage["status"] for name, stage in only_web["stages"].items()} == {"ingest/web": "executed"}
    # clean/docs needs ingest/docs, which is outside `only` and not built yet: the run says so.
    only_clean = pretrain_pipeline(config_path=str(config), only=["clean/docs"], return_state=True)
    assert only_clean.is_failed()
    record = read_run(S3Store(bucket, "t", endpoint_url=seaweed.endpoint_url), str(only_clean.state_details.flow_run_id))
    assert "not selected by `only`" in record["stages"]["ingest/docs"]["error"]
    assert record["stages"]["clean/docs"]["status"] == "not_run"

    built = pretrain_pipeline(config_path=str(config))
    forced = pretrain_pipeline(config_path=str(config), force=["ingest/web"])
    assert forced["stages"]["ingest/web"]["status"] == "executed"
    assert forced["stages"]["ingest/web"]["version"] != built["stages"]["ingest/web"]["version"]
    assert forced["stages"]["ingest/docs"]["status"] == "cached"
    # a new ingest version gives new versions downstream
    assert forced["stages"]["clean/web"]["status"] == "executed"
    assert forced["stages"]["clean/web"]["version"] != built["stages"]["clean/web"]["version"]

    # only one source's filter: every langid and dedup are read as they are (Cached), the other filter not run
    only_filter = pretrain_pipeline(config_path=str(config), only=["filter/docs"], force=["filter/docs"])
    assert {name: stage["status"] for name, stage in only_filter["stages"].items()
            if name.startswith(("dedup", "filter"))} == {"dedup": "cached", "filter/docs": "executed"}

    with pytest.raises(ConfigError, match=r"unknown stage\(s\) \['ingest/nope'\]"):
        pretrain_pipeline(config_path=str(config), only=["ingest/nope"])


def test_invalid_config_fails_before_any_work(tmp_path, seaweed, bucket, inputs):
    from flows.pretrain_pipeline import pretrain_pipeline

    config = write_config(tmp_path / "p.yaml", endpoint=seaweed.endpoint_url, bucket=bucket, sources=_sources(inputs))
    with pytest.raises(ConfigError, match=r"ingest\.workers: Input should be greater than or equal to 1"):
        pretrain_pipeline(config_path=str(config), overrides={"ingest.workers": 0})
    with pytest.raises(ConfigError, match=r"sources\.1\.text_feild: unknown key; allowed keys here: .*text_field"):
        pretrain_pipeline(config_path=str(config), overrides={"sources.docs.text_feild": "body"})
    with pytest.raises(ConfigError, match=r"cpt.init: .*no config.json"):  # a checkpoint that cannot be used
        pretrain_pipeline(config_path=str(config), overrides={"cpt.enabled": True, "cpt.init": str(tmp_path),
                                                              "sources.docs.role": "domain"})
    store = S3Store(bucket, "t", endpoint_url=seaweed.endpoint_url)
    assert list(store.list("")) == []


def test_failed_source_reruns_alone_after_the_fix(tmp_path, seaweed, bucket, inputs, capsys):
    """A stage fails (its WARC is not there yet, only a note about it: the location passes the pre-run
    check, ingest finds no input): `pretrain-pipeline run` exits 1 with the short summary saying which and
    why; the rerun re-executes only it, the rest is Cached."""
    from flows.pretrain_pipeline import pretrain_pipeline
    from pipeline.cli import main

    S3Store(bucket, "", endpoint_url=seaweed.endpoint_url).client.put_object(
        Bucket=bucket, Key="incoming/README.txt", Body=b"the crawl lands here")
    sources = _sources(inputs) + [{"name": "late", "kind": "warc", "location": f"s3://{bucket}/incoming/"}]
    config = write_config(tmp_path / "p.yaml", endpoint=seaweed.endpoint_url, bucket=bucket, sources=sources)
    assert main(["run", "-c", str(config)]) == 1
    summary = capsys.readouterr().out
    run_id = re.search(r"^run (\S+): failed$", summary, re.M).group(1)
    assert re.search(r"^ingest/late +failed +.*no input files", summary, re.M), summary
    assert re.search(r"^dedup +not_run +an upstream stage failed$", summary, re.M), summary
    assert summary.rstrip().splitlines()[-1].startswith(f"run record: s3://{bucket}/t/runs/{run_id}.json")
    store = S3Store(bucket, "t", endpoint_url=seaweed.endpoint_url)
    first = read_run(store, run_id)
    assert first["status"] == "failed" and "no input files" in first["stages"]["ingest/late"]["error"]
    # dedup reads every source, so it and every filter wait for the fix; the other sources' chains ran
    assert {first["stages"][name]["status"] for name in ("dedup", "filter/web", "filter/late", "clean/late")} == \
        {"not_run"}
    assert first["stages"]["langid/web"]["status"] == "executed"

    late = write_pages(tmp_path / "late.warc.gz", pages=2, seed=9)
    store.client.upload_file(str(late), bucket, "incoming/late.warc.gz")
    rerun = pretrain_pipeline(config_path=str(config))
    assert rerun["stages"]["ingest/late"]["status"] == "executed"
    for name in ("ingest/web", "ingest/docs"):
        assert rerun["stages"][name]["status"] == "cached"
        assert rerun["stages"][name]["version"] == first["stages"][name]["version"]


def _run_cli(config: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "-c", str(config)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path, seaweed, bucket):
    """SIGKILL the whole run during ingest; the next run finishes the missing units only, and the
    artifact equals (version and data bytes) the one of a run that was never interrupted."""
    from prefect.settings import PREFECT_API_URL

    for index in range(10):
        write_pages(tmp_path / "in" / f"w{index}.warc.gz", pages=300, seed=index, words_per_page=2000)
    sources = [{"name": "web", "kind": "warc", "location": str(tmp_path / "in")}]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    killed = write_config(tmp_path / "killed.yaml", endpoint=seaweed.endpoint_url, bucket=bucket,
                          sources=sources, prefix="killed")
    clean = write_config(tmp_path / "clean.yaml", endpoint=seaweed.endpoint_url, bucket=bucket,
                         sources=sources, prefix="clean")
    store = S3Store(bucket, "killed", endpoint_url=seaweed.endpoint_url)
    source = load_config(killed).sources[0]
    spec = ingest_spec(source, list_inputs(source, load_config(killed).storage), load_config(killed).ingest)

    kill_once_parts_appear(_run_cli(killed, env), store, spec.prefix, 240)
    assert not [key for key in store.list("artifacts/") if key.endswith("manifest.json")]

    resumed = _run_cli(killed, env)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    resumed_units = re.search(r"ingest\[web\]: \d+ units, [\d.]+ MB; (\d+) already done", output)
    assert resumed_units and int(resumed_units.group(1)) > 0, output
    uninterrupted = _run_cli(clean, env)
    output, _ = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, output
    # `run` ends with a short summary (stages, the funnel), not the JSON of every stage (that is --json)
    head = re.search(r"^run \S+: completed$", output, re.M)
    assert head, output[-3000:]
    summary = output[head.start():]
    assert "stage     source       docs in  docs out" in summary
    assert re.search(r"^ingest    web +[\d,]+ +[\d,]+ ", summary, re.M) and '"stages"' not in summary
    assert summary.rstrip().splitlines()[-1].startswith("run record: s3://")

    [resumed_manifest] = list_versions(store, "ingest/web")
    [clean_manifest] = list_versions(S3Store(bucket, "clean", endpoint_url=seaweed.endpoint_url), "ingest/web")
    assert resumed_manifest["version"] == clean_manifest["version"]
    assert [(f["path"], f["sha256"]) for f in resumed_manifest["files"]] == \
        [(f["path"], f["sha256"]) for f in clean_manifest["files"]]
    assert resumed_manifest["counts"] == clean_manifest["counts"]
    # and so is everything downstream: same versions, same bytes
    for artifact in ("clean/web", "langid/web"):
        [resumed] = list_versions(store, artifact)
        [uninterrupted] = list_versions(S3Store(bucket, "clean", endpoint_url=seaweed.endpoint_url), artifact)
        assert resumed["version"] == uninterrupted["version"]
        assert [f["sha256"] for f in resumed["files"]] == [f["sha256"] for f in uninterrupted["files"]]


def test_a_corpus_of_broken_records_completes_with_every_record_counted(tmp_path, seaweed, bucket):
    from flows.pretrain_pipeline import pretrain_pipeline

    good = write_pages(tmp_path / "in" / "web" / "good.warc.gz", pages=4, seed=1).read_bytes()
    (tmp_path / "in" / "web" / "truncated.warc.gz").write_bytes(good[: int(len(good) * 0.8)])
    (tmp_path / "in" / "web" / "empty.warc.gz").write_bytes(b"")
    # a response that claims text/html but carries an image
    write_warc(tmp_path / "in" / "web" / "binary.warc.gz",
               [Page("https://example.org/logo", PNG, content_type="text/html")], with_requests=False)
    docs = tmp_path / "in" / "docs"
    docs.mkdir(parents=True)
    (docs / "mixed.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 latin-1 bytes"}\n{"text": oops}\n')
    (docs / "empty.jsonl").write_bytes(b"")
    sources = [{"name": "web", "kind": "warc", "location": str(tmp_path / "in" / "web")},
               {"name": "docs", "kind": "jsonl", "location": str(docs)}]
    config = write_config(tmp_path / "p.yaml", endpoint=seaweed.endpoint_url, bucket=bucket, sources=sources)

    result = pretrain_pipeline(config_path=str(config))
    web = result["stages"]["ingest/web"]["counts"]
    assert web["quarantined"] == {"truncated_file": 1, "empty_file": 1, "binary_payload": 1}
    # 4 pages from the good file, and the truncated copy keeps the 1-3 pages before the damage
    assert 5 <= web["documents"] <= 7
    assert web["records"] == web["documents"] + sum(web["quarantined"].values())
    docs_counts = result["stages"]["ingest/docs"]["counts"]
    assert docs_counts["documents"] == 1
    assert docs_counts["quarantined"] == {"invalid_utf8": 1, "invalid_json": 1, "empty_file": 1}


def test_run_records_after_only_list_as_not_run_only_what_was_selected(tmp_path, seaweed, bucket, inputs):
    """`only` ingest and clean, one source's input missing: the failed record's not_run holds that source's
    clean alone (not the stages `only` left out); a retry (attempt 2 of the same run) that completes lists
    no not_run at all."""
    from flows.pretrain_pipeline import pretrain_pipeline

    sources = _sources(inputs) + [{"name": "late", "kind": "warc", "location": f"s3://{bucket}/incoming/"}]
    config = write_config(tmp_path / "p.yaml", endpoint=seaweed.endpoint_url, bucket=bucket, sources=sources)
    store = S3Store(bucket, "t", endpoint_url=seaweed.endpoint_url)
    failed = pretrain_pipeline(config_path=str(config), only=["ingest", "clean"], return_state=True)
    assert failed.is_failed()
    first = read_run(store, str(failed.state_details.flow_run_id))
    assert "sources.late.location: no input files" in first["stages"]["ingest/late"]["error"]
    assert {name for name, stage in first["stages"].items() if stage["status"] == "not_run"} == {"clean/late"}
    assert set(first["stages"]) == {f"{stage}/{s['name']}" for stage in ("ingest", "clean") for s in sources}
    # attempt 1 and, once the input is there, attempt 2 of one flow run (as a retried flow run keeps its id)
    from prefect import flow

    from flows.pretrain_pipeline import PipelineFailed

    @flow
    def failed_then_retried() -> str:
        with pytest.raises(PipelineFailed):
            pretrain_pipeline.fn(config_path=str(config), only=["ingest", "clean"])
        store.client.upload_file(str(write_pages(tmp_path / "late.warc.gz", pages=2, seed=9)), bucket,
                                 "incoming/late.warc.gz")
        pretrain_pipeline.fn(config_path=str(config), only=["ingest", "clean"])
        from prefect.runtime import flow_run

        return flow_run.get_id()

    retried = read_run(store, failed_then_retried())
    assert retried["attempt"] == 2 and retried["status"] == "completed"
    assert {stage["status"] for stage in retried["stages"].values()} <= {"executed", "cached"}
    assert set(retried["stages"]) == set(first["stages"])


def test_stop_after_selects_the_stages_up_to_it_and_the_sources_read():
    from flows.pretrain_pipeline import selection, sources_read

    config = load_config(REPO / "pipeline.yaml", ["stop_after=filter"])
    assert selection(config, None) == frozenset({"ingest", "clean", "langid", "dedup", "filter"})
    assert selection(config, ["ingest/web"]) == frozenset({"ingest/web"})  # an explicit `only` wins
    assert selection(load_config(REPO / "pipeline.yaml"), None) is None
    assert [s.name for s in sources_read(config, None)] == ["web", "docs", "pages"]
    assert [s.name for s in sources_read(config, ["clean/docs"])] == ["docs"]
    assert [s.name for s in sources_read(config, ["mixture"])] == ["web", "docs", "pages"]
    assert [s.name for s in sources_read(config, None, refresh=True)] == ["docs"]
