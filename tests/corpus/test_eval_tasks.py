"""Eval task items: lm-evaluation-harness-style multiple-choice JSONL, and the cloze and last-word tasks
generated from held-out documents."""

from __future__ import annotations

import json

import pytest

from corpus.eval_tasks import Document, TextItem, cloze_items, last_word_items, load_multiple_choice
from tests.conftest import SAMPLE


def test_multiple_choice_lines_with_index_or_text_gold(tmp_path):
    path = tmp_path / "arc.jsonl"
    path.write_text(json.dumps({"question": "Q?", "options": ["yes", "no"], "answer": "no"}) + "\n\n" +
                    json.dumps({"question": "R?", "options": ["a", " b"], "answer": 0}) + "\n")
    items = load_multiple_choice(path, "question", "options", "answer")
    assert items == [TextItem("Q?", [" yes", " no"], 1), TextItem("R?", [" a", " b"], 0)]
    assert len(load_multiple_choice(SAMPLE / "eval" / "debian_cloze.jsonl", "context", "choices", "gold")) == 40


@pytest.mark.parametrize("line, message", [
    ("{oops", "line 1: not JSON"),
    ('{"context": "c", "choices": ["only one"], "gold": 0}', "list of 2\\+ non-empty strings"),
    ('{"context": "c", "choices": ["a", "b"], "gold": 2}', "must be an index"),
    ('{"context": "c", "choices": ["a", "b"], "gold": "z"}', "must be an index"),
])
def test_malformed_multiple_choice_lines_fail_naming_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        load_multiple_choice(path, "context", "choices", "gold")


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
