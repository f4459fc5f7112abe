"""The fastText quality classifier core: real English documentation paragraphs (high quality) against
keyword and navigation spam made of real words (low quality)."""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

import pytest
import zstandard

from pipeline.config import QualityModelConfig
from corpus.quality_classifier import HQ, LQ, QualityClassifier, _hq_probability, prepare, train_classifier
from tests.raw_inputs import english_paragraphs

SAMPLE_JSONL = Path(__file__).resolve().parents[2] / "data" / "sample" / "jsonl" / "sample-text-00000.jsonl.zst"
SPAM_WORDS = ["home", "login", "register", "cart", "checkout", "free", "download", "cheap", "best", "price", "deals",
              "click", "here", "subscribe", "share", "menu", "search", "next", "previous", "privacy", "terms", "sale"]
# small and quick; the defaults (dim 64) only make the model file bigger
FAST = QualityModelConfig(dim=16, epoch=5, holdout_fraction=0.2, seed=3)


@lru_cache(maxsize=1)
def curated_paragraphs() -> tuple[str, ...]:
    """The English paragraphs (12 words or more) of the bundled Debian documentation sample."""
    data = zstandard.ZstdDecompressor().decompress(SAMPLE_JSONL.read_bytes(), max_output_size=1 << 30)
    rows = [json.loads(line) for line in data.splitlines()]
    english = [row["text"] for row in rows if {"en", "en-US"} & set(row["id"].split("/"))]
    return tuple(paragraph for text in english for paragraph in text.split("\n\n") if len(paragraph.split()) >= 12)


def spam_documents(count: int, seed: int = 0) -> list[str]:
    """Link lists and keyword stuffing: spam words around real words of the curated text."""
    vocabulary = sorted({word.strip(".,;:()").lower() for text in curated_paragraphs() for word in text.split()})
    rng = random.Random(seed)

    def item() -> str:
        words = [rng.choice(SPAM_WORDS)] + [rng.choice(vocabulary) for _ in range(rng.randint(0, 2))]
        return " ".join(rng.sample(words, len(words)))

    return [" | ".join(item() for _ in range(rng.randint(8, 25))) for _ in range(count)]


def test_prepare_makes_one_lowercase_line():
    assert prepare("  Debian\n\nGNU/Linux\tInstaller  ", 100) == "debian gnu/linux installer"
    assert prepare("Abc def ghi", 5) == "abc d"


def test_model_separates_held_out_and_unseen_documents(tmp_path):
    curated = list(curated_paragraphs())
    model_path, metrics = train_classifier(curated, spam_documents(len(curated)), FAST, tmp_path)

    assert model_path == tmp_path / "model.bin"
    assert {"precision", "recall", "f1", "accuracy", "threshold", "documents"} <= set(metrics)
    assert metrics["accuracy"] >= 0.95 and metrics["f1"] >= 0.95
    for label in ("hq", "lq"):
        counts = metrics["documents"][label]
        assert counts["available"] == len(curated) == counts["train"] + counts["holdout"]
        assert 0.1 * len(curated) < counts["holdout"] < 0.3 * len(curated)

    classifier = QualityClassifier(model_path)
    unseen_prose = english_paragraphs()  # another Debian manual's paragraphs (the language-ID test set)
    assert sum(p >= 0.5 for p in classifier.probability(unseen_prose)) >= 0.8 * len(unseen_prose)
    assert all(p < 0.5 for p in classifier.probability(spam_documents(20, seed=99)))
    assert all(0.0 <= p <= 1.0 for p in classifier.probability(["", "zzzz", "Home | Login"]))


def test_training_twice_gives_the_same_model_bytes(tmp_path):
    """Single-threaded, seeded and in a fresh process: the same inputs give a byte-identical model (in one
    process, fastText reuses dirty memory for the part of its matrix it leaves uninitialised)."""
    curated = list(curated_paragraphs())[:150]
    spam = spam_documents(150)
    models = [train_classifier(curated, spam, FAST, tmp_path / str(attempt)) for attempt in range(3)]
    assert len({path.read_bytes() for path, _ in models}) == 1
    assert all(metrics == models[0][1] for _, metrics in models)

    shuffled, _ = train_classifier(curated, spam, FAST.model_copy(update={"seed": 4}), tmp_path / "other-seed")
    assert shuffled.read_bytes() != models[0][0].read_bytes()


def test_sampling_caps_each_class_and_quantize_writes_ftz(tmp_path):
    curated = list(curated_paragraphs())
    settings = FAST.model_copy(update={"max_docs_per_class": 60, "dim": 8, "epoch": 20, "quantize": True})
    model_path, metrics = train_classifier(curated, spam_documents(100), settings, tmp_path)
    assert model_path.name == "model.ftz"
    assert metrics["documents"]["hq"]["available"] == len(curated)
    assert metrics["documents"]["lq"]["available"] == 100
    for label in ("hq", "lq"):
        assert metrics["documents"][label]["train"] + metrics["documents"][label]["holdout"] == 60
    good, spam = QualityClassifier(model_path).probability([curated[0], spam_documents(1, seed=7)[0]])
    assert good > 0.5 > spam


def test_too_few_documents_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="positive examples: 9 non-empty documents; at least 10"):
        train_classifier(list(curated_paragraphs())[:9] + ["", "   "], spam_documents(50), FAST, tmp_path)


def test_probability_from_one_or_two_labels():
    assert _hq_probability({HQ: 1.00001, LQ: 0.00001}) == 1.0
    assert _hq_probability({LQ: 0.8}) == pytest.approx(0.2)
    assert _hq_probability({HQ: 0.3}) == pytest.approx(0.3)
    assert _hq_probability({}) == 0.0
