"""The filter stage: the rule chain per document, and the stage over the sample's langid output."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, FilterConfig, WarcSource, validate_config
from corpus.pii import EMAIL_TOKEN
from pipeline.storage import LocalStore
from tasks.filter import RuleInputs, build_rules, filter_document, filter_spec, new_counts, resolve_rule_inputs
from tests.conftest import REPO, SAMPLE
from tests.tasks import chain
from tests.raw_inputs import english_paragraphs

PROSE = "\n\n".join(english_paragraphs()[:8])


@pytest.fixture(scope="module")
def sample_langid(tmp_path_factory):
    store = LocalStore(tmp_path_factory.mktemp("filter") / "store", "p")
    source = WarcSource(name="web", kind="warc", location=str(SAMPLE / "web"))
    cleaned = chain.clean(store, "web", chain.ingest(store, source))
    return store, chain.langid(store, "web", cleaned)


def _filter(text: str, lang: str = "en", settings: FilterConfig | None = None,
            inputs: RuleInputs = RuleInputs()) -> tuple[str, str | None, dict]:
    settings = settings or FilterConfig()
    counts = new_counts()
    text, reason = filter_document(text, lang, settings.rules_for("web", lang), build_rules(settings, inputs),
                                   settings, counts)
    return text, reason, counts


def test_a_good_document_passes_with_pii_redacted():
    text, reason, counts = _filter(PROSE + "\n\nQuestions go to debian-boot@lists.debian.org today.")
    assert reason is None and EMAIL_TOKEN in text and counts["pii"] == {"email": 1}


def test_the_first_rule_that_fires_names_the_removal():
    assert _filter("Too short to be a document.")[1] == "gopher_short_doc"
    assert _filter(PROSE + "\n\nfunction f() { return 1; }")[1] == "c4_curly_bracket"
    assert _filter(PROSE + "\n\nWhat an ass that installer was.")[1] == "toxicity_word_list"
    no_curly = FilterConfig(c4={"filter_curly_bracket": False})
    assert _filter(PROSE + "\n\nfunction f() { return 1; }", settings=no_curly)[1] is None


def test_rules_per_language_and_source():
    settings = FilterConfig(per_source={"web": ["toxicity"]})
    assert _filter("Too short to be a document.", settings=settings)[1] is None
    # Japanese skips the Gopher word rules by default (no spaces between words)
    assert "gopher_quality" not in FilterConfig().rules_for("web", "ja")


def test_stage_on_the_sample(sample_langid):
    store, langid = sample_langid
    manifest = chain.filter(store, "web", langid)
    counts = manifest["counts"]
    assert counts["documents_in"] == langid["counts"]["documents"]
    assert counts["documents"] + sum(counts["removed"].values()) == counts["documents_in"]
    assert 0 < counts["documents"] < counts["documents_in"]
    removed = chain.read_rows(store, manifest, role="removed")
    assert {row["reason"] for row in removed} == set(counts["removed"])
    kept = chain.read_rows(store, manifest)
    assert {"lang", "lang_score", "title"} <= set(kept[0]) and len(kept) == counts["documents"]
    assert counts["pii"].get("ip_address", 0) > 0 and any("|||IP_ADDRESS|||" in row["text"] for row in kept)


def test_per_source_rules_change_only_that_version(sample_langid):
    store, langid = sample_langid
    base = filter_spec("web", FilterConfig(), langid)
    assert filter_spec("web", FilterConfig(per_source={"docs": ["c4"]}), langid).version == base.version
    assert filter_spec("web", FilterConfig(per_source={"web": ["c4"]}), langid).version != base.version
    everything = chain.filter(store, "web", langid,
                              FilterConfig(workers=1, per_source={"web": []}, pii={"ip_addresses": False}))
    assert everything["counts"]["removed"] == {} and "ip_address" not in everything["counts"]["pii"]


def test_invalid_filter_settings_fail_with_the_key():
    base = {"sources": [{"name": "web", "kind": "warc", "location": "x"}]}
    with pytest.raises(ConfigError, match=r"gopher_quality: unknown setting\(s\) \['min_doc_wordz'\]"):
        validate_config({**base, "filter": {"gopher_quality": {"min_doc_wordz": 3}}})
    with pytest.raises(ConfigError, match=r"filter.per_source: no source named \['nope'\]"):
        validate_config({**base, "filter": {"per_source": {"nope": ["c4"]}}})
    with pytest.raises(ConfigError, match=r"filter.rules.0"):
        validate_config({**base, "filter": {"rules": ["gopher"]}})


def test_a_document_sharing_13_words_with_an_eval_item_is_removed_and_the_item_reported():
    items = (("cloze:7", PROSE.split("\n\n")[3]), ("cloze:8", "an item nobody quotes anywhere at all"))
    text, reason, counts = _filter(PROSE, inputs=RuleInputs(eval_items=items))
    assert reason == "eval_overlap" and counts["eval_hits"] == {"cloze:7": 1}
    assert _filter(PROSE, settings=FilterConfig(rules=["c4"]), inputs=RuleInputs(eval_items=items))[1] is None


def test_eval_sets_resolve_by_content_and_bad_ones_fail_clearly(tmp_path):
    store = LocalStore(tmp_path / "store", "p")
    settings = FilterConfig(decontamination={"eval_sets": ["data/sample/eval/*.jsonl"]})
    inputs = resolve_rule_inputs(settings, store, REPO, tmp_path)
    assert len(inputs.eval_items) >= 20 and inputs.eval_items[0][0] == "debian_cloze:0"
    assert set(inputs.identity["eval_sets"]) == {"debian_cloze.jsonl"}
    (tmp_path / "bad.jsonl").write_text('{"context": "fine"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: eval item is not valid JSON"):
        resolve_rule_inputs(FilterConfig(decontamination={"eval_sets": ["bad.jsonl"]}), store, tmp_path, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'missing/\*.jsonl' matches no file"):
        resolve_rule_inputs(FilterConfig(decontamination={"eval_sets": ["missing/*.jsonl"]}), store, tmp_path,
                            tmp_path)
    # the version follows the eval files' content
    langid = {"artifact": "dedup", "version": "0" * 20}
    (tmp_path / "a.jsonl").write_text('{"context": "one item"}\n')
    one = resolve_rule_inputs(FilterConfig(decontamination={"eval_sets": ["a.jsonl"]}), store, tmp_path, tmp_path)
    (tmp_path / "a.jsonl").write_text('{"context": "another item"}\n')
    two = resolve_rule_inputs(FilterConfig(decontamination={"eval_sets": ["a.jsonl"]}), store, tmp_path, tmp_path)
    assert filter_spec("web", FilterConfig(), langid, one).version != filter_spec("web", FilterConfig(), langid,
                                                                                 two).version


def test_the_quality_classifier_rule_removes_what_the_model_scores_low(tmp_path):
    from pipeline.config import QualityModelConfig
    from corpus.quality_classifier import train_classifier
    from tests.corpus.test_quality_classifier import curated_paragraphs, spam_documents

    good = list(curated_paragraphs())
    model, _ = train_classifier(good[:-20], spam_documents(200), QualityModelConfig(dim=16, seed=3), tmp_path)
    settings = FilterConfig(rules=["quality_classifier"], classifier={"model": str(model), "threshold": 0.5})
    inputs = resolve_rule_inputs(settings, LocalStore(tmp_path / "store", "p"), tmp_path, tmp_path)
    assert inputs.identity["classifier_sha256"] and inputs.classifier_path == str(model)
    held_out_good = "\n\n".join(good[-20:])
    assert _filter(held_out_good, settings=settings, inputs=inputs)[1] is None
    assert _filter(spam_documents(1, seed=99)[0], settings=settings, inputs=inputs)[1] == "quality_classifier"


def test_the_toxicity_classifier_hook_scores_documents_of_its_languages():
    settings = FilterConfig(rules=["toxicity_classifier"],
                            toxicity_classifier={"function": "tests.tasks.toy_toxicity:score", "threshold": 0.9})
    assert _filter(PROSE + "\n\nWhat a vile insult.", settings=settings)[1] == "toxicity_classifier"
    assert _filter(PROSE, settings=settings)[1] is None
    assert _filter(PROSE + "\n\nWhat a vile insult.", lang="de", settings=settings)[1] is None  # only [en]
    with pytest.raises(ValueError, match="cannot load 'tests.tasks.toy_toxicity:nothing'"):
        build_rules(FilterConfig(toxicity_classifier={"function": "tests.tasks.toy_toxicity:nothing"}))
    with pytest.raises(ConfigError, match="toxicity_classifier rule is listed but"):
        validate_config({"sources": [{"name": "web", "kind": "warc", "location": "x"}],
                         "filter": {"rules": ["toxicity_classifier"]}})
