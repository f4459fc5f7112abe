"""Benchmark decontamination: find training documents that share a word n-gram (13 by default, as in
dolma and DCLM) with an evaluation item, and say which items they hit.

Text is compared on lowercased word tokens (`\\w+`), so punctuation, case and spacing differences do
not hide an overlap. Eval items shorter than n words are indexed whole (their full token sequence),
so a short question is still caught when it appears verbatim. The index holds 64-bit hashes of the
n-grams, about 8 bytes per eval n-gram plus the item ids.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

_WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _hash(gram: tuple[str, ...]) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(gram).encode(), digest_size=8).digest(), "little")


@dataclass
class EvalNgramIndex:
    n: int = 13
    _items: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    _short: dict[int, dict[int, set[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))

    def add(self, item_id: str, text: str) -> None:
        words = tokens(text)
        if not words:
            return
        if len(words) < self.n:
            self._short[len(words)][_hash(tuple(words))].add(item_id)
            return
        for i in range(len(words) - self.n + 1):
            self._items[_hash(tuple(words[i:i + self.n]))].add(item_id)

    @classmethod
    def build(cls, items: Iterable[tuple[str, str]], n: int = 13) -> "EvalNgramIndex":
        index = cls(n)
        for item_id, text in items:
            index.add(item_id, text)
        return index

    def __len__(self) -> int:
        return len(self._items) + sum(len(grams) for grams in self._short.values())

    def hits(self, text: str) -> set[str]:
        """The eval items the text shares an n-gram with (or contains whole, for short items)."""
        words = tokens(text)
        found: set[str] = set()
        if self._items:
            for i in range(len(words) - self.n + 1):
                ids = self._items.get(_hash(tuple(words[i:i + self.n])))
                if ids:
                    found |= ids
        for length, grams in self._short.items():
            for i in range(len(words) - length + 1):
                ids = grams.get(_hash(tuple(words[i:i + length])))
                if ids:
                    found |= ids
        return found
