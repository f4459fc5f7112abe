"""Eval tasks generated from held-out documents (cloze and last word), and the harness task folders
they are written as (YAML + JSONL + loader), read back offline."""

from __future__ import annotations

import json

import pytest

from corpus.eval_tasks import (CLOZE_TASK, LAST_WORD_TASK, Document, TextItem, cloze_items, jsonl_splits,
                               last_word_items, write_task_folder)
from tests.conftest import SAMPLE


def test_the_shipped_task_data_loads_as_the_harness_reads_it():
    dataset = jsonl_splits({"test": "debian_cloze.jsonl"}, SAMPLE / "eval")
    assert len(dataset["test"]) == 40 and set(dataset["test"][0]) >= {"context", "choices", "gold"}


def test_a_malformed_line_fails_naming_the_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"context": "c"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2: not JSON"):
        jsonl_splits({"test": "bad.jsonl"}, tmp_path)


def test_generated_tasks_are_written_as_a_task_folder(tmp_path):
    cloze = [TextItem("the context", [" one two", " three four"], 1)]
    last = [TextItem("a passage ending before its", [" word"], 0)]
    assert write_task_folder(tmp_path / "tasks", cloze, last) == [CLOZE_TASK, LAST_WORD_TASK]
    rows = [json.loads(line) for line in (tmp_path / "tasks" / f"{CLOZE_TASK}.jsonl").read_text().splitlines()]
    assert rows == [{"context": "the context", "choices": ["one two", "three four"], "gold": 1}]
    assert json.loads((tmp_path / "tasks" / f"{LAST_WORD_TASK}.jsonl").read_text()) == {
        "context": "a passage ending before its", "word": "word"}
    assert "output_type: loglikelihood" in (tmp_path / "tasks" / f"{LAST_WORD_TASK}.yaml").read_text()
    assert sorted(path.name for path in (tmp_path / "tasks").iterdir()) == sorted(
        [f"{CLOZE_TASK}.jsonl", f"{CLOZE_TASK}.yaml", f"{LAST_WORD_TASK}.jsonl", f"{LAST_WORD_TASK}.yaml",
         "jsonl_data.py"])
    assert write_task_folder(tmp_path / "none", [], []) == [] and not list((tmp_path / "none").iterdir())


def documents(count: int, words: int = 200, lang: str = "en") -> list[Document]:
    return [Document(f"d{d}", lang, " ".join(f"w{d}x{i}" for i in range(words))) for d in range(count)]


def test_cloze_items_take_the_true_continuation_and_distractors_from_other_documents():
    docs = documents(5) + documents(1, lang="de")
    items = cloze_items(docs, count=12, choices=4, context_words=10, continuation_words=3, seed=1)
    assert len(items) == 12 and items == cloze_items(docs, 12, 4, 10, 3, seed=1)
    for item in items:
        context_doc = item.context.split()[0].split("x")[0]
        true = item.choices[item.gold].split()
        assert len(item.choices) == 4 and all(len(choice.split()) == 3 for choice in item.choices)
        assert int(true[0].split("x")[1]) == int(item.context.split()[-1].split("x")[1]) + 1  # the next words
        assert all(choice.split()[0].split("x")[0] != context_doc
                   for index, choice in enumerate(item.choices) if index != item.gold)
        assert "w5x" not in item.context  # the only German document has no other German ones: no items
    assert {item.gold for item in items} != {items[0].gold}  # the gold position varies
    assert cloze_items(documents(3), count=5, choices=4, context_words=10, continuation_words=3, seed=1) == []


def test_last_word_items_end_before_a_sentence_final_word():
    text = " ".join(["alpha"] * 8 + ["installer."] + ["beta"] * 8 + ["2024."] + ["gamma"] * 8 + ["partition!"])
    items = last_word_items([Document("d", "en", text)], count=10, context_words=5)
    assert [item.choices for item in items] == [[" installer"], [" partition"]]  # "2024." is not a word
    assert items[0].context == "alpha alpha alpha alpha alpha"
