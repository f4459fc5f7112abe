"""Each heuristic quality rule on crafted inputs on both sides of its threshold, starting from real
English prose (paragraphs of the Debian installation manual) that passes every rule."""

from __future__ import annotations

import pytest

from corpus.quality_rules import (
    C4Quality,
    FineWebQuality,
    GopherQuality,
    GopherRepetition,
    duplicated_ngram_chars,
    duplicates,
    top_ngram_chars,
)
from tests.raw_inputs import english_paragraphs

ENGLISH = english_paragraphs()
PROSE = "\n\n".join(ENGLISH[:8])
RULES = [GopherQuality(), GopherRepetition(), C4Quality(), FineWebQuality()]


def test_real_prose_passes_every_rule():
    assert len(PROSE.split()) > 300
    assert [rule.check(PROSE) for rule in RULES] == [None] * 4


def test_helpers():
    assert duplicates(["a", "b", "a", "a"]) == (2, 2)
    assert top_ngram_chars("x y x y x y".split(), 2) == len("x y") * 3
    assert top_ngram_chars("a b c d".split(), 2) == 0  # nothing repeats
    assert duplicated_ngram_chars("a b c a b c".split(), 3) == 3
    assert duplicated_ngram_chars("a b c d e f".split(), 3) == 0


# -- Gopher quality -------------------------------------------------------------------------------

def words(n: int, start: int = 0) -> str:
    """n words of the real prose, from word `start` on (wrapping around)."""
    pool = PROSE.split()
    return " ".join(pool[(start + i) % len(pool)] for i in range(n))


SENTENCES = [s.strip() + "." for s in PROSE.replace("\n", " ").split(". ") if len(s.split()) >= 6]


@pytest.mark.parametrize("n, reason", [(49, "gopher_short_doc"), (50, None), (100_001, "gopher_long_doc")])
def test_gopher_document_length(n, reason):
    assert GopherQuality().check(words(n)) == reason


def test_gopher_average_word_length():
    short = " ".join(["to be of it", "and the"] * 20) + " " + words(10)
    assert GopherQuality().check(short) == "gopher_below_avg_word_length"
    long = " ".join(["internationalization"] * 60) + " the and of"
    assert GopherQuality().check(long) == "gopher_above_avg_word_length"


def test_gopher_symbol_ratio():
    base = words(100)
    assert GopherQuality().check(base + " #" * 10) is None           # 10 / 110 words
    assert GopherQuality().check(base + " #tag" * 12) == "gopher_symbol_word_ratio"  # 12 / 112 > 0.1


def test_gopher_bullet_and_ellipsis_lines():
    lines = [f"- {words(15, 20 * i)}" for i in range(9)] + [words(15, 200)]
    assert GopherQuality().check("\n".join(lines)) is None            # 9 of 10 = 0.9, not above
    assert GopherQuality().check("\n".join(lines[:9] + [f"* {words(15, 200)}"])) == "gopher_bullet_lines_ratio"
    ellipsis = [f"{words(12, 15 * i)}..." if i < 3 else words(12, 15 * i) for i in range(10)]
    assert GopherQuality().check("\n".join(ellipsis)) is None         # 0.3, not above
    ellipsis[3] += "…"
    assert GopherQuality().check("\n".join(ellipsis)) == "gopher_ellipsis_lines_ratio"


def test_gopher_alphabetic_words_and_stop_words():
    numbers = " ".join(str(1000 + i) for i in range(30))
    assert GopherQuality().check(words(100) + " " + numbers[: len(numbers) // 2]) is None
    assert GopherQuality().check(words(40) + " " + numbers) == "gopher_non_alpha_words_ratio"
    no_stop = " ".join(word for word in words(200).split() if word.lower() not in {"the", "be", "to", "of",
                                                                                     "and", "that", "have", "with"})
    assert GopherQuality().check(no_stop) == "gopher_few_stop_words"
    assert GopherQuality(check_stop_words=False).check(no_stop) is None


# -- Gopher repetition ----------------------------------------------------------------------------

def test_gopher_duplicate_lines_and_paragraphs():
    paragraphs = ENGLISH[:10]
    assert GopherRepetition().check("\n\n".join(paragraphs)) is None
    repeated = paragraphs[:6] + paragraphs[:4]  # 4 of 10 paragraphs repeat
    assert GopherRepetition().check("\n\n".join(repeated)) == "gopher_dup_para_frac"
    lines = SENTENCES[:10]
    assert len(set(lines)) == 10 and GopherRepetition().check("\n".join(lines)) is None
    assert GopherRepetition().check("\n".join(lines[:6] + lines[:4])) == "gopher_dup_line_frac"


def test_gopher_top_and_duplicated_ngrams():
    assert GopherRepetition().check(PROSE) is None
    spam = PROSE + " " + " ".join(["click here"] * 200)
    assert GopherRepetition().check(spam) == "gopher_top_2_gram"
    long_repeat = PROSE + " " + " ".join(ENGLISH[0].split()[:12]) * 1
    assert GopherRepetition().check(long_repeat) is None  # one repeated 12-gram is well under 15 %


# -- C4 -------------------------------------------------------------------------------------------

def test_c4_removes_lines_then_judges_the_document():
    good = "\n".join(f"This is sentence number {i} about the installer." for i in range(6))
    cleaned, reason, removed = C4Quality().apply(good + "\nMenu\nEnable javascript to view this page.\n"
                                                 "Read our privacy policy here.\nok.")
    assert reason is None and removed == 4 and cleaned == good
    assert C4Quality().check("\n".join(good.split("\n")[:4])) == "c4_too_few_sentences"
    assert C4Quality().check(good + "\nLorem ipsum dolor sit amet.") == "c4_lorem_ipsum"
    assert C4Quality().check(good + "\nfunction() { return 1; }") == "c4_curly_bracket"
    assert C4Quality(filter_curly_bracket=False).check(good + "\nThe set {a, b} has two items.") is None


# -- FineWeb --------------------------------------------------------------------------------------

def test_fineweb_rules():
    rule = FineWebQuality()
    assert rule.check(PROSE) is None
    no_punct = "\n".join(f"heading number {i} without any punctuation at its end" for i in range(20))
    assert rule.check(no_punct) == "fineweb_line_punct_ratio"
    short = "\n".join(["Short line one.", "Two.", "Three lines.", ENGLISH[0]] * 1 + [f"Item {i}." for i in range(5)])
    assert rule.check(short) == "fineweb_short_line_ratio"
    duplicated = PROSE + "\n" + ENGLISH[0]  # one whole paragraph repeated as a line
    assert rule.check(duplicated) == "fineweb_char_dup_ratio"
    listy = "\n".join(f"{word} {i}." for i, word in enumerate(words(60).split()[:60]))
    assert FineWebQuality(short_line_thr=1.0).check(listy) == "fineweb_list_ratio"


def _walk(words: list[str], n: int) -> int:
    """The published definition, literally (datatrove's find_all_duplicate)."""
    unique: set[str] = set()
    chars = index = 0
    while index < len(words) - n + 1:
        gram = "".join(words[index:index + n])
        if gram in unique:
            chars += len(gram)
            index += n
        else:
            unique.add(gram)
            index += 1
    return chars


def test_duplicated_ngram_chars_equals_the_literal_walk_on_repetitive_texts():
    import random

    from corpus.quality_rules import duplicated_ngram_chars

    rng = random.Random(7)
    for _ in range(300):
        vocabulary = [f"w{i}" * rng.randint(1, 3) for i in range(rng.randint(1, 6))]
        words = [rng.choice(vocabulary) for _ in range(rng.randint(0, 60))]
        for n in (1, 2, 3, 5):
            assert duplicated_ngram_chars(words, n) == _walk(words, n), (words, n)
