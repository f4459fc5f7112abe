"""The ablation flow under Prefect's test harness, on a real SeaweedFS: two recipes x two seeds with a tiny
proxy model, run once for the module (and once more, all Cached)."""

from __future__ import annotations

import math
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

from pipeline.artifacts import list_versions, read_manifest
from pipeline.config import ConfigError
from pipeline.runs import read_run
from pipeline.storage import S3Store
from tests.conftest import SAMPLE
from tests.flows.helpers import write_config, write_pages

# The module's ablation (4 proxy models, trained and scored) runs in the first test's setup.
pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(900)]

RECIPES = {"base": {}, "no-exact-dedup": {"dedup.exact": False}}
SEEDS = [0, 1]


def write_recipes(path: Path, base: Path, recipes: dict, **extra) -> Path:
    document = {"base_config": str(base),
                "recipes": [{"name": name, "overrides": overrides} for name, overrides in recipes.items()],
                "seeds": SEEDS, "proxy_model": {"family": "llama", "preset": "llama-tiny"},
                "budget_tokens": 6 * 2 * 64,  # 6 steps of 2 sequences of 64 tokens
                "proxy_train": {"micro_batch": 2, "warmup_steps": 1, "checkpoint_every": 100, "eval_every": 0,
                                "zero_stage": 0},
                "held_out": {"stage": "langid", "max_bytes_per_source": 20_000},
                "tasks": ["debian_cloze"], **extra}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _task_runs(flow_run_id) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


@pytest.fixture(scope="module")
def setup(seaweed, tmp_path_factory):
    """The base config (two general WARC sources; `web` holds each page twice, which exact dedup removes) and
    the recipe file."""
    tmp = tmp_path_factory.mktemp("ablation")
    for name in ("a", "b"):  # the same pages twice: exact duplicates
        write_pages(tmp / "in" / "web" / f"{name}.warc.gz", pages=24, seed=1)
    write_pages(tmp / "in" / "more" / "c.warc.gz", pages=24, seed=5)
    bucket = "ablation-" + uuid.uuid4().hex[:12]
    S3Store(bucket, "t", endpoint_url=seaweed.endpoint_url).ensure_bucket()
    sources = [{"name": "web", "kind": "warc", "location": str(tmp / "in" / "web")},
               {"name": "more", "kind": "warc", "location": str(tmp / "in" / "more")}]
    base = write_config(tmp / "pipeline.yaml", endpoint=seaweed.endpoint_url, bucket=bucket, sources=sources,
                        tokenize={"workers": 1, "seq_len": 64, "val_fraction": 0.25},
                        mixture={"budget_tokens": 20_000, "weights": {"web": 0.5, "more": 0.5}},
                        eval={"enabled": False, "include_path": [str(SAMPLE / "eval")], "limit": 4,
                              "batch_size": 8})
    recipes = write_recipes(tmp / "recipes.yaml", base, RECIPES)
    return {"tmp": tmp, "bucket": bucket, "base": base, "recipes": recipes,
            "store": S3Store(bucket, "t", endpoint_url=seaweed.endpoint_url)}


@pytest.fixture(scope="module")
def runs(setup, prefect_harness):
    """The ablation, then the same ablation again."""
    from flows.ablation import ablation

    first = ablation(recipes_path=str(setup["recipes"]), return_state=True)
    assert first.is_completed(), first.message
    second = ablation(recipes_path=str(setup["recipes"]), return_state=True)
    assert second.is_completed(), second.message
    return first, second


def test_the_artifact_has_both_recipes_with_per_seed_values(setup, runs):
    result = runs[0].result()
    store = setup["store"]
    manifest = read_manifest(store, "ablation", result["artifact"]["version"])
    assert {entry["path"] for entry in manifest["files"]} == {"results.json", "report.md", "plot.png"}
    from tasks.ablation import read_results

    with tempfile.TemporaryDirectory() as scratch:
        results = read_results(store, manifest, Path(scratch))
    assert {(run["recipe"], run["seed"]) for run in results["runs"]} == {(r, s) for r in RECIPES for s in SEEDS}
    for run in results["runs"]:
        assert run["metrics"]["bpb"] > 0 and math.isfinite(run["metrics"]["perplexity"])
        assert 0 <= run["metrics"]["debian_cloze acc"] <= 1
        assert run["train_flops"] > 0 and run["train_cpu_s"] > 0
        model = read_manifest(store, "pretrain", run["model"]["version"])  # the lineage names real artifacts
        assert model["summary"]["flops"] == run["train_flops"]
        assert run["lineage"]["heldout"] == results["runs"][0]["lineage"]["heldout"]
    rows = {(row["recipe"], row["metric"]): row for row in results["summary"]["rows"]}
    for recipe in RECIPES:
        row = rows[(recipe, "bpb")]
        assert {int(seed) for seed in row["per_seed"]} == set(SEEDS)
        assert row["spread"] == pytest.approx(max(row["per_seed"].values()) - min(row["per_seed"].values()))
    cost = results["summary"]["cost"]
    # base is charged the stages this run built first for it (ingest .. filter ran for the base config); the
    # other recipe executed dedup and after, and read ingest, clean and langid as Cached
    assert cost["base"]["data_cpu_s"] > 0 and cost["base"]["cached_cpu_s_saved"] == 0
    assert cost["no-exact-dedup"]["data_cpu_s"] > 0 and cost["no-exact-dedup"]["cached_cpu_s_saved"] > 0
    seed1 = [run for run in results["runs"] if run["seed"] == 1]
    assert {run["data_cpu_s"] for run in seed1} == {0}  # the data stages count with a recipe's first seed
    # exact dedup removes the second copy of every web page: the other recipe keeps more
    assert rows[("no-exact-dedup", "bpb")]["documents"] > rows[("base", "bpb")]["documents"]
    table = {(row["recipe"], row["metric"]) for row in manifest["summary"]["table"]}
    assert {("base", "bpb"), ("no-exact-dedup", "bpb")} <= table
    assert "no-exact-dedup" in result["table"] and "base" in result["table"]


def test_the_rerun_is_all_cached(setup, runs):
    first, second = (run.result() for run in runs)
    assert second["artifact"]["version"] == first["artifact"]["version"]
    assert {stage["status"] for stage in second["stages"].values()} == {"cached"}
    assert {run.state.name for run in _task_runs(runs[1].state_details.flow_run_id)} == {"Cached"}
    assert len(list_versions(setup["store"], "ablation")) == 1


def test_shared_stages_executed_once(setup, runs):
    """From the run record: every (artifact, version) the recipes share was executed by one of them and Cached for
    the others; the stages a recipe changes (dedup and after) executed for it."""
    record = read_run(setup["store"], str(runs[0].state_details.flow_run_id))
    by_version: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for name, stage in record["stages"].items():
        scope, _, artifact = name.partition(":")
        by_version.setdefault((artifact, stage["version"]), []).append((scope, stage["status"]))
    for (artifact, version), uses in by_version.items():
        assert [status for _, status in uses].count("executed") == 1, (artifact, uses)
    stages = record["stages"]
    for source in ("web", "more"):
        for stage in ("ingest", "clean", "langid"):  # the base config's; both recipes read them as they are
            assert stages[f"_base:{stage}/{source}"]["status"] == "executed"
            assert {stages[f"{recipe}:{stage}/{source}"]["status"] for recipe in RECIPES} == {"cached"}
    assert stages["base:dedup"]["version"] == stages["_base:dedup"]["version"]
    assert stages["no-exact-dedup:dedup"]["status"] == "executed"
    assert stages["no-exact-dedup:dedup"]["version"] != stages["base:dedup"]["version"]
    # one fixed tokenizer for every recipe
    assert len({stages[f"{recipe}:tokenizer"]["version"] for recipe in RECIPES}) == 1
    task_runs = _task_runs(runs[0].state_details.flow_run_id)
    completed = [run.name for run in task_runs if run.state.name == "Completed"]
    assert completed.count("ingest[web]") == 1 and completed.count("pretrain") == len(RECIPES) * len(SEEDS)


@pytest.mark.parametrize("key, value", [("tokenizer.vocab_size", 1024), ("eval.tasks", ["hellaswag"]),
                                        ("tokenize.val_fraction", 0.5)])
def test_a_recipe_changing_the_tokenizer_or_the_eval_set_is_rejected_before_any_work(setup, key, value):
    from flows.ablation import ablation

    path = write_recipes(setup["tmp"] / f"bad-{key}.yaml", setup["base"], {**RECIPES, "bad": {key: value}})
    state = ablation(recipes_path=str(path), return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError) as error:
        state.result()
    message = str(error.value)
    assert "\n" not in message and "'bad'" in message and key in message
    assert not _task_runs(state.state_details.flow_run_id)


def test_same_recipe_and_seed_give_the_same_metrics(setup, runs):
    """The first recipe's seed-0 proxy trained and scored again (a rebuilt version of the same inputs)."""
    from pipeline.artifacts import read_manifest
    from tasks.pretrain import pretrain_spec, run_pretrain
    from tasks.proxy_eval import proxy_eval_spec, run_proxy_eval
    from flows.ablation import plan_ablation

    store = setup["store"]
    record = read_run(store, str(runs[0].state_details.flow_run_id))
    stages = record["stages"]
    plan = plan_ablation(setup["recipes"])
    config = plan.configs[("base", 0)]
    mixture = read_manifest(store, "mixture", stages["base:mixture"]["version"])
    tokenizer = read_manifest(store, "tokenizer", stages["base:tokenizer"]["version"])
    spec = pretrain_spec(config.train, config.model.size(), mixture, tokenizer, rebuild="determinism")
    model = run_pretrain(config.train, config.model.size(), store, spec, mixture, tokenizer, lambda _: None)
    heldout = read_manifest(store, "heldout", stages["_base:heldout"]["version"])
    folders = [SAMPLE / "eval"]
    eval_spec = proxy_eval_spec(config.eval, ["debian_cloze"], model, heldout, folders)
    again = run_proxy_eval(config.eval, ["debian_cloze"], store, eval_spec, model, heldout, folders, lambda _: None)
    original = read_manifest(store, "proxy-eval", stages["base/seed0:proxy-eval"]["version"])
    assert again["summary"]["metrics"] == original["summary"]["metrics"]
    assert model["counts"]["last_loss"] == read_manifest(store, "pretrain", stages["base/seed0:pretrain"]["version"]
                                                         )["counts"]["last_loss"]
