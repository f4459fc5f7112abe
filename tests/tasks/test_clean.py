"""The cleaning stage on real pages of the bundled sample: charset handling, extraction, normalisation,
removal reasons, and the stage end to end on a local store."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from pipeline.config import CleanConfig, HtmlSource, JsonlSource, WarcSource
from pipeline.storage import LocalStore
from tasks.clean import clean_spec, compile_patterns, decode_html, extract, normalize_text
from tests.conftest import SAMPLE
from tests.raw_inputs import Page, write_jsonl, write_warc
from tests.tasks import chain

GERMAN = next((SAMPLE / "html" / "de").glob("*.html"))
RUSSIAN = next((SAMPLE / "html" / "ru").glob("*.html"))


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store", "p")


def _reference_text(path: Path) -> str:
    return extract(path.read_bytes().decode("utf-8"), "resiliparse")[1]


# -- decoding -------------------------------------------------------------------------------------


def test_utf8_page_served_as_latin1_is_read_as_utf8():
    raw = GERMAN.read_bytes()
    text, charset, how = decode_html(raw, "iso-8859-1")
    assert (charset, how) == ("utf-8", "utf-8")
    assert text == raw.decode("utf-8") and re.search("[äöüß]", text)


def test_legacy_page_is_read_by_its_meta_tag_then_by_detection():
    page = RUSSIAN.read_bytes().decode("utf-8")
    page = re.sub(r'charset=["\']?utf-8', "charset=windows-1251", page, flags=re.IGNORECASE)
    legacy = page.encode("cp1251", errors="replace")
    assert meta_says_1251(legacy)
    text, charset, how = decode_html(legacy, None)
    assert (charset, how) == ("cp1251", "meta") and text == legacy.decode("cp1251")
    # A wrong header that cannot decode the bytes gives way to the meta tag.
    assert decode_html(legacy, "utf-8")[2] == "meta"
    # Without any label, detection finds it.
    unlabelled = re.sub(rb"<meta[^>]*charset[^>]*>", b"", legacy, flags=re.IGNORECASE)
    text, charset, how = decode_html(unlabelled, None)
    assert (how, charset) == ("detected", "cp1251") and text == unlabelled.decode("cp1251")


def meta_says_1251(data: bytes) -> bool:
    return b"windows-1251" in data[:4096].lower()


def test_header_charset_decodes_a_latin1_page():
    page = "<html><body><p>Größenänderung der Partition für Anfänger</p></body></html>"
    text, charset, how = decode_html(page.encode("cp1252"), "ISO-8859-1")
    assert how == "header" and charset == "cp1252" and "Größenänderung" in text


def test_bad_bytes_never_raise():
    for blob in (b"\xff\xfe\x00<\x00h\x00", bytes(range(256)) * 3, b"<html>\xc3\x28\xa0\xa1 caf\xe9</html>"):
        text, charset, how = decode_html(blob, "no-such-charset")
        assert isinstance(text, str) and how in ("bom", "detected", "meta", "header")


# -- extraction and normalisation -----------------------------------------------------------------


def test_extract_keeps_title_and_main_text_and_drops_navigation():
    html = GERMAN.read_bytes().decode("utf-8")
    title, text = extract(html, "resiliparse")
    assert title and title in html
    assert len(text) > 500
    assert "Vorherige" not in text.split("\n")[:3]  # the navigation header of these pages
    trafilatura_title, trafilatura_text = extract(html, "trafilatura")
    assert trafilatura_title == title and len(trafilatura_text) > 200


def test_normalize_text():
    decomposed = unicodedata.normalize("NFD", "café  naïve\t\tdéjà")
    raw = f"  Skip to content \n\n\n{decomposed}\x00\x07\u200b\n\n\n\nWe use cookies to improve this site.\n" \
          f"Accept all cookies\nThis sentence mentions accept all cookies inside.\n\n"
    text = normalize_text(raw, compile_patterns(CleanConfig().boilerplate_patterns))
    assert text == "café naïve déjà\n\nThis sentence mentions accept all cookies inside."
    assert unicodedata.is_normalized("NFC", text)


# -- the stage ------------------------------------------------------------------------------------


def test_clean_stage_on_sample_pages(store):
    source = HtmlSource(name="pages", kind="html", location=str(SAMPLE / "html"))
    ingested = chain.ingest(store, source)
    manifest = chain.clean(store, "pages", ingested)
    counts = manifest["counts"]
    assert counts["documents_in"] == ingested["counts"]["documents"]
    assert counts["documents"] + sum(counts["removed"].values()) == counts["documents_in"]
    assert counts["documents"] >= 50 and counts["charset"] == {"utf-8": counts["documents_in"]}
    rows = chain.read_rows(store, manifest)
    assert all(row["title"] and len(row["text"]) >= 200 for row in rows)
    assert {row["id"] for row in rows} <= {row["id"] for row in chain.read_rows(store, ingested)}
    # Deterministic: the same input and config give the same version and bytes.
    other_store = LocalStore(store.root / "again", "p")
    again = chain.clean(other_store, "pages", chain.ingest(other_store, source))
    assert again["version"] == manifest["version"]
    assert [f["sha256"] for f in again["files"]] == [f["sha256"] for f in manifest["files"]]


def test_mislabelled_page_reads_the_same_as_a_correct_one(tmp_path, store):
    body = GERMAN.read_bytes()
    for name, content_type in (("right", "text/html; charset=utf-8"), ("wrong", "text/html; charset=iso-8859-1")):
        write_warc(tmp_path / name / "a.warc.gz", [Page(f"https://example.org/{name}", body, content_type)])
    texts = {}
    for name in ("right", "wrong"):
        source = WarcSource(name=name, kind="warc", location=str(tmp_path / name))
        manifest = chain.clean(store, name, chain.ingest(store, source))
        [row] = chain.read_rows(store, manifest)
        texts[name] = row["text"]
        assert row["charset"] == "utf-8"
    assert texts["right"] == texts["wrong"] and re.search("[äöüß]", texts["wrong"])


def test_short_and_empty_documents_are_removed_with_reasons_and_text_passes_the_normaliser(tmp_path, store):
    long_text = "Ein ausreichend langer Absatz über die Installation. " * 10
    write_jsonl(tmp_path / "in" / "d.jsonl", [{"text": "zu kurz"}, {"text": "  \u00a0 \t "},
                                                {"text": f"  {long_text}\n\n\n\nZweiter   Absatz.  "}])
    source = JsonlSource(name="docs", kind="jsonl", location=str(tmp_path / "in"))
    ingested = chain.ingest(store, source)
    assert ingested["counts"]["quarantined"] == {"empty_text": 1}
    manifest = chain.clean(store, "docs", ingested, CleanConfig(workers=1, min_chars=100))
    assert manifest["counts"]["removed"] == {"too_short": 1}
    [row] = chain.read_rows(store, manifest)
    assert row["title"] is None and row["text"] == f"{long_text.strip()}\n\nZweiter Absatz."
    [removed] = chain.read_rows(store, manifest, role="removed")
    assert removed["reason"] == "too_short" and removed["sample"] == b"zu kurz"


def test_extractor_per_source_changes_only_that_sources_version(store):
    source = HtmlSource(name="pages", kind="html", location=str(SAMPLE / "html" / "fr"))
    ingested = chain.ingest(store, source)
    default = chain.clean(store, "pages", ingested)
    precise = chain.clean(store, "pages", ingested, CleanConfig(workers=1, extractor_by_source={"pages": "trafilatura"}))
    assert precise["version"] != default["version"] and precise["summary"]["extractor"] == "trafilatura"
    other = clean_spec("pages", CleanConfig(workers=1, extractor_by_source={"else": "trafilatura"}), ingested)
    assert other.version == default["version"]
