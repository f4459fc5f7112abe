"""Build the sample's lm-evaluation-harness task `debian_cloze` in data/sample/eval/ from the sample corpus:
debian_cloze.jsonl (the items), debian_cloze.yaml (the task) and jsonl_data.py (the YAML's loader).

Multiple-choice cloze items: `context` is the opening of a real paragraph of an English page of the
sample's JSONL source, `choices` are its true continuation and the continuations of three other
paragraphs, `gold` is the index of the true one. The pages the items come from are in the training
sample on purpose: the filter stage's decontamination rule must find them.

    python scripts/build_eval_sample.py            # rewrites the files (byte-identical for the same sample)
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import zstandard

from corpus.eval_tasks import LOADER_MODULE, LOADER_SOURCE, MULTIPLE_CHOICE, task_yaml

REPO = Path(__file__).resolve().parent.parent
SEED = 20240301
CONTEXT_WORDS = 24
CONTINUATION_WORDS = 8
CHOICES = 4
TASK = "debian_cloze"


def english_pages(path: Path) -> list[dict]:
    text = zstandard.ZstdDecompressor().stream_reader(path.open("rb")).read().decode("utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [row for row in rows if re.search(r"/(en|en-US)/", row.get("url") or "")]


def openings(page: dict) -> list[tuple[str, str]]:
    """(context, continuation) from the page's paragraphs long enough for both."""
    pairs = []
    for paragraph in page["text"].split("\n\n"):
        words = paragraph.split()
        if len(words) >= CONTEXT_WORDS + CONTINUATION_WORDS:
            pairs.append((" ".join(words[:CONTEXT_WORDS]),
                          " ".join(words[CONTEXT_WORDS:CONTEXT_WORDS + CONTINUATION_WORDS])))
    return pairs


def build(sample: Path, per_page: int = 2) -> list[dict]:
    rng = random.Random(SEED)
    candidates = []
    for page in english_pages(sample / "jsonl" / "sample-text-00000.jsonl.zst"):
        for context, continuation in openings(page)[:per_page]:
            candidates.append((page["url"], context, continuation))
    items = []
    for index, (url, context, continuation) in enumerate(candidates):
        others = [c for j, (_, _, c) in enumerate(candidates) if j != index and c != continuation]
        choices = rng.sample(others, CHOICES - 1) + [continuation]
        rng.shuffle(choices)
        items.append({"id": index, "context": context, "choices": choices, "gold": choices.index(continuation),
                      "source_url": url})
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=REPO / "data" / "sample")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "sample" / "eval")
    args = parser.parse_args()
    items = build(args.sample)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{TASK}.jsonl").write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items),
                                          encoding="utf-8")
    (args.out / f"{TASK}.yaml").write_text(task_yaml(TASK, MULTIPLE_CHOICE), encoding="utf-8")
    (args.out / f"{LOADER_MODULE}.py").write_text(LOADER_SOURCE, encoding="utf-8")
    print(f"{len(items)} items -> {args.out / TASK}.jsonl (+ .yaml, {LOADER_MODULE}.py)")


if __name__ == "__main__":
    main()
