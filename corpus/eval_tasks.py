"""Evaluation tasks as text: multiple-choice items read from lm-evaluation-harness-style JSONL, and two
tasks generated from held-out documents.

- Multiple choice (`load_multiple_choice`): one JSON object per line with a context, a list of choices
  and the gold answer (an index, or the text of one of the choices); the field names are configurable
  (`eval.context_field`, `choices_field`, `gold_field`), so HellaSwag/ARC/PIQA exports work. A malformed
  line fails with the file and line number: an eval set is curated input, not crawl data.
- Cloze (`cloze_items`): at positions `stride_words` apart in each held-out document, the
  `context_words` words before the position, the true next `continuation_words` words, and distractors
  of the same length taken from other held-out documents of the same language; chance is 1 / choices.
- Last word (`last_word_items`, LAMBADA-style): a passage ending right before the last word of a
  sentence; the model must produce that word greedily.

Generation is seeded and depends only on the documents, so the same held-out data gives the same items.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WORD = re.compile(r"^[^\W\d_]{3,}$")  # letters only, at least 3: a word worth predicting


@dataclass(frozen=True)
class TextItem:
    context: str
    choices: list[str]   # continuations, each starting with a space
    gold: int


@dataclass(frozen=True)
class Document:
    id: str
    lang: str
    text: str


def load_multiple_choice(path: Path, context_field: str, choices_field: str, gold_field: str) -> list[TextItem]:
    items = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not JSON ({exc})") from None
            context, choices, gold = item.get(context_field), item.get(choices_field), item.get(gold_field)
            if not isinstance(context, str) or not isinstance(choices, list) or len(choices) < 2 or \
                    not all(isinstance(choice, str) and choice for choice in choices):
                raise ValueError(f"{where}: needs a string {context_field!r} and a list of 2+ non-empty strings "
                                 f"{choices_field!r}")
            if isinstance(gold, str) and gold in choices:
                gold = choices.index(gold)
            if not isinstance(gold, int) or not 0 <= gold < len(choices):
                raise ValueError(f"{where}: {gold_field!r} must be an index into {choices_field!r} or one of them")
            items.append(TextItem(context, [" " + choice.lstrip() for choice in choices], gold))
    return items


def cloze_items(documents: list[Document], count: int, choices: int, context_words: int,
                continuation_words: int, seed: int, stride_words: int | None = None) -> list[TextItem]:
    """Up to `count` items, spread over the documents in turn: a document gives an item every
    `stride_words` words (default: context + continuation, so items do not overlap)."""
    words = {doc.id: doc.text.split() for doc in documents}
    stride = stride_words or context_words + continuation_words
    windows = {doc.id: list(range(context_words, len(words[doc.id]) - continuation_words + 1, stride))
               for doc in documents}
    by_lang: dict[str, list[Document]] = {}
    for doc in documents:
        if windows[doc.id]:
            by_lang.setdefault(doc.lang, []).append(doc)
    rng = np.random.default_rng(seed)
    items: list[TextItem] = []
    for round_index in range(max((len(w) for w in windows.values()), default=0)):
        for doc in documents:
            if len(items) >= count:
                return items
            others = [other for other in by_lang.get(doc.lang, []) if other.id != doc.id]
            if round_index >= len(windows[doc.id]) or len(others) < choices - 1:
                continue
            position = windows[doc.id][round_index]
            mine = words[doc.id]
            true = " " + " ".join(mine[position:position + continuation_words])
            distractors = []
            for other_index in rng.choice(len(others), size=choices - 1, replace=False):
                theirs = words[others[other_index].id]
                start = int(rng.integers(0, len(theirs) - continuation_words + 1))
                distractors.append(" " + " ".join(theirs[start:start + continuation_words]))
            gold = int(rng.integers(0, choices))
            options = distractors[:gold] + [true] + distractors[gold:]
            items.append(TextItem(" ".join(mine[position - context_words:position]), options, gold))
    return items


def last_word_items(documents: list[Document], count: int, context_words: int) -> list[TextItem]:
    """Up to `count` (passage, last word of its sentence) pairs, spread over the documents in turn; the
    word is the only choice (scored by greedy accuracy)."""
    candidates: list[list[TextItem]] = []
    for doc in documents:
        words = doc.text.split()
        found = []
        position = context_words
        while position < len(words):
            word = words[position]
            bare = word.rstrip(".!?")
            if word != bare and WORD.match(bare):  # the last word of a sentence
                found.append(TextItem(" ".join(words[position - context_words:position]), [" " + bare], 0))
                position += context_words + 1  # passages do not overlap
            else:
                position += 1
        candidates.append(found)
    items: list[TextItem] = []
    for round_index in range(max((len(found) for found in candidates), default=0)):
        for found in candidates:
            if round_index < len(found) and len(items) < count:
                items.append(found[round_index])
    return items
