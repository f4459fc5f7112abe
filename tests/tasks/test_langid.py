"""The language-ID stage with the real lid.176 model on real text: accuracy on paragraphs of known
language, English pages in non-English locale folders, keep / threshold / drop / route."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pipeline.config import LangidConfig, WarcSource
from pipeline.models import lid_model_path
from pipeline.storage import LocalStore
from tasks.langid import LanguageIdentifier
from tests.conftest import REPO, SAMPLE
from tests.tasks import chain

PARAGRAPHS = REPO / "tests" / "data" / "langid_paragraphs_small.jsonl"


@pytest.fixture(scope="module")
def model() -> LanguageIdentifier:
    return LanguageIdentifier(lid_model_path(), top_k=3)


@pytest.fixture(scope="module")
def sample_chain(tmp_path_factory):
    """The sample WARCs through ingest and clean, once for the module."""
    store = LocalStore(tmp_path_factory.mktemp("langid") / "store", "p")
    source = WarcSource(name="web", kind="warc", location=str(SAMPLE / "web"))
    return store, chain.clean(store, "web", chain.ingest(store, source))


def _truth() -> dict[str, dict]:
    manifest = json.loads((SAMPLE / "manifest.json").read_text())
    return {record["url"]: record for warc in manifest["warc_files"] for record in warc["records"] if record.get("url")}


def test_paragraphs_of_known_language(model):
    rows = [json.loads(line) for line in PARAGRAPHS.read_text().splitlines()]
    languages = Counter(row["lang"] for row in rows)
    assert len(languages) >= 6 and min(languages.values()) >= 5
    predicted = model.predict([row["text"] for row in rows])
    correct = sum(lang == row["lang"] for row, (lang, _, _) in zip(rows, predicted))
    assert correct / len(rows) >= 0.95, Counter((row["lang"], lang) for row, (lang, _, _) in zip(rows, predicted)
                                                if lang != row["lang"])


def test_newlines_do_not_cut_the_text_short(model):
    text = "Dies ist der erste Absatz der Anleitung.\nThis second line is English and much longer than the " \
           "first one, so the whole text is mostly English and must be labelled as such."
    [(lang, score, topk)] = model.predict([text])
    assert lang == "en" and 0 < score <= 1 and len(topk) == 3 and topk[0] == ("en", score)


def test_english_pages_in_non_english_locale_folders_are_labelled_english(sample_chain):
    store, cleaned = sample_chain
    manifest = chain.langid(store, "web", cleaned, LangidConfig(workers=1, action="route"))
    truth = _truth()
    rows = chain.read_rows(store, manifest) + chain.read_rows(store, manifest, role="routed")
    mislabelled = [row for row in rows if truth[row["url"]]["mislabelled"]]
    assert len(mislabelled) >= 10
    assert {row["lang"] for row in mislabelled} == {"en"}
    assert all(truth[row["url"]]["locale"].split("-")[0].lower() != "en" for row in mislabelled)
    # And the histogram in the manifest counts every document once.
    assert sum(manifest["counts"]["languages"].values()) == manifest["counts"]["documents_in"] == len(rows)


def test_keep_threshold_drop_and_route(sample_chain):
    store, cleaned = sample_chain
    dropped = chain.langid(store, "web", cleaned, LangidConfig(workers=1, keep=["en", "de"], action="drop"))
    counts = dropped["counts"]
    kept = chain.read_rows(store, dropped)
    assert {row["lang"] for row in kept} <= {"en", "de"} and counts["documents"] == len(kept) > 0
    assert counts["removed"]["lang_not_kept"] > 100
    removed = chain.read_rows(store, dropped, role="removed")
    assert {row["reason"] for row in removed} <= {"lang_not_kept", "lang_score_below_threshold"}
    assert counts["documents"] + sum(counts["removed"].values()) == counts["documents_in"]

    routed = chain.langid(store, "web", cleaned, LangidConfig(workers=1, keep=["en"], action="route",
                                                             thresholds={"de": 1.0}))
    partitions = {entry["lang"] for entry in routed["files"] if entry["role"] == "routed"}
    assert {"fr", "ja", "und"} <= partitions and "en" not in partitions
    assert all(entry["path"].startswith(f"routed/lang={entry['lang']}/") for entry in routed["files"]
               if entry["role"] == "routed")
    german = [row for row in chain.read_rows(store, routed, role="routed") if row["lang"] == "de"]
    assert german and routed["counts"]["routed"]["und"] >= len(german)  # below their 1.0 threshold


def test_model_path_that_does_not_exist_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="lid.176"):
        LanguageIdentifier(tmp_path / "missing.ftz")
