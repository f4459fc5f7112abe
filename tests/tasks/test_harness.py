"""The harness helpers of the eval stage: metric names as the harness reports them, chance levels from the
per-sample logs, the CORE-style aggregate on hand-made results with known baselines, and unknown task
names refused before any model is scored."""

from __future__ import annotations

import pytest

from tasks.harness import check_tasks, chance_levels, core_score, task_manager, task_metrics, task_versions
from tests.conftest import SAMPLE


def sample(choices: int, mutual_info: bool = False) -> dict:
    arguments = [("context", f" choice {index}") for index in range(choices)]
    if mutual_info:
        arguments += [("", f" choice {index}") for index in range(choices)]
    return {"arguments": arguments, "metrics": ["acc", "acc_norm"] + (["acc_mutual_info"] if mutual_info else [])}


MULTIPLE_CHOICE = {"output_type": "multiple_choice"}
RAW = {
    "results": {
        "hellaswag": {"alias": "hellaswag", "acc,none": 0.40, "acc_stderr,none": 0.01, "acc_norm,none": 0.45},
        "lambada_openai": {"acc,none": 0.30, "perplexity,none": 40.0, "perplexity_stderr,none": "N/A"},
        "arc": {"acc,none": 0.45, "sample_len": 4},
        "arc_easy": {"acc,none": 0.60}, "arc_challenge": {"acc,none": 0.30},
        "wikitext": {"word_perplexity,none": 50.0},
        "gsm8k": {"exact_match,strict-match": 0.1, "exact_match,flexible-extract": 0.2},
    },
    "group_subtasks": {"arc": ["arc_easy", "arc_challenge"], "hellaswag": [], "lambada_openai": []},
    "configs": {"hellaswag": MULTIPLE_CHOICE, "arc_easy": MULTIPLE_CHOICE, "arc_challenge": MULTIPLE_CHOICE,
                "lambada_openai": {"output_type": "loglikelihood"}, "wikitext": {"output_type": "loglikelihood_rolling"},
                "gsm8k": {"output_type": "generate_until"}},
    "n-samples": {"hellaswag": {"original": 10, "effective": 4}, "arc_easy": {"effective": 2},
                  "arc_challenge": {"effective": 2}, "lambada_openai": {"effective": 3}, "wikitext": {"effective": 1},
                  "gsm8k": {"effective": 1}},
    "samples": {"hellaswag": [sample(4)] * 4, "arc_easy": [sample(4), sample(5)],
                "arc_challenge": [sample(4, mutual_info=True)] * 2, "lambada_openai": [{"arguments": [("c", " w")]}] * 3,
                "wikitext": [{"arguments": [("text",)]}], "gsm8k": [{"arguments": [("q", {})]}]},
    "versions": {"hellaswag": 1.0, "arc_easy": 1.0}, "n-shot": {"hellaswag": 0}, "task_hashes": {},
}


def test_metrics_are_the_harness_numbers_by_task_and_filter():
    metrics = task_metrics(RAW)
    assert metrics["hellaswag"] == {"acc": 0.40, "acc_norm": 0.45}
    assert metrics["lambada_openai"] == {"acc": 0.30, "perplexity": 40.0}
    assert metrics["gsm8k"] == {"exact_match/strict-match": 0.1, "exact_match/flexible-extract": 0.2}
    assert task_versions(RAW)["hellaswag"] == {"version": 1.0, "items": 4, "shots": 0, "hash": None}


def test_chance_is_one_over_the_choices_of_each_item():
    levels = chance_levels(RAW)
    assert levels["hellaswag"] == 0.25 and levels["arc_easy"] == pytest.approx((1 / 4 + 1 / 5) / 2)
    assert levels["arc_challenge"] == 0.25  # acc_mutual_info's unconditional requests are not choices
    assert levels["lambada_openai"] == levels["wikitext"] == levels["gsm8k"] == 0.0


def test_core_averages_centred_accuracy_over_the_tasks_that_report_it():
    score = core_score(RAW, ["hellaswag", "lambada_openai", "arc", "wikitext", "gsm8k"])
    arc_chance = (2 * (1 / 4 + 1 / 5) / 2 + 2 * 0.25) / 4  # the group pools its subtasks by items
    expected = {"hellaswag": (0.40 - 0.25) / 0.75, "lambada_openai": 0.30,
                "arc": ((0.60 * 2 + 0.30 * 2) / 4 - arc_chance) / (1 - arc_chance)}
    assert score["tasks"] == pytest.approx(expected)  # wikitext and gsm8k have no acc: not in the aggregate
    assert score["core"] == pytest.approx(sum(expected.values()) / 3)
    assert core_score(RAW, ["hellaswag"], metric="acc_norm")["core"] == pytest.approx((0.45 - 0.25) / 0.75)
    assert core_score(RAW, ["wikitext"])["core"] is None


def test_unknown_task_names_are_refused_naming_them():
    manager = task_manager([SAMPLE / "eval"])
    check_tasks(manager, ["debian_cloze", "hellaswag", "mmlu"])
    with pytest.raises(ValueError, match=r"eval.tasks: unknown task\(s\) \['helaswag'\]"):
        check_tasks(manager, ["debian_cloze", "helaswag"])


def test_only_the_local_folders_are_indexed_when_they_define_every_task_asked_for():
    assert set(task_manager([SAMPLE / "eval"], ["debian_cloze"]).all_tasks) == {"debian_cloze"}
    mixed = task_manager([SAMPLE / "eval"], ["debian_cloze", "hellaswag"])  # a harness task: its own index too
    check_tasks(mixed, ["debian_cloze", "hellaswag", "mmlu"])
