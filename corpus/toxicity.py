"""Word-list toxicity check for the filtering stage: the LDNOOBW lists (data/ldnoobw/, CC-BY-4.0).

A document is checked against the list of its language (from the langid stage). Entries are matched
case-insensitively as whole words or phrases (runs of whitespace inside a phrase match any
whitespace); for languages written without spaces (Japanese, Chinese, Thai) their CJK/Thai entries
match anywhere in the text, character by character, while their Latin entries still need word
boundaries (single-character CJK entries are skipped: they occur inside ordinary words). Two modes: `any` removes a document with a single match (what C4 did), `ratio` removes
it when matches per word exceed a threshold.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

DEFAULT_LISTS = Path(__file__).resolve().parents[1] / "data" / "ldnoobw"
UNSPACED_LANGUAGES = frozenset({"ja", "zh", "th"})
_ASCII_WORD = re.compile(r"^[\x00-\x7f]+$")


def _phrase_pattern(phrase: str) -> str:
    return r"\s+".join(re.escape(part) for part in phrase.split())


_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class WordList:
    """A language's list, split for fast matching: entries made of word characters are looked up as
    word n-grams in a set; the rest (punctuation inside, CJK/Thai in unspaced languages) by regex."""

    ngrams: dict[int, frozenset[tuple[str, ...]]]
    pattern: re.Pattern | None

    def matches(self, text: str) -> list[str]:
        found: list[str] = []
        if self.ngrams:
            tokens = _WORD.findall(text.lower())
            for n, entries in self.ngrams.items():
                # filter runs the set lookups in C: Python code only for the (rare) matches
                found += [" ".join(gram) for gram in filter(entries.__contains__, zip(*(tokens[i:] for i in range(n))))]
        if self.pattern is not None:
            found += [match.group(0) for match in self.pattern.finditer(text)]
        return found


@lru_cache(maxsize=64)
def word_list(lists_dir: str, lang: str) -> WordList | None:
    """The compiled list of a language, or None if there is none."""
    path = Path(lists_dir) / f"{lang}.json"
    if not path.is_file():
        return None
    phrases = sorted({p.strip().lower() for p in json.loads(path.read_text(encoding="utf-8")) if p.strip()},
                     key=len, reverse=True)
    unspaced = lang in UNSPACED_LANGUAGES
    ngrams: dict[int, set[tuple[str, ...]]] = {}
    bounded, anywhere = [], []
    for phrase in phrases:
        words = tuple(phrase.split())
        if all(_WORD.fullmatch(word) for word in words) and (not unspaced or _ASCII_WORD.match(phrase)):
            ngrams.setdefault(len(words), set()).add(words)
        elif not unspaced or _ASCII_WORD.match(phrase):
            bounded.append(_phrase_pattern(phrase))
        elif len(phrase) > 1:
            # A single CJK character (e.g. 性) is part of too many ordinary words (性能, performance).
            anywhere.append(_phrase_pattern(phrase))
    parts = []
    if bounded:
        parts.append(r"(?<!\w)(?:" + "|".join(bounded) + r")(?!\w)")
    if anywhere:
        parts.append("(?:" + "|".join(anywhere) + ")")
    pattern = re.compile("|".join(parts), re.IGNORECASE) if parts else None
    return WordList({n: frozenset(entries) for n, entries in ngrams.items()}, pattern)


@dataclass(frozen=True)
class WordListToxicity:
    mode: str = "any"  # any | ratio
    max_ratio: float = 0.001
    lists_dir: str = field(default=str(DEFAULT_LISTS))

    def __post_init__(self) -> None:
        if self.mode not in ("any", "ratio"):
            raise ValueError(f"mode must be 'any' or 'ratio', got {self.mode!r}")
        if not 0 <= self.max_ratio <= 1:
            raise ValueError(f"max_ratio must be between 0 and 1, got {self.max_ratio}")

    def matches(self, text: str, lang: str) -> list[str]:
        words = word_list(self.lists_dir, lang)
        return words.matches(text) if words is not None else []

    def check(self, text: str, lang: str) -> str | None:
        found = self.matches(text, lang)
        if not found:
            return None
        if self.mode == "any":
            return "toxicity_word_list"
        units = len(text) if lang in UNSPACED_LANGUAGES else len(text.split())
        return "toxicity_word_ratio" if units and len(found) / units > self.max_ratio else None

    def has_list(self, lang: str) -> bool:
        return word_list(self.lists_dir, lang) is not None
