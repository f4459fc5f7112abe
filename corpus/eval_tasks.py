"""Evaluation tasks as lm-evaluation-harness task folders: items generated from held-out documents, written
as JSONL data files with the task YAMLs that read them, so the harness scores them like any of its tasks.

- Cloze (`cloze_items`): at positions `stride_words` apart in each held-out document, the
  `context_words` words before the position, the true next `continuation_words` words, and distractors
  of the same length taken from other held-out documents of the same language; chance is 1 / choices.
  Harness task `heldout_cloze` (multiple_choice: acc, acc_norm, acc_mutual_info).
- Last word (`last_word_items`, LAMBADA-style): a passage ending right before the last word of a
  sentence. Harness task `heldout_last_word` (loglikelihood, as lambada_openai: perplexity of the word
  and acc = whether greedy decoding produces it).

Generation is seeded and depends only on the documents, so the same held-out data gives the same items.

A task folder (`write_task_folder`) holds `<task>.yaml`, `<task>.jsonl` and `jsonl_data.py`, the
harness's `custom_dataset` for the YAMLs: it reads the JSONL files named in a YAML's
`dataset_kwargs.data_files` relative to the folder (`jsonl_splits`), with no network and no datasets
cache, so the folder works wherever it is copied: `lm_eval --include_path <folder> --tasks <task>`.
The bundled sample's hand-made task (data/sample/eval/) uses the same loader.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WORD = re.compile(r"^[^\W\d_]{3,}$")  # letters only, at least 3: a word worth predicting
CLOZE_TASK = "heldout_cloze"
LAST_WORD_TASK = "heldout_last_word"

# jsonl_data.py of every task folder (the harness imports it from beside the YAML that names it).
LOADER_MODULE = "jsonl_data"
LOADER_SOURCE = '''"""custom_dataset of the lm-evaluation-harness task YAMLs in this folder
(`custom_dataset: !function jsonl_data.load`): the JSONL files their dataset_kwargs.data_files name,
relative to this folder, read offline."""

from pathlib import Path

from corpus.eval_tasks import jsonl_splits


def load(data_files, **_metadata):
    return jsonl_splits(data_files, Path(__file__).resolve().parent)
'''


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


def jsonl_splits(data_files: dict[str, str], folder: Path):
    """{split: JSONL file relative to `folder`} -> a datasets.DatasetDict; a malformed line fails naming
    the file and line."""
    import datasets

    splits = {}
    for split, name in data_files.items():
        path = Path(folder) / name
        rows = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}: line {number}: not JSON ({exc.msg})") from None
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)


def task_yaml(task: str, body: str, version: int = 1) -> str:
    """A harness task YAML reading `<task>.jsonl` of its folder as the test split."""
    return (f"task: {task}\n"
            f"custom_dataset: !function {LOADER_MODULE}.load\n"
            f"dataset_kwargs:\n  data_files:\n    test: {task}.jsonl\n"
            f"test_split: test\n{body}"
            f"metadata:\n  version: {version}\n")


MULTIPLE_CHOICE = """output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{gold}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
  - metric: acc_mutual_info
    aggregation: mean
    higher_is_better: true
"""

LAST_WORD = """output_type: loglikelihood
doc_to_text: "{{context}}"
doc_to_target: "{{word}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_task_folder(directory: Path, cloze: list[TextItem], last_word: list[TextItem]) -> list[str]:
    """The generated tasks that have items, as a harness task folder; returns their task names."""
    directory.mkdir(parents=True, exist_ok=True)
    tasks = []
    for task, items, body, row in (
            (CLOZE_TASK, cloze, MULTIPLE_CHOICE,
             lambda item: {"context": item.context, "choices": [c.lstrip() for c in item.choices], "gold": item.gold}),
            (LAST_WORD_TASK, last_word, LAST_WORD,
             lambda item: {"context": item.context, "word": item.choices[0].lstrip()})):
        if not items:
            continue
        with (directory / f"{task}.jsonl").open("w", encoding="utf-8") as handle:
            for item in items:
                handle.write(json.dumps(row(item), ensure_ascii=False) + "\n")
        (directory / f"{task}.yaml").write_text(task_yaml(task, body), encoding="utf-8")
        tasks.append(task)
    if tasks:
        (directory / f"{LOADER_MODULE}.py").write_text(LOADER_SOURCE, encoding="utf-8")
    return tasks


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
