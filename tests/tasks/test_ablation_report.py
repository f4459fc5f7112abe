"""The ablation report on hand-computed numbers: means, spreads, which differences exceed the seed spread
and the sentences saying so, the cost totals, missing metrics, the markdown and the plot."""

from __future__ import annotations

import json

import pytest

from tasks.ablation_report import lower_is_better, markdown_table, plot, summarize


def _run(recipe, seed, metrics, *, documents=100, tokens=5000, flops=1e12, data=0.0, train=30.0, cached=0.0):
    return {"recipe": recipe, "seed": seed, "metrics": metrics, "documents": documents, "tokens": tokens,
            "train_flops": flops, "data_cpu_s": data, "train_cpu_s": train, "cached_cpu_s": cached,
            "model": {"artifact": "pretrain", "version": f"{recipe}-{seed}"}, "lineage": {}}


RUNS = [
    # base: bpb 2.000 / 2.020 (mean 2.010, spread 0.020); acc 0.30 / 0.34 (mean 0.32, spread 0.04)
    _run("base", 0, {"bpb": 2.000, "acc": 0.30}, documents=120, tokens=6000, data=40.0),
    _run("base", 1, {"bpb": 2.020, "acc": 0.34}, documents=120, tokens=6000, cached=40.0),
    # no-c4: bpb mean 2.000 (delta -0.010, inside 0.020); acc mean 0.32 (delta 0)
    _run("no-c4", 0, {"bpb": 1.990, "acc": 0.31}, documents=150, data=12.0, cached=30.0),
    _run("no-c4", 1, {"bpb": 2.010, "acc": 0.33}, documents=150, cached=42.0),
    # dedup-off: bpb mean 2.102 (spread 0.004; delta +0.092 > 0.020: worse); acc mean 0.41 (+0.09 > 0.04: better)
    _run("dedup-off", 0, {"bpb": 2.100, "acc": 0.40}, documents=180, flops=2e12, data=8.0, cached=32.0),
    _run("dedup-off", 1, {"bpb": 2.104, "acc": 0.42}, documents=180, flops=2e12, cached=40.0),
]


def _row(summary, recipe, metric):
    return next(r for r in summary["rows"] if r["recipe"] == recipe and r["metric"] == metric)


def _comparison(summary, recipe, metric):
    return next(c for c in summary["comparisons"] if c["recipe"] == recipe and c["metric"] == metric)


def test_means_spreads_and_per_seed_values():
    summary = summarize(RUNS)
    assert summary["recipes"] == ["base", "no-c4", "dedup-off"] and summary["baseline"] == "base"
    assert summary["seeds"] == [0, 1] and summary["metrics"] == ["bpb", "acc"]
    assert len(summary["rows"]) == 6
    base = _row(summary, "base", "bpb")
    assert base["mean"] == pytest.approx(2.010) and base["spread"] == pytest.approx(0.020)
    assert base["std"] == pytest.approx(0.02 / 2 ** 0.5)               # sample std of two values: |a-b|/sqrt(2)
    assert base["per_seed"] == {0: 2.000, 1: 2.020} and base["n"] == 2 and base["missing_seeds"] == []
    assert (base["documents"], base["tokens"]) == (120, 6000)
    assert base["lower_is_better"] is True and _row(summary, "base", "acc")["lower_is_better"] is False
    dedup = _row(summary, "dedup-off", "bpb")
    assert dedup["mean"] == pytest.approx(2.102) and dedup["spread"] == pytest.approx(0.004)
    assert _row(summary, "dedup-off", "acc")["mean"] == pytest.approx(0.41)


def test_differences_are_judged_against_the_larger_seed_spread():
    summary = summarize(RUNS)
    assert len(summary["comparisons"]) == 4                             # 2 recipes x 2 metrics, none for base
    inside = _comparison(summary, "no-c4", "bpb")
    assert inside["delta"] == pytest.approx(-0.010) and inside["spread"] == pytest.approx(0.020)
    assert inside["exceeds_spread"] is False and inside["better"] is None
    assert inside["sentence"] == "no-c4 vs base: \u22120.010 bpb, inside the seed spread of 0.020"
    assert _comparison(summary, "no-c4", "acc")["sentence"] == \
        "no-c4 vs base: +0.000 acc, inside the seed spread of 0.040"
    worse = _comparison(summary, "dedup-off", "bpb")                   # spreads 0.004 and 0.020: the larger counts
    assert worse["delta"] == pytest.approx(0.092) and worse["spread"] == pytest.approx(0.020)
    assert worse["exceeds_spread"] is True and worse["better"] is False
    assert worse["sentence"] == "dedup-off vs base: +0.092 bpb, outside the seed spread of 0.020: worse"
    better = _comparison(summary, "dedup-off", "acc")                  # higher accuracy is better
    assert better["exceeds_spread"] is True and better["better"] is True
    assert better["sentence"] == "dedup-off vs base: +0.090 acc, outside the seed spread of 0.040: better"


def test_a_difference_equal_to_the_spread_does_not_count_and_lower_bpb_is_better():
    runs = [_run("a", 0, {"bpb": 1.5}), _run("a", 1, {"bpb": 2.0}),   # mean 1.75, spread 0.5
            _run("b", 0, {"bpb": 1.0}), _run("b", 1, {"bpb": 1.5}),   # mean 1.25: delta -0.5 = the spread
            _run("c", 0, {"bpb": 1.0}), _run("c", 1, {"bpb": 1.2})]   # mean 1.1: delta -0.65 > 0.5
    summary = summarize(runs)
    assert _comparison(summary, "b", "bpb")["exceeds_spread"] is False
    assert _comparison(summary, "c", "bpb")["sentence"] == "c vs a: \u22120.650 bpb, outside the seed spread of " \
                                                            "0.500: better"
    # Another baseline.
    other = summarize(runs, baseline="c")
    assert [c["recipe"] for c in other["comparisons"]] == ["a", "b"]
    assert _comparison(other, "a", "bpb")["sentence"].endswith("outside the seed spread of 0.500: worse")
    with pytest.raises(ValueError, match="baseline 'z' is not a recipe"):
        summarize(runs, baseline="z")


def test_missing_metrics_are_named_not_guessed():
    runs = [*RUNS[:2],
            _run("half", 0, {"bpb": 1.9, "acc": 0.5}), _run("half", 1, {"bpb": float("nan")}),
            _run("none", 0, {"bpb": 2.0}), _run("none", 1, {"bpb": 2.0})]
    summary = summarize(runs)
    half_acc, half_bpb = _row(summary, "half", "acc"), _row(summary, "half", "bpb")
    assert half_acc["per_seed"] == {0: 0.5} and half_acc["missing_seeds"] == [1] and half_acc["std"] is None
    assert half_bpb["per_seed"] == {0: 1.9} and half_bpb["missing_seeds"] == [1]   # NaN is no score
    assert _comparison(summary, "half", "acc")["sentence"] == \
        "half vs base: +0.180 acc, but only one seed of half was scored: no seed spread to judge it by"
    assert _comparison(summary, "half", "acc")["exceeds_spread"] is False
    none_acc = _row(summary, "none", "acc")
    assert none_acc["mean"] is None and none_acc["spread"] is None and none_acc["missing_seeds"] == [0, 1]
    assert _comparison(summary, "none", "acc") == {
        "recipe": "none", "baseline": "base", "metric": "acc", "delta": None, "spread": None,
        "exceeds_spread": False, "better": None, "sentence": "none vs base: no acc for none"}
    # none's bpb has no spread (0), base's 0.020: the larger counts.
    assert _comparison(summary, "none", "bpb")["sentence"] == \
        "none vs base: \u22120.010 bpb, inside the seed spread of 0.020"


def test_cost_per_recipe_and_total():
    cost = summarize(RUNS)["cost"]
    assert cost["base"] == {"train_flops": 2e12, "data_cpu_s": 40.0, "train_cpu_s": 60.0,
                            "cached_cpu_s_saved": 40.0, "runs": 2}
    assert cost["no-c4"] == {"train_flops": 2e12, "data_cpu_s": 12.0, "train_cpu_s": 60.0,
                             "cached_cpu_s_saved": 72.0, "runs": 2}
    assert cost["dedup-off"]["train_flops"] == 4e12 and cost["dedup-off"]["cached_cpu_s_saved"] == 72.0
    assert cost["total"] == {"train_flops": 8e12, "data_cpu_s": 60.0, "train_cpu_s": 180.0,
                             "cached_cpu_s_saved": 184.0, "runs": 6}


def test_runs_are_required_and_total_is_reserved():
    with pytest.raises(ValueError, match="no proxy runs"):
        summarize([])
    with pytest.raises(ValueError, match="'total'"):
        summarize([_run("total", 0, {"bpb": 1.0}), _run("base", 0, {"bpb": 1.0})])


def test_lower_is_better():
    for name in ("bpb", "heldout/web/bpb", "bits_per_byte", "word_perplexity", "val_loss"):
        assert lower_is_better(name), name
    for name in ("acc", "acc_norm", "debian_cloze/acc", "core"):
        assert not lower_is_better(name), name


def test_markdown_table_holds_every_value_sentence_and_cost():
    summary = summarize(RUNS)
    text = markdown_table(summary)
    assert "| recipe | metric | mean | spread (max−min) | std | seed 0 | seed 1 | documents | tokens |" in text
    assert "| base | bpb ↓ | 2.010 | 0.020 | 0.014 | 2.000 | 2.020 | 120 | 6,000 |" in text
    assert "| dedup-off | acc ↑ | 0.410 | 0.020 | 0.014 | 0.400 | 0.420 | 180 | 5,000 |" in text
    assert "- dedup-off vs base: +0.092 bpb, outside the seed spread of 0.020: worse" in text
    assert "| no-c4 | 2 | 2e+12 | 12.0 | 60.0 | 72.0 |" in text
    assert "| **total** | 6 | 8e+12 | 60.0 | 180.0 | 184.0 |" in text
    # Read back from JSON (the artifact's summary.json), the seeds are strings: the same table.
    assert markdown_table(json.loads(json.dumps(summary))) == text
    missing = markdown_table(summarize([*RUNS[:2], _run("x", 0, {"bpb": 1.0}), _run("x", 1, {})]))
    assert "| x | acc ↑ | – | – | – | – | – | 100 | 5,000 |" in missing


def test_plot_has_one_panel_per_metric(tmp_path):
    from matplotlib.image import imread

    summarize_two = summarize(RUNS)
    plot(summarize_two, tmp_path / "two.png")
    plot(summarize([_run("a", 0, {"bpb": 1.0}), _run("a", 1, {"bpb": 1.1}), _run("b", 0, {"bpb": 1.2}),
                    _run("b", 1, {})]), tmp_path / "one.png")
    two, one = imread(tmp_path / "two.png"), imread(tmp_path / "one.png")
    assert (tmp_path / "two.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert two.shape[:2] == (360, 800) and one.shape[:2] == (360, 400)   # 4 x 3.6 inches a panel at 100 dpi
    assert two.std() > 0                                                # something is drawn
