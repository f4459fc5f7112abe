"""Decontamination: a shared 13-gram with an eval item is found, and reported by item."""

from __future__ import annotations

from corpus.decontamination import EvalNgramIndex
from tests.raw_inputs import english_paragraphs

PARAGRAPHS = english_paragraphs()


def test_a_shared_13_gram_is_found_whatever_the_case_and_punctuation():
    eval_item = PARAGRAPHS[0]
    index = EvalNgramIndex.build([("hellaswag/17", eval_item), ("arc/3", PARAGRAPHS[1])])
    words = eval_item.split()
    assert len(words) >= 20
    quoted = " ".join(words[3:3 + 13]).upper().replace(" ", "  ,")
    document = f"{PARAGRAPHS[2]}\n\nAs the manual says: {quoted} — and more."
    assert index.hits(document) == {"hellaswag/17"}


def test_twelve_shared_words_are_not_enough():
    eval_item = PARAGRAPHS[0]
    index = EvalNgramIndex.build([("item", eval_item)])
    words = eval_item.split()
    assert index.hits(" ".join(words[:12])) == set()
    assert index.hits(" ".join(words[:13])) == {"item"}


def test_short_items_are_matched_whole_and_clean_text_has_no_hits():
    index = EvalNgramIndex.build([("lambada/1", "Which partition holds the boot loader?")], n=13)
    assert index.hits("Quiz: which partition holds the boot loader? Think.") == {"lambada/1"}
    assert index.hits("Which partition holds the kernel?") == set()
    full = EvalNgramIndex.build([(f"p{i}", text) for i, text in enumerate(PARAGRAPHS[:5])])
    assert len(full) > 100
    assert full.hits(PARAGRAPHS[6]) == set()
