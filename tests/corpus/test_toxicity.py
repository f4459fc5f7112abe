"""The LDNOOBW word-list check: word boundaries, phrases, unspaced languages, the two modes."""

from __future__ import annotations

import json

import pytest

from corpus.toxicity import DEFAULT_LISTS, WordListToxicity

CLEAN_TEXT = ("The installer assesses the class of your hardware, then passes the partitioning "
              "step to the assistant; this is classic Debian.")


def test_shipped_lists_and_licence():
    lists = sorted(path.stem for path in DEFAULT_LISTS.glob("*.json"))
    assert len(lists) >= 25 and {"en", "de", "fr", "ja", "zh", "ru"} <= set(lists)
    assert "Attribution 4.0 International" in (DEFAULT_LISTS / "LICENSE").read_text()


def test_whole_words_only():
    rule = WordListToxicity()
    assert rule.check(CLEAN_TEXT, "en") is None  # "ass" inside assesses, class, passes, assistant, classic
    assert rule.matches("What an ASS he was.", "en") == ["ass"]  # word entries come back lowercased
    assert rule.check("What an ass he was.", "en") == "toxicity_word_list"


def test_phrases_match_across_whitespace():
    phrase = next(p for p in json.loads((DEFAULT_LISTS / "en.json").read_text()) if " " in p)
    first, rest = phrase.split(" ", 1)
    assert WordListToxicity().matches(f"before {first}\n  {rest} after", "en")


def test_unspaced_languages_match_inside_text_but_latin_entries_keep_boundaries():
    japanese = json.loads((DEFAULT_LISTS / "ja.json").read_text())
    cjk = next(p for p in japanese if not p.isascii() and " " not in p)
    assert WordListToxicity().check(f"これは{cjk}です", "ja") == "toxicity_word_list"
    assert "xx" in japanese and WordListToxicity().check("ボックスxxxl のサイズ", "ja") is None
    assert "性" in json.loads((DEFAULT_LISTS / "zh.json").read_text())
    assert WordListToxicity().check("这个版本的性能更好。", "zh") is None  # 性能: performance


def test_ratio_mode_and_languages_without_a_list():
    rule = WordListToxicity(mode="ratio", max_ratio=0.05)
    long_text = ("word " * 100) + "ass"
    assert rule.check(long_text, "en") is None           # 1 / 101 words
    assert rule.check("word " * 10 + "ass", "en") == "toxicity_word_ratio"  # 1 / 11
    assert WordListToxicity().check("anything at all", "xx") is None and not WordListToxicity().has_list("xx")


def test_invalid_settings_fail():
    with pytest.raises(ValueError, match="mode"):
        WordListToxicity(mode="some")
    with pytest.raises(ValueError, match="max_ratio"):
        WordListToxicity(max_ratio=2)
