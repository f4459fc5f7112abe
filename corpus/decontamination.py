"""Benchmark decontamination: find training documents that share a word n-gram (13 by default, as in
dolma and DCLM) with an evaluation item, and say which items they hit.

Text is compared on lowercased word tokens (`\\w+`, the dedup stage's tokens), so punctuation, case
and spacing differences do not hide an overlap. Eval items shorter than n words are indexed whole
(their full token sequence), so a short question is still caught when it appears verbatim. N-grams are
64-bit hashes combining the token hashes of corpus.minhash, computed for a whole document at once
with numpy; the index is a sorted array of them per n-gram length (8 bytes per eval n-gram) plus a
map from hash to item ids that is consulted only on a hit.

Eval sets are JSONL files in lm-evaluation-harness's style: the text of an item is the concatenation of
its configured fields (strings, or lists of strings such as `choices`); its id is
`<file stem>:<the item's "id" field, or its line number>`.
"""

from __future__ import annotations

import glob
import json
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from .minhash import combine, token_hashes


class EvalNgramIndex:
    def __init__(self, n: int = 13):
        self.n = n
        self._items: dict[int, set[str]] = defaultdict(set)
        self._lengths: set[int] = set()  # token counts of the n-grams: n, and those of shorter items
        self._sorted: dict[int, np.ndarray] | None = None

    def add(self, item_id: str, text: str) -> None:
        hashes = token_hashes(text)
        if not len(hashes):
            return
        length = min(self.n, len(hashes))
        self._lengths.add(length)
        for gram in combine(hashes, length).tolist():
            self._items[(length << 64) | gram].add(item_id)
        self._sorted = None

    @classmethod
    def build(cls, items: Iterable[tuple[str, str]], n: int = 13) -> "EvalNgramIndex":
        index = cls(n)
        for item_id, text in items:
            index.add(item_id, text)
        return index

    def __len__(self) -> int:
        return len(self._items)

    def _by_length(self) -> dict[int, np.ndarray]:
        if self._sorted is None:
            grams: dict[int, list[int]] = defaultdict(list)
            for key in self._items:
                grams[key >> 64].append(key & 0xFFFFFFFFFFFFFFFF)
            self._sorted = {length: np.unique(np.array(values, dtype=np.uint64)) for length, values in grams.items()}
        return self._sorted

    def hits(self, text: str) -> set[str]:
        """The eval items the text shares an n-gram with (or contains whole, for short items)."""
        if not self._items:
            return set()
        hashes = token_hashes(text)
        found: set[str] = set()
        for length, grams in self._by_length().items():
            if len(hashes) < length:
                continue
            windows = combine(hashes, length)
            positions = np.searchsorted(grams, windows).clip(max=len(grams) - 1)
            for gram in np.unique(windows[grams[positions] == windows]).tolist():
                found |= self._items[(length << 64) | gram]
        return found


def item_text(item: dict, fields: list[str]) -> str:
    parts: list[str] = []
    for name in fields:
        value = item.get(name)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(str(part) for part in value if isinstance(part, (str, int, float)))
    return "\n".join(parts)


def eval_files(patterns: list[str], base_dir: Path, key: str = "filter.decontamination.eval_sets") -> list[Path]:
    """The files the patterns name (relative to base_dir), sorted; a pattern matching nothing is an error."""
    files: list[Path] = []
    for pattern in patterns:
        full = pattern if Path(pattern).is_absolute() else str(base_dir / pattern)
        matched = sorted(Path(path) for path in glob.glob(full))
        if not matched:
            raise FileNotFoundError(f"{key}: {pattern!r} matches no file (in {base_dir})")
        files += matched
    return files


def load_eval_items(files: list[Path], fields: list[str]) -> list[tuple[str, str]]:
    """(item id, text) of every item of the eval files; a malformed line fails naming the file and line."""
    items = []
    for path in files:
        stem = path.name.split(".")[0]
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: eval item is not valid JSON ({exc.msg})") from None
            if not isinstance(item, dict):
                raise ValueError(f"{path}:{number}: eval item must be a JSON object")
            text = item_text(item, fields)
            if not text.strip():
                raise ValueError(f"{path}:{number}: eval item has none of the fields {fields}")
            items.append((f"{stem}:{item.get('id', number)}", text))
    return items
