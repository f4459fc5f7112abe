"""The CPT refresh (deployment `pretrain-pipeline/cpt-refresh`): after a full run, two refreshes back to
back, each with one new domain file, re-execute only the domain chain, dedup, cpt, ift and eval — the
general sources and the tokenizer are reused, never rebuilt — a third with nothing new stops after
dedup, and a fourth with fewer new tokens than `refresh.min_new_tokens` stops before cpt. The refresh history says which data, model and scores each one had."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest

from flows.pretrain_pipeline import FLOW_NAME
from flows.refresh import last_completed_run, refresh_history
from pipeline.artifacts import read_manifest
from pipeline.runs import get_ref, read_run
from pipeline.storage import S3Store
from tests.flows.helpers import LATER_PHASES, WORDS, write_config, write_pages
from tests.raw_inputs import Page, write_warc

pytestmark = pytest.mark.usefixtures("prefect_harness")


def write_domain_pages(path: Path, pages: int, seed: int) -> Path:
    """Pages of shuffled words: no two are duplicates of each other or of the general pages."""
    html = []
    for page in range(pages):
        rng = random.Random(seed * 1000 + page)
        text = " ".join(rng.choice(WORDS) for _ in range(300))
        html.append(Page(f"https://manual.example/{seed}/{page}.html",
                         f"<html><body><h1>Manual {seed}.{page}</h1><p>{text}</p></body></html>".encode()))
    write_warc(path, html)
    return path


def executed(record: dict) -> set[str]:
    return {name for name, stage in record["stages"].items() if stage["status"] == "executed"}


def test_two_refreshes_rebuild_only_what_the_new_domain_files_affect(tmp_path, seaweed):
    from flows.pretrain_pipeline import pretrain_pipeline

    bucket = "refresh-" + uuid.uuid4().hex[:10]
    store = S3Store(bucket, "t", endpoint_url=seaweed.endpoint_url)
    store.ensure_bucket()
    write_pages(tmp_path / "web" / "a.warc.gz", pages=8, seed=1)
    write_domain_pages(tmp_path / "manual" / "m1.warc.gz", pages=6, seed=1)
    sources = [{"name": "web", "kind": "warc", "location": str(tmp_path / "web")},
               {"name": "manual", "kind": "warc", "location": str(tmp_path / "manual"), "role": "domain"}]
    # a refresh's few new pages hold less held-out domain text than a gate should judge on: allow it here
    phases = {**LATER_PHASES, "eval": {**LATER_PHASES["eval"], "gate": {"min_domain_tokens": 0}}}
    config = str(write_config(tmp_path / "p.yaml", endpoint=seaweed.endpoint_url, bucket=bucket, sources=sources,
                              mixture={"budget_tokens": 20_000, "weights": {"web": 1.0}},
                              refresh={"min_new_tokens": 1}, **phases))
    full = pretrain_pipeline(config_path=config)
    assert full["stages"]["eval"]["status"] == "executed"
    domain_chain = {"ingest/manual", "clean/manual", "langid/manual", "dedup", "filter/manual", "tokens/manual"}

    runs = []
    for seed in (2, 3):
        write_domain_pages(tmp_path / "manual" / f"m{seed}.warc.gz", pages=4, seed=seed)
        runs.append(read_run(store, pretrain_pipeline(config_path=config, refresh=True)["run_id"]))
        record = runs[-1]
        assert record["status"] == "completed"
        assert executed(record) == domain_chain | {"cpt", "ift", "eval"}
        assert {name for name, stage in record["stages"].items() if stage["status"] == "reused"} == \
            {"tokenizer", "filter/web", "tokens/web", "start"}
        assert not any(name.endswith("/web") and stage["status"] != "reused" for name, stage in record["stages"].items())
        assert record["stages"]["tokenizer"]["version"] == full["stages"]["tokenizer"]["version"]
        # only the new file's pages are new after dedup against everything already used
        assert record["stages"]["filter/manual"]["counts"]["documents"] == 4
        assert record["stages"]["dedup"]["counts"]["removed"] == {"duplicate_of_earlier_run": 6 + 4 * (seed - 2)}
    first, second = runs
    assert second["stages"]["start"]["artifact"] == "cpt"  # continues from the CPT behind the promoted model
    # the ref points at the candidate of the last gate that promoted (the full run's or a refresh's)
    gates = [read_manifest(store, "eval", full["stages"]["eval"]["version"])["summary"]["gate"]]
    gates += [read_manifest(store, "eval", run["stages"]["eval"]["version"])["summary"]["gate"] for run in runs]
    promoted = get_ref(store, "current")
    assert f"{promoted['artifact']}@{promoted['version']}" == [g for g in gates if g["promote"]][-1]["candidate_model"]

    nothing_new = read_run(store, pretrain_pipeline(config_path=config, refresh=True)["run_id"])
    assert nothing_new["status"] == "completed" and executed(nothing_new) == {"dedup"}  # stops after dedup
    assert {nothing_new["stages"][name]["status"] for name in ("filter/manual", "tokens/manual", "cpt", "ift",
                                                               "eval")} == {"not_run"}
    assert nothing_new["stages"]["ingest/manual"]["status"] == "cached"
    assert nothing_new["note"].startswith("not trained: no new domain documents since run ")

    # a new file, but fewer new tokens than refresh.min_new_tokens: the data stages run, nothing trains,
    # and its documents stay new for the next refresh (it is not the run the next one dedups against)
    write_domain_pages(tmp_path / "manual" / "m4.warc.gz", pages=2, seed=4)
    too_few = read_run(store, pretrain_pipeline(config_path=config, overrides={"refresh.min_new_tokens": 10**9},
                                                refresh=True)["run_id"])
    assert too_few["status"] == "completed" and executed(too_few) == domain_chain
    new_tokens = too_few["stages"]["tokens/manual"]["counts"]["splits"]["train"]["tokens"]
    assert 0 < new_tokens and {too_few["stages"][name]["error"] for name in ("cpt", "ift", "eval")} == {
        f"{new_tokens:,} new domain training tokens since run {second['run_id']}, fewer than "
        f"refresh.min_new_tokens (1,000,000,000): not trained"}
    assert too_few["note"].startswith("not trained: ")
    assert last_completed_run(store, FLOW_NAME)["run_id"] == second["run_id"]

    history = refresh_history(store, FLOW_NAME)
    assert [entry["run_id"] for entry in history] == [first["run_id"], second["run_id"], nothing_new["run_id"],
                                                       too_few["run_id"]]
    assert history[0]["data"]["manual"]["new_documents"] == 4 and set(history[0]["model"]) == {"cpt", "ift"}
    assert history[0]["gate"]["candidate_model"].startswith("ift@") and "domain_bpb" in \
        next(iter(history[0]["scores"].values()))
    assert "no new domain documents" in history[2]["note"] and "refresh.min_new_tokens" in history[3]["note"]


def test_a_refresh_needs_a_completed_run_first(tmp_path, seaweed):
    from flows.pretrain_pipeline import pretrain_pipeline
    from flows.refresh import RefreshError

    bucket = "refresh-" + uuid.uuid4().hex[:10]
    S3Store(bucket, "t", endpoint_url=seaweed.endpoint_url).ensure_bucket()
    write_domain_pages(tmp_path / "manual" / "m1.warc.gz", pages=2, seed=1)
    write_pages(tmp_path / "web" / "a.warc.gz", pages=2, seed=1)
    sources = [{"name": "web", "kind": "warc", "location": str(tmp_path / "web")},
               {"name": "manual", "kind": "warc", "location": str(tmp_path / "manual"), "role": "domain"}]
    config = write_config(tmp_path / "p.yaml", endpoint=seaweed.endpoint_url, bucket=bucket, sources=sources,
                          **LATER_PHASES)
    with pytest.raises(RefreshError, match="run pretrain-pipeline/full first"):
        pretrain_pipeline(config_path=str(config), refresh=True)
