"""Heuristic quality rules reimplemented from their published definitions, for the quality stage.

- Gopher quality and Gopher repetition: Rae et al. 2021, "Scaling Language Models" (MassiveText),
  appendix A, with the thresholds datatrove uses.
- C4: Raffel et al. 2020 (the C4 cleaning of Common Crawl), as datatrove's C4QualityFilter applies it:
  lines are removed, then the document may be.
- FineWeb: Penedo et al. 2024, the three custom filters (and the newline ratio) of datatrove's
  FineWebQualityFilter.

Each rule set is a frozen dataclass of its thresholds (the defaults are the published ones) with a
`check(text) -> reason | None`; the reason names the rule that removed the document, so removals can
be counted per rule. Words are whitespace-separated tokens. The stop words default to Gopher's English
ones; a language's own (FineWeb-2's, corpus/language_thresholds.py) replace them.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from itertools import count, filterfalse, islice
from operator import methodcaller

import numpy as np

from .minhash import combine

GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "‣", "⁃", "◦", "●", "▪", "-", "*", "·")
ELLIPSES = ("...", "…")
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "。", "！", "？", "”", "»")
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                     "use cookies")
_STARTS_WITH_BULLET = methodcaller("startswith", BULLETS)
_ENDS_WITH_ELLIPSIS = methodcaller("endswith", ELLIPSES)
_STRIP_PUNCTUATION = methodcaller("strip", ".,;:!?'\"()[]{}<>-–—«»“”‘’/*&%$@|")
_SENTENCE_END = re.compile(r"[.!?。！？]+(?=\s|$)")


def duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items that repeat an earlier one, their characters) — the first copy is not counted."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _ids(words: list[str]) -> np.ndarray:
    """Words as small integers, numbered in order of first occurrence (n-grams of ints hash and compare
    much faster than of strings). dict.fromkeys and map run in C: no Python code per word."""
    vocabulary = dict(zip(dict.fromkeys(words), count()))
    return np.fromiter(map(vocabulary.__getitem__, words), dtype=np.uint64, count=len(words))


def _gram_keys(ids: np.ndarray, n: int) -> np.ndarray:
    """One integer per word n-gram, equal exactly when the n-grams are: the ids in base 2^k (exact
    while n * k <= 64 bits), else the 64-bit polynomial hash of corpus.minhash (collisions ~2^-64)."""
    bits = max(int(ids.max()).bit_length(), 1) if len(ids) else 1
    if n * bits > 64:
        return combine(ids, n)
    count = len(ids) - n + 1
    keys = ids[:count].copy()
    for offset in range(1, n):
        keys <<= np.uint64(bits)
        keys |= ids[offset:offset + count]
    return keys


def _run_starts(ordered: np.ndarray) -> np.ndarray:
    """True where a sorted array's value differs from the one before (and at 0)."""
    new = np.empty(len(ordered), dtype=bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    return new


def top_ngram_chars(words: list[str], n: int, ids: np.ndarray | None = None) -> int:
    """Characters covered by the most frequent word n-gram (its length times its count); among equally
    frequent ones, the first to occur."""
    ids = _ids(words) if ids is None else ids
    if len(ids) < n:
        return 0
    keys = _gram_keys(ids, n)
    # np.sort (SIMD quicksort) rather than np.unique(return_index=True), which needs a stable argsort:
    # the first occurrence is only looked for among the most frequent grams
    ordered = np.sort(keys)
    starts = np.flatnonzero(_run_starts(ordered))
    counts = np.diff(np.append(starts, len(ordered)))
    top = counts.max()
    if top < 2:
        return 0
    best = ordered[starts[counts == top]]
    start = int(np.argmax(keys == best[0] if len(best) == 1 else np.isin(keys, best)))
    return len(" ".join(words[start:start + n])) * int(top)


def word_length_prefix(words: list[str]) -> np.ndarray:
    """Characters of words[:i] (without spaces) at index i."""
    return np.concatenate(([0], np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=len(words)))))


def duplicated_ngram_chars(words: list[str], n: int, ids: np.ndarray | None = None,
                           lengths: np.ndarray | None = None) -> int:
    """Characters in word n-grams that repeat an earlier n-gram, each repeat counted once (no overlap).

    The published definition walks the n-grams: a repeat of a gram seen so far is counted and the walk
    jumps n positions ahead (the skipped positions are not added to the seen set); any other position
    is added. Only positions whose gram occurred earlier can be repeats, so this visits just those and
    decides "seen" exactly: a gram is seen if an earlier candidate position added it, or if its first
    occurrence was not jumped over."""
    ids = _ids(words) if ids is None else ids
    if len(ids) < n:
        return 0
    keys = _gram_keys(ids, n)
    # np.unique(return_index=True, return_inverse=True) with an unstable (SIMD) argsort: the first
    # position of each gram is the minimum position in its run
    order = np.argsort(keys)
    new = _run_starts(keys[order])
    starts = np.flatnonzero(new)
    if len(starts) == len(keys):
        return 0  # nothing repeats (the common case)
    inverse = np.empty(len(keys), dtype=np.intp)
    inverse[order] = np.cumsum(new) - 1  # the gram's rank among the distinct grams, as np.unique numbers them
    first_of = np.minimum.reduceat(order, starts)[inverse]
    candidates = np.flatnonzero(first_of < np.arange(len(first_of)))
    lengths = word_length_prefix(words) if lengths is None else lengths
    gram_of, first_at = inverse[candidates].tolist(), first_of[candidates].tolist()
    repeats: list[int] = []
    seen: set[int] = set()
    chars = 0
    for position, gram, first_position in zip(candidates.tolist(), gram_of, first_at):
        if repeats and position < repeats[-1] + n:
            continue  # jumped over
        jumped = bisect.bisect_left(repeats, first_position) - 1
        first_visited = jumped < 0 or first_position >= repeats[jumped] + n
        if gram in seen or first_visited:
            chars += int(lengths[position + n] - lengths[position])
            repeats.append(position)
        else:
            seen.add(gram)
    return chars


@dataclass(frozen=True)
class GopherQuality:
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    max_non_alpha_words_ratio: float = 0.8  # at least this share of words must contain a letter
    min_stop_words: int = 2
    check_stop_words: bool = True  # the default stop words are English: switch off for other languages
    stop_words: frozenset[str] = GOPHER_STOP_WORDS

    def __post_init__(self) -> None:
        if isinstance(self.stop_words, str) or not all(isinstance(word, str) for word in self.stop_words):
            raise ValueError(f"stop_words must be a list of words, got {self.stop_words!r}")
        object.__setattr__(self, "stop_words", frozenset(word.lower() for word in self.stop_words))

    def check(self, text: str, words: list[str] | None = None) -> str | None:
        """`words`: text.split(), where the caller has it already (the rules share one split per text)."""
        words = text.split() if words is None else words
        if len(words) < self.min_doc_words:
            return "gopher_short_doc"
        if len(words) > self.max_doc_words:
            return "gopher_long_doc"
        average = len("".join(words)) / len(words)
        if average < self.min_avg_word_length:
            return "gopher_below_avg_word_length"
        if average > self.max_avg_word_length:
            return "gopher_above_avg_word_length"
        symbols = text.count("#") + sum(text.count(ellipsis) for ellipsis in ELLIPSES)
        if symbols / len(words) > self.max_symbol_word_ratio:
            return "gopher_symbol_word_ratio"
        # map/filter with methods run in C: no Python code per line or word
        lines = list(filter(str.strip, text.split("\n")))
        if lines and sum(map(_STARTS_WITH_BULLET, map(str.lstrip, lines))) / len(lines) > self.max_bullet_lines_ratio:
            return "gopher_bullet_lines_ratio"
        if lines and sum(map(_ENDS_WITH_ELLIPSIS, map(str.rstrip, lines))) / len(lines) > \
                self.max_ellipsis_lines_ratio:
            return "gopher_ellipsis_lines_ratio"
        # most words are all letters, most others are letters with punctuation around them; only the rest
        # is looked into letter by letter (punctuation is never a letter, so stripping it changes nothing)
        others = filterfalse(str.isalpha, map(_STRIP_PUNCTUATION, filterfalse(str.isalpha, words)))
        without_letters = sum(1 for word in others if not any(map(str.isalpha, word)))
        if 1 - without_letters / len(words) < self.max_non_alpha_words_ratio:
            return "gopher_non_alpha_words_ratio"
        if self.check_stop_words and len(list(islice(filter(self.stop_words.__contains__, map(str.lower, words)),
                                                     self.min_stop_words))) < self.min_stop_words:
            return "gopher_few_stop_words"  # (counting stops at min_stop_words)
        return None


@dataclass(frozen=True)
class GopherRepetition:
    max_dup_line_frac: float = 0.3
    max_dup_para_frac: float = 0.3
    max_dup_line_char_frac: float = 0.2
    max_dup_para_char_frac: float = 0.2
    top_ngrams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_ngrams: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

    def check(self, text: str, words: list[str] | None = None) -> str | None:
        if not text:
            return None
        stripped = text.strip()
        # split on runs of 2+ newlines (str.split is ~4x faster than a regex): a piece that starts with
        # a newline continues the run
        paragraphs = [p for p in (piece.lstrip("\n") for piece in stripped.split("\n\n")) if p]
        count, chars = duplicates(paragraphs)
        if paragraphs and count / len(paragraphs) > self.max_dup_para_frac:
            return "gopher_dup_para_frac"
        if chars / len(text) > self.max_dup_para_char_frac:
            return "gopher_dup_para_char_frac"
        lines = [line for line in stripped.split("\n") if line]
        count, chars = duplicates(lines)
        if lines and count / len(lines) > self.max_dup_line_frac:
            return "gopher_dup_line_frac"
        if chars / len(text) > self.max_dup_line_char_frac:
            return "gopher_dup_line_char_frac"
        words = text.split() if words is None else words
        ids = _ids(words)
        for n, limit in self.top_ngrams:
            if top_ngram_chars(words, n, ids) / len(text) > limit:
                return f"gopher_top_{n}_gram"
        lengths = word_length_prefix(words)
        for n, limit in sorted(self.dup_ngrams):
            chars = duplicated_ngram_chars(words, n, ids, lengths)
            if chars / len(text) > limit:
                return f"gopher_dup_{n}_grams"
            if chars == 0:
                break  # no repeated n-gram means no repeated longer one either
        return None


@dataclass(frozen=True)
class C4Quality:
    """Lines without terminal punctuation, with fewer than `min_words_per_line` words, with a word
    longer than `max_word_length`, mentioning javascript or a policy are removed; the document is
    removed if it has lorem ipsum or a curly bracket, or fewer than `min_sentences` sentences left."""

    min_words_per_line: int = 3
    max_word_length: int = 1000
    min_sentences: int = 5
    filter_no_terminal_punct: bool = True
    filter_javascript: bool = True
    filter_policy: bool = True
    filter_lorem_ipsum: bool = True
    filter_curly_bracket: bool = True

    def apply(self, text: str) -> tuple[str, str | None, int]:
        """(text with bad lines removed, the reason the document is removed or None, lines removed)."""
        lowered = text.lower()
        if self.filter_lorem_ipsum and "lorem ipsum" in lowered:
            return text, "c4_lorem_ipsum", 0
        if self.filter_curly_bracket and "{" in text:
            return text, "c4_curly_bracket", 0
        # a substring not in the whole lowered text is in no line: lines are lowered only when one is there
        javascript = self.filter_javascript and "javascript" in lowered
        policies = [policy for policy in POLICY_SUBSTRINGS if policy in lowered] if self.filter_policy else []
        min_words = self.min_words_per_line
        kept, removed = [], 0
        for line in text.split("\n"):
            stripped = line.strip()
            if not stripped:
                kept.append(line)
                continue
            if (self.filter_no_terminal_punct and not stripped.endswith(TERMINAL_PUNCTUATION)) \
                    or len(stripped.split(None, min_words - 1)) < min_words \
                    or (len(stripped) > self.max_word_length and max(map(len, stripped.split())) > self.max_word_length):
                removed += 1
                continue
            if javascript or policies:
                lower = stripped.lower()
                if (javascript and "javascript" in lower) or any(policy in lower for policy in policies):
                    removed += 1
                    continue
            kept.append(line)
        cleaned = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
        if len(list(islice(_SENTENCE_END.finditer(cleaned), self.min_sentences))) < self.min_sentences:
            return cleaned, "c4_too_few_sentences", removed
        return cleaned, None, removed

    def check(self, text: str) -> str | None:
        return self.apply(text)[1]


@dataclass(frozen=True)
class FineWebQuality:
    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3

    def check(self, text: str, words: list[str] | None = None) -> str | None:
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return "fineweb_empty"
        punct = sum(line.rstrip().endswith(TERMINAL_PUNCTUATION) for line in lines) / len(lines)
        if punct < self.line_punct_thr and not (punct == 0 and self.line_punct_exclude_zero):
            return "fineweb_line_punct_ratio"
        if sum(len(line) <= self.short_line_length for line in lines) / len(lines) > self.short_line_thr:
            return "fineweb_short_line_ratio"
        characters = len(text.replace("\n", ""))
        if characters and duplicates(lines)[1] / characters > self.char_duplicates_ratio:
            return "fineweb_char_dup_ratio"
        words = text.split() if words is None else words
        if words and text.count("\n") / len(words) > self.new_line_ratio:
            return "fineweb_list_ratio"
        return None
