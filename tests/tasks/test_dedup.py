"""The dedup stage: exact and near duplicates across sources, representatives, the cross-run index,
resume and determinism; recall on the sample's real amd64/i386 page pairs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipeline.artifacts import files_with_role, read_manifest
from pipeline.config import DedupConfig, JsonlSource, LangidConfig, WarcSource
from pipeline.runs import set_ref
from pipeline.storage import LocalStore
from tasks.dedup import (DUPLICATES_FILE, EARLIER, EXACT, NEAR, dedup_spec, resolve_against, run_dedup)
from tests.conftest import SAMPLE
from tests.raw_inputs import english_paragraphs, write_jsonl
from tests.tasks import chain

VOCABULARY = sorted({word for paragraph in english_paragraphs() for word in paragraph.split()})


def document(seed: int, words: int = 300) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCABULARY) for _ in range(words))


def edited(text: str, every: int = 60) -> str:
    words = text.split()
    for index in range(every // 2, len(words), every):
        words[index] = "zzedit"
    return " ".join(words)


def langid_of(store, tmp_path: Path, name: str, docs: list[dict]) -> dict:
    """JSONL documents through ingest, clean and langid (threshold 0: every document is kept)."""
    write_jsonl(tmp_path / name / "part-0.jsonl", docs)
    source = JsonlSource(name=name, kind="jsonl", location=str(tmp_path / name), url_field="url")
    cleaned = chain.clean(store, name, chain.ingest(store, source))
    return chain.langid(store, name, cleaned, LangidConfig(workers=1, threshold=0.0))


def dedup(store, inputs: dict, settings: DedupConfig | None = None, against: str | None = None) -> dict:
    settings = settings or DedupConfig(workers=1)
    spec = dedup_spec(settings, inputs, against)
    return run_dedup(settings, store, spec, inputs, progress=lambda _m: None)


@pytest.fixture
def two_sources(store, tmp_path):
    base = document(1)
    web = [
        {"url": "w-base", "text": base},
        {"url": "w-exact", "text": base.upper().replace(" ", "  ") + " !"},  # the same words
        {"url": "w-near", "text": edited(base)},
        {"url": "w-other", "text": document(2)},
    ]
    docs = [
        {"url": "d-near", "text": edited(base, every=75)},
        {"url": "d-other", "text": document(3)},
    ]
    return {"web": langid_of(store, tmp_path, "web", web), "docs": langid_of(store, tmp_path, "docs", docs)}


def names(store, manifest: dict) -> dict[str, str]:
    """Document id -> its test name (the `url` field of the input: ingest derives ids by hashing)."""
    inputs = [read_manifest(store, artifact, version) for artifact, version in manifest["inputs"].items()
              if artifact.startswith("langid/")]
    return {row["id"]: row["url"] for upstream in inputs for row in chain.read_rows(store, upstream)}


def removed_by_id(store, manifest) -> dict[str, dict]:
    name = names(store, manifest)
    return {name[row["origin"]]: {**row, "detail": _named(row["detail"], name)}
            for row in chain.read_rows(store, manifest, "removed")}


def _named(detail: str, name: dict[str, str]) -> str:
    for doc_id, url in name.items():
        detail = detail.replace(doc_id, url)
    return detail


def kept_ids(store, manifest, source: str | None = None) -> set[str]:
    return {row["url"] for row in chain.read_rows(store, manifest) if source is None or row["source"] == source}


def test_exact_and_near_duplicates_across_sources(store, two_sources):
    manifest = dedup(store, two_sources)
    assert kept_ids(store, manifest) == {"w-base", "w-other", "d-other"}
    removed = removed_by_id(store, manifest)
    assert {key: row["reason"] for key, row in removed.items()} == {"w-exact": EXACT, "w-near": NEAR, "d-near": NEAR}
    assert all(row["detail"].startswith("cluster w-base (kept in web, 4 documents)") for row in removed.values())
    counts = manifest["counts"]
    assert counts["documents_in"] == 6 and counts["documents"] == 3 and counts["clusters"] == 1
    assert counts["removed"] == {EXACT: 1, NEAR: 2}
    assert counts["sources"] == {"web": {"documents_in": 4, "documents": 2}, "docs": {"documents_in": 2, "documents": 1}}
    # every source's kept documents are in shards of their own, tagged with the source
    documents = list(files_with_role(manifest, "documents"))
    assert {entry["source"] for entry in documents} == {"web", "docs"}
    assert all(entry["path"].startswith(f"data/{entry['source']}/") for entry in documents)
    assert kept_ids(store, manifest, "docs") == {"d-other"}


def test_exact_only_and_the_longest_representative(store, two_sources):
    exact_only = dedup(store, two_sources, DedupConfig(workers=1, near=False))
    assert set(removed_by_id(store, exact_only)) == {"w-exact"}
    longest = dedup(store, two_sources, DedupConfig(workers=1, keep="longest"))
    # the upper-cased copy has two spaces between words and " !": the longest text of the cluster
    assert "w-exact" in kept_ids(store, longest) and "w-base" in removed_by_id(store, longest)
    assert removed_by_id(store, longest)["w-base"]["reason"] == EXACT


def test_earlier_runs_index_removes_what_was_already_used(store, two_sources, tmp_path):
    first = dedup(store, {"docs": two_sources["docs"]})
    set_ref(store, "dedup-used", {"artifact": "dedup", "version": first["version"]})
    fresh = document(4)
    refresh = langid_of(store, tmp_path / "new", "web", [
        {"url": "n-again", "text": two_sources_text(store, two_sources["docs"], "d-other")},
        {"url": "n-fresh", "text": fresh},
        {"url": "n-fresh-copy", "text": fresh},
    ])
    against = resolve_against(store, "dedup-used")
    assert against == first["version"]
    second = dedup(store, {"web": refresh}, against=against)
    assert kept_ids(store, second) == {"n-fresh"}
    removed = removed_by_id(store, second)
    assert removed["n-again"]["reason"] == EARLIER and removed["n-fresh-copy"]["reason"] == EXACT
    assert second["counts"]["earlier_index_documents"] == 2  # d-near and d-other, both kept by the first run
    # a third run against the second sees the first run's documents through the chain
    third = dedup(store, {"web": refresh}, DedupConfig(workers=1, keep="longest"), against=second["version"])
    assert kept_ids(store, third) == set() and third["counts"]["earlier_index_documents"] == 3


def two_sources_text(store, manifest: dict, doc_id: str) -> str:
    return next(row["text"] for row in chain.read_rows(store, manifest) if row["url"] == doc_id)


def test_against_must_name_a_committed_dedup_artifact(store):
    with pytest.raises(RuntimeError, match="no ref named 'nothing'"):
        resolve_against(store, "nothing")
    with pytest.raises(RuntimeError, match="not committed"):
        resolve_against(store, "0123456789abcdef0123")


def test_rerun_is_deterministic_and_resume_reuses_finished_passes(tmp_path):
    store = LocalStore(tmp_path / "store", "p")
    inputs = {"web": langid_of(store, tmp_path, "web", [{"url": f"x{i}", "text": document(i % 3)}
                                                        for i in range(6)])}
    settings = DedupConfig(workers=1)
    spec = dedup_spec(settings, inputs, None)
    calls = []
    manifest = run_dedup(settings, store, spec, inputs, progress=calls.append)
    assert manifest["counts"]["removed"] == {EXACT: 3}
    other = LocalStore(tmp_path / "other", "p")
    other_inputs = {"web": langid_of(other, tmp_path / "o", "web", [{"url": f"x{i}", "text": document(i % 3)}
                                                                    for i in range(6)])}
    again = run_dedup(settings, other, dedup_spec(settings, other_inputs, None), other_inputs, progress=lambda _m: None)
    assert again["version"] == manifest["version"]
    assert [(f["path"], f["sha256"]) for f in again["files"]] == [(f["path"], f["sha256"]) for f in manifest["files"]]
    # an interrupted attempt: the manifest is gone, the finished passes are found and not redone
    manifest_path = tmp_path / "store" / "p" / "artifacts" / "dedup" / manifest["version"] / "manifest.json"
    manifest_path.unlink()
    messages = []
    resumed = run_dedup(settings, store, spec, inputs, progress=messages.append)
    assert resumed["files"] == manifest["files"]
    assert any("1 already done" in m and "signatures" in m for m in messages)
    assert any("clusters already found" in m for m in messages)


def test_sample_amd64_i386_pairs_are_found(tmp_path):
    """The sample's WARCs hold real installation-guide pages in both architectures (near duplicates)."""
    store = LocalStore(tmp_path / "store", "p")
    source = WarcSource(name="web", kind="warc", location=str(SAMPLE / "web"))
    inputs = {"web": chain.langid(store, "web", chain.clean(store, "web", chain.ingest(store, source)),
                                  LangidConfig(workers=1, threshold=0.0))}
    manifest = dedup(store, inputs, DedupConfig(workers=2))
    truth = json.loads((SAMPLE / "manifest.json").read_text())
    urls = {record["url"] for warc in truth["warc_files"] for record in warc["records"] if record.get("url")}
    pairs = {url.replace("/amd64/", "/i386/") for url in urls if "/amd64/" in url} & urls
    assert len(pairs) >= 40
    removed = chain.read_rows(store, manifest, "removed")
    kept = {row["url"] for row in chain.read_rows(store, manifest)}
    found = sum(1 for i386 in pairs if (i386 in kept) != (i386.replace("/i386/", "/amd64/") in kept))
    assert found / len(pairs) >= 0.95
    assert {row["reason"] for row in removed} <= {EXACT, NEAR}
    assert DUPLICATES_FILE in {entry["path"] for entry in manifest["files"]}
