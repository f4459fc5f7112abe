"""A fastText classifier of document quality: trained on high-quality examples (curated text, label `hq`)
against low-quality ones (raw crawl, label `lq`); the filter stage removes documents whose `hq`
probability is below a threshold.

`train_classifier` samples both classes deterministically, keeps a holdout by a stable hash of each text,
trains single-threaded with a fixed seed (the same inputs give the same model file) and measures the model
on the holdout. `QualityClassifier` scores texts with a trained model. No Prefect and no store here:
`tasks/quality_model.py` turns this into a versioned artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Iterable

from pipeline.config import QualityModelConfig

HQ = "__label__hq"
LQ = "__label__lq"
MIN_DOCS_PER_CLASS = 10
DEFAULT_MAX_CHARS = QualityModelConfig.model_fields["max_chars"].default

# fastText's DenseMatrix::uniform initialises only `thread` tenths of the input matrix (thread=1: a tenth)
# and leaves the rest as allocated. In a process that has freed an earlier matrix, malloc hands back
# dirty memory: training diverges ("Encountered NaN") or gives a different model. So training runs in a
# fresh process whose mmap threshold is fixed: every large allocation is then a zero-filled mmap.
_TRAIN_SCRIPT = """
import json, sys
import fasttext
params = json.loads(sys.argv[1])
model = fasttext.train_supervised(**params["train"])
if params["quantize"]:
    model.quantize(input=params["train"]["input"], thread=1)
model.save_model(params["output"])
"""
_TRAIN_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def prepare(text: str, max_chars: int) -> str:
    """The one line fastText sees of a document, in training and prediction alike."""
    return " ".join(text.lower().split())[:max_chars]


def sample(texts: Iterable[str], limit: int, rng: random.Random, max_chars: int) -> tuple[list[str], int]:
    """At most `limit` prepared, non-empty texts chosen uniformly (reservoir sampling); and how many there were."""
    reservoir: list[str] = []
    seen = 0
    for text in texts:
        line = prepare(text, max_chars)
        if not line:
            continue
        seen += 1
        if len(reservoir) < limit:
            reservoir.append(line)
        elif (slot := rng.randrange(seen)) < limit:
            reservoir[slot] = line
    return reservoir, seen


def in_holdout(line: str, fraction: float) -> bool:
    """A stable split: the same text is always on the same side, whatever else is in the data."""
    digest = hashlib.sha256(line.encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def split(lines: list[str], fraction: float) -> tuple[list[str], list[str]]:
    train = [line for line in lines if not in_holdout(line, fraction)]
    holdout = [line for line in lines if in_holdout(line, fraction)]
    return train, holdout


def train_classifier(positive: Iterable[str], negative: Iterable[str], settings: QualityModelConfig,
                     workdir: Path) -> tuple[Path, dict]:
    """Train on `positive` (hq) against `negative` (lq) in `workdir`; returns the model file and its metrics."""
    rng = random.Random(settings.seed)
    classes = {}
    for name, label, texts in (("positive", HQ, positive), ("negative", LQ, negative)):
        lines, available = sample(texts, settings.max_docs_per_class, rng, settings.max_chars)
        if available < MIN_DOCS_PER_CLASS:
            raise ValueError(f"{name} examples: {available} non-empty documents; "
                             f"at least {MIN_DOCS_PER_CLASS} are needed to train a quality classifier")
        classes[label] = (available, *split(lines, settings.holdout_fraction))

    training = [f"{label} {line}" for label, (_, train, _) in classes.items() for line in train]
    rng.shuffle(training)  # SGD sees the classes interleaved
    workdir.mkdir(parents=True, exist_ok=True)
    train_file = workdir / "train.txt"
    train_file.write_text("".join(line + "\n" for line in training), encoding="utf-8")
    model_path = workdir / ("model.ftz" if settings.quantize else "model.bin")
    run_fasttext(train_file, model_path, settings)

    classifier = QualityClassifier(model_path, settings.max_chars)
    holdout = [(line, label == HQ) for label, (_, _, lines) in classes.items() for line in lines]
    metrics = evaluate(classifier, holdout)
    metrics["documents"] = {
        label.removeprefix("__label__"): {"available": available, "train": len(train), "holdout": len(held)}
        for label, (available, train, held) in classes.items()
    }
    return model_path, metrics


def run_fasttext(train_file: Path, model_path: Path, settings: QualityModelConfig) -> None:
    params = {
        "train": {
            "input": str(train_file), "epoch": settings.epoch, "lr": settings.lr, "wordNgrams": settings.word_ngrams,
            "dim": settings.dim, "minCount": settings.min_count, "seed": settings.seed, "bucket": settings.buckets,
            "thread": 1, "verbose": 0,
        },
        "quantize": settings.quantize,
        "output": str(model_path),
    }
    done = subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, json.dumps(params)], capture_output=True,
                          text=True, env={**os.environ, **_TRAIN_ENV})
    if done.returncode != 0:
        error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
        hint = " (training diverged: lower quality_model.lr)" if "NaN" in error else ""
        raise RuntimeError(f"fastText training failed: {error}{hint}")


def evaluate(classifier: "QualityClassifier", holdout: list[tuple[str, bool]], threshold: float = 0.5) -> dict:
    """Precision, recall and F1 of `hq`, and accuracy, at `threshold`; None where there is nothing to divide."""
    probabilities = classifier.probability([line for line, _ in holdout]) if holdout else []
    predicted = [probability >= threshold for probability in probabilities]
    actual = [is_hq for _, is_hq in holdout]
    true_pos = sum(p and a for p, a in zip(predicted, actual))
    precision = _ratio(true_pos, sum(predicted))
    recall = _ratio(true_pos, sum(actual))
    f1 = None
    if precision is not None and recall is not None:
        f1 = _ratio(2 * precision * recall, precision + recall) or 0.0
    return {
        "threshold": threshold,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": _ratio(sum(p == a for p, a in zip(predicted, actual)), len(actual)),
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


class QualityClassifier:
    """A trained quality model: texts -> probability that each is high quality (`hq`)."""

    def __init__(self, path: str | Path, max_chars: int = DEFAULT_MAX_CHARS):
        import fasttext

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"quality model {path} not found")
        self.model = fasttext.load_model(str(path))
        self.max_chars = max_chars

    def probability(self, texts: list[str]) -> list[float]:
        labels, scores = self.model.predict([prepare(text, self.max_chars) for text in texts], k=2)
        return [_hq_probability(dict(zip(row_labels, row_scores))) for row_labels, row_scores in zip(labels, scores)]


def _hq_probability(scores: dict) -> float:
    # fastText adds 1e-5 to every probability, and a model trained on one class knows only that label.
    if HQ in scores:
        probability = float(scores[HQ])
    elif LQ in scores:
        probability = 1.0 - float(scores[LQ])
    else:
        probability = 0.0
    return min(max(probability, 0.0), 1.0)
