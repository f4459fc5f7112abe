"""The ingest core (tasks/ingest.py) without Prefect: real WARC / JSONL / HTML inputs built in tmp_path,
ingested into a local directory store and into a real SeaweedFS S3 store."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.artifacts import ArtifactWriter, fetch_verified, files_with_role, read_manifest
from pipeline.config import HtmlSource, IngestConfig, JsonlSource, StorageConfig, WarcSource
from pipeline.shards import DOCUMENT_SCHEMA, QUARANTINE_SCHEMA
from pipeline.sources import InputFile, list_inputs
from pipeline.storage import LocalStore, S3Store
from warcio.statusandheaders import StatusAndHeaders

from tests.conftest import SAMPLE
from tests.raw_inputs import PNG, Page, html_page, write_jsonl, write_warc
from tasks.ingest import IngestJob, document_id, ingest_spec, ingest_unit, plan_units, run_ingest

LOCAL = StorageConfig(backend="local")
MB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Helpers


def warc_source(location, name: str = "web", **extra) -> WarcSource:
    return WarcSource(name=name, kind="warc", location=str(location), **extra)


def jsonl_source(location, name: str = "books", **extra) -> JsonlSource:
    return JsonlSource(name=name, kind="jsonl", location=str(location), **extra)


def html_source(location, name: str = "site", **extra) -> HtmlSource:
    return HtmlSource(name=name, kind="html", location=str(location), **extra)


def settings(**extra) -> IngestConfig:
    return IngestConfig(**{"workers": 1, **extra})


def storage_for(store) -> StorageConfig:
    if isinstance(store, S3Store):
        return StorageConfig(backend="s3", endpoint_url=store.endpoint_url, bucket=store.bucket, prefix=store.prefix)
    return LOCAL


class Run:
    """One run_ingest call and what it produced."""

    def __init__(self, source, store, config: IngestConfig, tmp_path: Path, *, storage: StorageConfig | None = None,
                 rebuild: str | None = None):
        self.store = store
        self.storage = storage or storage_for(store)
        self.files = list_inputs(source, self.storage)
        self.spec = ingest_spec(source, self.files, config, rebuild=rebuild)
        self.messages: list[str] = []
        self.manifest = run_ingest(source, config, self.storage, store, self.spec, self.files,
                                   progress=self.messages.append)
        self.tmp_path = tmp_path

    @property
    def counts(self) -> dict:
        return self.manifest["counts"]

    def table(self, role: str) -> pa.Table:
        dest = self.tmp_path / f"fetch-{uuid.uuid4().hex[:8]}"
        dest.mkdir()
        tables = [pq.read_table(fetch_verified(self.store, self.manifest, entry, dest))
                  for entry in files_with_role(self.manifest, role)]
        schema = DOCUMENT_SCHEMA if role == "documents" else QUARANTINE_SCHEMA
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def documents(self) -> list[dict]:
        return self.table("documents").to_pylist()

    def quarantine(self) -> list[dict]:
        return self.table("quarantine").to_pylist()

    def shard_digests(self, role: str = "documents") -> dict[str, str]:
        return {entry["path"]: entry["sha256"] for entry in files_with_role(self.manifest, role)}


def fake_files(sizes: list[int], suffix: str = ".html") -> list[InputFile]:
    return [InputFile(f"f{i:03d}{suffix}", f"/nowhere/f{i:03d}{suffix}", size, f"sha256:{i}")
            for i, size in enumerate(sizes)]


def build_crawl(root: Path, *, with_requests: bool = True) -> dict[str, list[Page]]:
    """Three WARC files (request + response pairs, as crawlers write them): two gzipped, one plain, in a
    folder with a subfolder and a file to ignore."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    crawl = {
        "a.warc.gz": [
            Page("http://example.com/a1", html_page(1), "text/html; charset=ISO-8859-1"),
            Page("http://example.com/a2", html_page(2), "text/html"),
        ],
        "b.warc": [
            Page("http://example.org/b1", html_page(3), "application/xhtml+xml; charset=utf-8",
                 date="2023-01-02T03:04:05Z"),
        ],
        "sub/c.warc.gz": [
            Page(f"http://example.net/c{i}", html_page(10 + i), "text/html; charset=utf-8") for i in range(3)
        ],
    }
    for relpath, pages in crawl.items():
        write_warc(root / relpath, pages, gzip=relpath.endswith(".gz"), with_requests=with_requests)
    (root / "readme.txt").write_text("not a warc")
    return crawl


# ---------------------------------------------------------------------------------------------
# WARC end to end, on both backends


def test_warc_ingest_end_to_end(store, tmp_path):
    crawl = build_crawl(tmp_path / "crawl")
    run = Run(warc_source(tmp_path / "crawl"), store, settings(), tmp_path)
    manifest = run.manifest

    assert read_manifest(store, "ingest/web", run.spec.version) == manifest
    assert manifest["artifact"] == "ingest/web" and manifest["stage"] == "ingest"
    assert [f.relpath for f in run.files] == ["a.warc.gz", "b.warc", "sub/c.warc.gz"]
    assert run.counts["files"] == 3
    assert run.counts["documents"] == 6 and run.counts["records"] == 6
    assert run.counts["bytes_in"] == sum((tmp_path / "crawl" / f).stat().st_size for f in crawl)
    assert run.counts["quarantined"] == {}
    assert run.counts["skipped"] == {"warc_request_record": 6}
    assert manifest["summary"]["units"] == 3  # one unit per WARC file
    assert any("6 documents" in m and "(done)" in m for m in run.messages)

    table = run.table("documents")
    assert table.schema.remove_metadata().equals(DOCUMENT_SCHEMA)
    docs = {row["url"]: row for row in table.to_pylist()}
    assert len(docs) == 6
    all_pages = {page.url: (relpath, page) for relpath, pages in crawl.items() for page in pages}
    assert set(docs) == set(all_pages)
    for url, (relpath, page) in all_pages.items():
        row = docs[url]
        assert row["content"] == page.body
        assert row["source"] == "web"
        assert row["origin"].startswith(relpath + "#offset=")
        assert row["fetch_date"].isoformat() == page.date.replace("Z", "+00:00")
    assert docs["http://example.com/a1"]["charset"] == "iso-8859-1"
    assert docs["http://example.com/a1"]["content_type"] == "text/html"
    assert docs["http://example.com/a2"]["charset"] is None
    assert docs["http://example.org/b1"]["content_type"] == "application/xhtml+xml"
    assert docs["http://example.org/b1"]["charset"] == "utf-8"
    assert len({row["id"] for row in docs.values()}) == 6

    # The input listing is part of the artifact.
    inputs = [entry for entry in manifest["files"] if entry["role"] == "inputs"]
    assert [entry["path"] for entry in inputs] == ["inputs.jsonl"]
    assert all(f.fingerprint == hashlib.sha256(Path(f.location).read_bytes()).hexdigest() for f in run.files)


def test_warc_ids_and_shards_are_stable_across_runs_and_stores(store, tmp_path):
    build_crawl(tmp_path / "crawl")
    first = Run(warc_source(tmp_path / "crawl"), store, settings(), tmp_path)
    other = LocalStore(tmp_path / "other-store", "q")
    second = Run(warc_source(tmp_path / "crawl"), other, settings(), tmp_path, storage=LOCAL)
    assert second.spec.version == first.spec.version
    assert second.shard_digests() == first.shard_digests()
    assert [row["id"] for row in second.documents()] == [row["id"] for row in first.documents()]
    assert second.counts == first.counts


def test_warc_version_follows_content_not_location(tmp_path):
    import shutil

    def version(folder: Path, config: IngestConfig) -> str:
        source = warc_source(folder)
        return ingest_spec(source, list_inputs(source, LOCAL), config).version

    build_crawl(tmp_path / "crawl")
    original = version(tmp_path / "crawl", settings())
    # The same bytes elsewhere, with other unversioned settings: the same version.
    shutil.copytree(tmp_path / "crawl", tmp_path / "copy")
    assert version(tmp_path / "copy", settings(workers=4, scratch_dir=str(tmp_path))) == original
    # A versioned setting or one changed input file: a new version.
    assert version(tmp_path / "crawl", settings(shard_max_docs=10)) != original
    write_warc(tmp_path / "copy" / "b.warc", [Page("http://example.org/b1", html_page(99))], gzip=False)
    assert version(tmp_path / "copy", settings()) != original


def test_warc_of_responses_only(tmp_path):
    """Request records are optional: a WARC of bare responses ingests the same documents."""
    build_crawl(tmp_path / "crawl", with_requests=False)
    build_crawl(tmp_path / "full", with_requests=True)
    bare = Run(warc_source(tmp_path / "crawl"), LocalStore(tmp_path / "s1", "p"), settings(), tmp_path)
    full = Run(warc_source(tmp_path / "full"), LocalStore(tmp_path / "s2", "p"), settings(), tmp_path)
    assert bare.counts["skipped"] == {} and bare.counts["quarantined"] == {}
    assert bare.counts["documents"] == full.counts["documents"] == 6
    pick = lambda run: [(r["id"], r["url"], r["content"]) for r in run.documents()]  # noqa: E731
    assert pick(bare) == pick(full)  # ids come from the response records' WARC-Record-IDs


def test_warc_http_errors_are_skipped(tmp_path):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    write_warc(crawl / "s.warc.gz", [
        Page("http://e.com/ok", html_page(1)),
        Page("http://e.com/missing", b"<html>not found</html>", status="404 Not Found"),
        Page("http://e.com/moved", b"", status="301 Moved Permanently", extra_headers=[("Location", "/x")]),
        Page("http://e.com/ok2", html_page(2)),
    ])
    run = Run(warc_source(crawl), LocalStore(tmp_path / "store", "p"), settings(), tmp_path)
    assert run.counts["documents"] == 2
    assert run.counts["skipped"] == {"http_status_4xx": 1, "http_status_3xx": 1, "warc_request_record": 4}
    assert run.counts["quarantined"] == {}
    assert [row["url"] for row in run.documents()] == ["http://e.com/ok", "http://e.com/ok2"]


def test_warc_quoted_charset_is_unquoted(tmp_path):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    write_warc(crawl / "q.warc.gz", [Page("http://e.com/q", html_page(1), 'text/html; charset="UTF-8"')])
    run = Run(warc_source(crawl), LocalStore(tmp_path / "store", "p"), settings(), tmp_path)
    assert run.documents()[0]["charset"] == "utf-8"


# ---------------------------------------------------------------------------------------------
# JSONL and HTML end to end


def test_jsonl_ingest_plain_gzip_and_zstd(tmp_path):
    data = tmp_path / "books"
    data.mkdir()
    rows = {
        "part1.jsonl": [{"text": "Plain one.", "url": "http://b/1", "id": "p1", "date": "2024-02-03T04:05:06Z"},
                        {"text": "Plain two, ünïcödé ✓", "id": "p2"}],
        "part2.jsonl.gz": [{"text": "Gzip one.", "id": "g1", "url": "http://b/g1", "date": "2024-02-03"}],
        "part3.jsonl.zst": [{"text": "Zstd one.", "id": "z1"}, {"text": "Zstd two.", "id": "z2", "url": 5}],
    }
    for name, content in rows.items():
        write_jsonl(data / name, content)
    source = jsonl_source(data, id_field="id", date_field="date")
    store = LocalStore(tmp_path / "store", "p")
    run = Run(source, store, settings(), tmp_path)
    assert run.counts["documents"] == 5 and run.counts["files"] == 3
    assert run.counts["quarantined"] == {}
    docs = {row["content"].decode(): row for row in run.documents()}
    assert set(docs) == {r["text"] for content in rows.values() for r in content}
    one = docs["Plain one."]
    assert one["url"] == "http://b/1" and one["content_type"] == "text/plain" and one["charset"] == "utf-8"
    assert one["fetch_date"].isoformat() == "2024-02-03T04:05:06+00:00"
    assert one["origin"] == "part1.jsonl#line=1"
    assert docs["Gzip one."]["fetch_date"].isoformat() == "2024-02-03T00:00:00+00:00"
    assert docs["Zstd two."]["url"] is None  # a non-string url is not a url
    assert docs["Plain two, ünïcödé ✓"]["origin"] == "part1.jsonl#line=2"
    # With an id field, the id is the source's own id: the same record elsewhere keeps its id.
    moved = tmp_path / "moved"
    moved.mkdir()
    write_jsonl(moved / "other-name.jsonl", [{"text": "Different line, same id", "id": "z1"}])
    again = Run(jsonl_source(moved, id_field="id"), LocalStore(tmp_path / "store2", "p"), settings(), tmp_path)
    assert again.documents()[0]["id"] == docs["Zstd one."]["id"]


def test_jsonl_without_id_field_ids_depend_on_position(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    write_jsonl(data / "x.jsonl", [{"text": "same"}, {"text": "same"}])
    run = Run(jsonl_source(data), LocalStore(tmp_path / "s", "p"), settings(), tmp_path)
    ids = [row["id"] for row in run.documents()]
    assert len(set(ids)) == 2


def test_html_folder_ingest(tmp_path):
    pages = tmp_path / "pages"
    (pages / "guide").mkdir(parents=True)
    (pages / "index.html").write_bytes(html_page(1))
    (pages / "guide" / "intro.htm").write_bytes("<html><body>Größe café</body></html>".encode("latin-1"))
    (pages / "guide" / "notes.txt").write_text("ignored")
    (pages / ".hidden.html").write_bytes(html_page(3))
    run = Run(html_source(pages, base_url="https://docs.example.org/manual/", charset="iso-8859-1"),
              LocalStore(tmp_path / "store", "p"), settings(), tmp_path)
    assert [f.relpath for f in run.files] == ["guide/intro.htm", "index.html"]
    docs = {row["url"]: row for row in run.documents()}
    assert set(docs) == {"https://docs.example.org/manual/guide/intro.htm", "https://docs.example.org/manual/index.html"}
    intro = docs["https://docs.example.org/manual/guide/intro.htm"]
    assert intro["content"] == (pages / "guide" / "intro.htm").read_bytes()
    assert intro["charset"] == "iso-8859-1" and intro["content_type"] == "text/html"
    assert intro["origin"] == "guide/intro.htm#file" and intro["fetch_date"] is None
    assert run.manifest["summary"]["units"] == 1  # small files share a unit


# ---------------------------------------------------------------------------------------------
# The bad-input corpus: the run completes, damage is quarantined with its reason, good records stay


def test_bad_warc_inputs_are_quarantined(tmp_path):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    good = [Page(f"http://e.com/good{i}", html_page(i, words=20)) for i in range(4)]
    oversize = Page("http://e.com/huge", html_page(99, words=600))
    pages = [
        good[0],
        Page("http://e.com/fake.html", PNG, "text/html"),  # binary bytes declared as HTML
        good[1],
        Page("http://e.com/logo.png", PNG, "image/png"),  # a real image
        oversize,
        good[2],
    ]
    offsets = write_warc(crawl / "a.warc.gz", pages)
    (crawl / "empty.warc.gz").write_bytes(b"")
    write_warc(crawl / "z.warc", [good[3]], gzip=False)
    config = settings(max_record_mb=0.001, quarantine_sample_bytes=64)
    assert len(oversize.body) > 0.001 * MB > max(len(p.body) + 200 for p in good)

    run = Run(warc_source(crawl), LocalStore(tmp_path / "store", "p"), config, tmp_path)
    assert run.counts["quarantined"] == {
        "binary_payload": 1, "non_html_payload": 1, "oversize_record": 1, "empty_file": 1,
    }
    assert run.counts["documents"] == 4
    assert run.counts["records"] == 8
    assert run.counts["skipped"] == {"warc_request_record": 7}
    assert [row["url"] for row in run.documents()] == [p.url for p in good]
    assert [row["content"] for row in run.documents()] == [p.body for p in good]

    table = run.table("quarantine")
    assert table.schema.remove_metadata().equals(QUARANTINE_SCHEMA)
    rows = {row["reason"]: row for row in table.to_pylist()}
    assert rows["binary_payload"]["origin"] == f"a.warc.gz#offset={offsets[1]}"
    assert rows["binary_payload"]["sample"] == PNG[:64]
    assert rows["non_html_payload"]["origin"] == f"a.warc.gz#offset={offsets[3]}"
    assert "image/png" in rows["non_html_payload"]["detail"]
    assert rows["oversize_record"]["origin"] == f"a.warc.gz#offset={offsets[4]}"
    assert rows["oversize_record"]["size"] >= len(oversize.body)
    assert rows["oversize_record"]["sample"] == oversize.body[:64]
    assert rows["empty_file"]["origin"] == "empty.warc.gz#file"
    assert all(row["source"] == "web" for row in rows.values())


def truncated_copy(path: Path, offsets: list[int], fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    cut = offsets[-1] + int((len(data) - offsets[-1]) * fraction)
    path.write_bytes(data[:cut])
    return path


def varied_pages(count: int) -> list[Page]:
    """Pages of varied words (they compress like real HTML, not like a repeated phrase)."""
    import random

    rng = random.Random(11)
    words = ["river", "stone", "north", "light", "garden", "window", "paper", "silver", "cloud", "meadow"]
    return [Page(f"http://e.com/p{i}", ("<html><body><p>" + " ".join(rng.choice(words) for _ in range(300))
                                        + f"</p>{i}</body></html>").encode()) for i in range(count)]


@pytest.mark.parametrize("compressed", [True, False], ids=["warc.gz", "warc"])
def test_truncated_warc_keeps_the_records_before_the_damage(tmp_path, compressed):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    pages = varied_pages(4)
    name = "t.warc.gz" if compressed else "t.warc"
    offsets = write_warc(crawl / name, pages, gzip=compressed)
    truncated_copy(crawl / name, offsets)
    write_warc(crawl / "u.warc.gz", [Page("http://e.com/after", html_page(5))])  # a later file is unaffected

    run = Run(warc_source(crawl), LocalStore(tmp_path / "store", "p"), settings(), tmp_path)
    assert run.counts["quarantined"].get("truncated_file") == 1
    contents = [row["content"] for row in run.documents()]
    assert contents[:3] == [page.body for page in pages[:3]]
    assert contents[-1] == html_page(5)
    damage = [row for row in run.quarantine() if row["reason"] == "truncated_file"]
    assert damage[0]["origin"] == f"{name}#offset={offsets[-1]}"


@pytest.mark.parametrize("compressed", [True, False], ids=["warc.gz", "warc"])
def test_truncated_warc_record_is_not_kept_as_a_document(tmp_path, compressed):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    pages = varied_pages(4)
    name = "t.warc.gz" if compressed else "t.warc"
    truncated_copy(crawl / name, write_warc(crawl / name, pages, gzip=compressed))
    run = Run(warc_source(crawl), LocalStore(tmp_path / "store", "p"), settings(), tmp_path)
    assert [row["content"] for row in run.documents()] == [page.body for page in pages[:3]]
    assert run.counts["quarantined"] == {"truncated_file": 1}


def test_bad_jsonl_inputs_are_quarantined(tmp_path):
    data = tmp_path / "books"
    data.mkdir()
    lines = [
        {"text": "first good", "url": "http://a/1"},                       # 1
        b'{"text": "caf\xe9 in latin-1"}',                                 # 2 invalid utf-8
        b'{"text": "unterminated',                                         # 3 malformed JSON
        {"body": "no text field here"},                                    # 4
        b"   ",                                                            # 5 blank: skipped
        [1, 2, 3],                                                         # 6 not an object
        {"text": "   "},                                                   # 7 empty text
        {"text": "x" * 2000},                                              # 8 oversize
        {"text": "last good"},                                             # 9
    ]
    write_jsonl(data / "bad.jsonl", [json.dumps(r) if isinstance(r, list) else r for r in lines])
    for name in ("empty.jsonl", "empty.jsonl.gz", "empty.jsonl.zst"):
        (data / name).write_bytes(b"")
    write_jsonl(data / "ok.jsonl.gz", [{"text": "gz good 1"}, {"text": "gz good 2"}])
    write_jsonl(data / "ok.jsonl.zst", [{"text": "zst good 1"}, {"text": "zst good 2"}])

    config = settings(max_record_mb=0.001, quarantine_sample_bytes=100)
    run = Run(jsonl_source(data), LocalStore(tmp_path / "store", "p"), config, tmp_path)
    assert run.counts["quarantined"] == {
        "invalid_utf8": 1, "invalid_json": 1, "missing_text_field": 1, "not_an_object": 1, "empty_text": 1,
        "oversize_record": 1, "empty_file": 3,
    }
    assert run.counts["skipped"] == {"blank_line": 1}
    assert run.counts["documents"] == 6 and run.counts["files"] == 6
    assert sorted(row["content"].decode() for row in run.documents()) == sorted(
        ["first good", "last good", "gz good 1", "gz good 2", "zst good 1", "zst good 2"])

    rows = {row["origin"]: row for row in run.quarantine()}
    assert {origin: row["reason"] for origin, row in rows.items()} == {
        "bad.jsonl#line=2": "invalid_utf8",
        "bad.jsonl#line=3": "invalid_json",
        "bad.jsonl#line=4": "missing_text_field",
        "bad.jsonl#line=6": "not_an_object",
        "bad.jsonl#line=7": "empty_text",
        "bad.jsonl#line=8": "oversize_record",
        "empty.jsonl#file": "empty_file",
        "empty.jsonl.gz#file": "empty_file",
        "empty.jsonl.zst#file": "empty_file",
    }
    assert rows["bad.jsonl#line=2"]["sample"].rstrip(b"\n") == b'{"text": "caf\xe9 in latin-1"}'
    assert rows["bad.jsonl#line=3"]["sample"].rstrip(b"\n") == b'{"text": "unterminated'
    assert rows["bad.jsonl#line=8"]["sample"] == b'{"text": "' + b"x" * 90
    assert rows["bad.jsonl#line=8"]["size"] == len(json.dumps({"text": "x" * 2000})) + 1
    assert all(row["detail"] for row in rows.values())


def test_truncated_jsonl_gz_keeps_the_lines_before_the_damage(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    path = write_jsonl(data / "t.jsonl.gz", [{"text": f"line {i} " + "w" * (i % 50)} for i in range(300)])
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 3 // 4])
    run = Run(jsonl_source(data), LocalStore(tmp_path / "s", "p"), settings(), tmp_path)
    assert run.counts["quarantined"] == {"truncated_file": 1}
    assert run.counts["documents"] >= 150


def test_truncated_jsonl_zst_is_reported_as_truncated(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    path = write_jsonl(data / "t.jsonl.zst", [{"text": f"line {i} " + "w" * (i % 50)} for i in range(300)])
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 3 // 4])
    run = Run(jsonl_source(data), LocalStore(tmp_path / "s", "p"), settings(), tmp_path)
    assert run.counts["quarantined"] == {"truncated_file": 1}


def test_bad_html_inputs_are_quarantined(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "a.html").write_bytes(html_page(1, words=10))
    (pages / "b.html").write_bytes(b"")
    (pages / "c.html").write_bytes(PNG)
    (pages / "d.html").write_bytes(html_page(4, words=600))
    (pages / "e.html").write_bytes(b"  \n\t ")
    (pages / "f.html").write_bytes(html_page(6, words=10))
    config = settings(max_record_mb=0.001)
    run = Run(html_source(pages), LocalStore(tmp_path / "store", "p"), config, tmp_path)
    assert run.counts["quarantined"] == {"empty_file": 1, "binary_payload": 1, "oversize_record": 1,
                                         "empty_payload": 1}
    assert run.counts["documents"] == 2
    assert [row["origin"] for row in run.documents()] == ["a.html#file", "f.html#file"]
    reasons = {row["origin"]: row["reason"] for row in run.quarantine()}
    assert reasons == {"b.html#file": "empty_file", "c.html#file": "binary_payload",
                       "d.html#file": "oversize_record", "e.html#file": "empty_payload"}


# ---------------------------------------------------------------------------------------------
# Work units, parallelism and resume


def test_plan_units_groups_small_files_up_to_unit_max_mb():
    files = fake_files([300_000] * 7)
    units = plan_units(html_source("/x"), files, settings(unit_max_mb=1))
    assert [len(unit.files) for unit in units] == [3, 3, 1]
    assert [unit.key for unit in units] == ["u00000", "u00001", "u00002"]
    assert [f for unit in units for f in unit.files] == files  # every file once, in order
    assert all(unit.size <= MB for unit in units)


def test_plan_units_puts_a_large_file_in_a_unit_of_its_own():
    files = fake_files([100_000, 200_000, 2 * MB, 100_000, MB], suffix=".jsonl")
    units = plan_units(jsonl_source("/x"), files, settings(unit_max_mb=1))
    assert [[f.relpath for f in unit.files] for unit in units] == [
        ["f000.jsonl", "f001.jsonl"], ["f002.jsonl"], ["f003.jsonl"], ["f004.jsonl"],
    ]


def test_plan_units_one_unit_per_warc_file():
    files = fake_files([10, 20, 30], suffix=".warc.gz")
    units = plan_units(warc_source("/x"), files, settings(unit_max_mb=64))
    assert [[f.relpath for f in unit.files] for unit in units] == [["f000.warc.gz"], ["f001.warc.gz"], ["f002.warc.gz"]]


@pytest.mark.parametrize("kind", ["html", "warc"])
def test_plan_units_is_independent_of_workers(kind):
    source = html_source("/x") if kind == "html" else warc_source("/x")
    files = fake_files([400_000, 500_000, 300_000, 2 * MB, 10], suffix=".html" if kind == "html" else ".warc")
    plans = [plan_units(source, files, settings(workers=workers, unit_max_mb=1)) for workers in (1, 2, 16)]
    assert plans[0] == plans[1] == plans[2]


def test_workers_do_not_change_the_output(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    for i in range(5):  # ~400 KB each, unit_max_mb=1: three units of 2 + 2 + 1 files
        (pages / f"p{i}.html").write_bytes(html_page(i, words=55_000)[:400_000] + b"</p></body></html>")
    source = html_source(pages)
    one = Run(source, LocalStore(tmp_path / "s1", "p"), settings(workers=1, unit_max_mb=1), tmp_path)
    two = Run(source, LocalStore(tmp_path / "s2", "p"), settings(workers=2, unit_max_mb=1), tmp_path)
    assert one.manifest["summary"]["units"] == 3
    assert two.spec.version == one.spec.version  # workers are not part of the version
    assert two.manifest["files"] == one.manifest["files"]
    assert len(one.shard_digests()) == 3
    assert two.counts == one.counts and one.counts["documents"] == 5


def test_resume_skips_units_finished_by_an_earlier_attempt(tmp_path):
    crawl = tmp_path / "crawl"
    build_crawl(crawl)
    source, config = warc_source(crawl), settings()
    clean = Run(source, LocalStore(tmp_path / "clean", "p"), config, tmp_path)

    # An earlier attempt finished unit 0 and then died.
    store = LocalStore(tmp_path / "store", "p")
    files = list_inputs(source, LOCAL)
    spec = ingest_spec(source, files, config)
    writer = ArtifactWriter(store, spec)
    units = plan_units(source, files, config)
    record = ingest_unit(IngestJob(source, config, LOCAL, store, spec.prefix), units[0])
    writer.finish_unit(units[0].key, record)
    assert read_manifest(store, spec.artifact, spec.version) is None

    # Proof that unit 0 is not read again: its input file is now unreadable garbage.
    Path(units[0].files[0].location).write_bytes(b"\x00garbage")
    messages: list[str] = []
    manifest = run_ingest(source, config, LOCAL, store, spec, files, progress=messages.append)
    assert any("1 already done by an earlier attempt, 2 to do" in m for m in messages), messages
    assert {e["path"]: e["sha256"] for e in manifest["files"]} == {e["path"]: e["sha256"] for e in clean.manifest["files"]}
    assert manifest["counts"] == clean.counts
    assert manifest["version"] == clean.spec.version


def test_resume_redoes_a_unit_whose_files_are_gone(tmp_path):
    crawl = tmp_path / "crawl"
    build_crawl(crawl)
    source, config = warc_source(crawl), settings()
    clean = Run(source, LocalStore(tmp_path / "clean", "p"), config, tmp_path)

    store = LocalStore(tmp_path / "store", "p")
    files = list_inputs(source, LOCAL)
    spec = ingest_spec(source, files, config)
    units = plan_units(source, files, config)
    record = ingest_unit(IngestJob(source, config, LOCAL, store, spec.prefix), units[1])
    ArtifactWriter(store, spec).finish_unit(units[1].key, record)
    store.delete(f"{spec.prefix}/{record['files'][0]['path']}")  # the upload was lost

    messages: list[str] = []
    manifest = run_ingest(source, config, LOCAL, store, spec, files, progress=messages.append)
    assert any("0 already done by an earlier attempt, 3 to do" in m for m in messages), messages
    assert {e["path"]: e["sha256"] for e in manifest["files"]} == {e["path"]: e["sha256"] for e in clean.manifest["files"]}


def test_rebuild_token_gives_a_new_version_with_the_same_data(tmp_path):
    build_crawl(tmp_path / "crawl")
    store = LocalStore(tmp_path / "store", "p")
    first = Run(warc_source(tmp_path / "crawl"), store, settings(), tmp_path)
    forced = Run(warc_source(tmp_path / "crawl"), store, settings(), tmp_path, rebuild="run:abc")
    assert forced.spec.version != first.spec.version
    assert forced.shard_digests() == first.shard_digests()
    assert read_manifest(store, "ingest/web", first.spec.version)["version"] == first.spec.version


def test_document_id_is_stable():
    from corpus.raw_formats import RawDoc

    doc = RawDoc("offset=0", b"x", "text/html", native_id="<urn:uuid:1>")
    assert document_id("web", "a.warc.gz", doc) == document_id("web", "elsewhere.warc.gz", doc)
    assert document_id("web", "a", doc) != document_id("other", "a", doc)
    positional = RawDoc("line=3", b"x", "text/plain")
    assert document_id("b", "x.jsonl", positional) != document_id("b", "y.jsonl", positional)
    assert len(document_id("b", "x.jsonl", positional)) == 32


# ---------------------------------------------------------------------------------------------
# An S3 source


def upload_crawl(s3_store: S3Store, crawl: Path, bucket: str, prefix: str) -> None:
    client = s3_store.client
    for path in sorted(crawl.rglob("*")):
        if path.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(crawl).as_posix()}", Body=path.read_bytes())


def crawl_in_a_bucket(s3_store: S3Store, tmp_path: Path, prefix: str) -> tuple[Path, str]:
    """build_crawl's files, also uploaded under `prefix` of a new bucket: (the local folder, the bucket)."""
    crawl = tmp_path / "crawl"
    build_crawl(crawl)
    bucket = "raw-" + uuid.uuid4().hex[:10]
    s3_store.client.create_bucket(Bucket=bucket)
    upload_crawl(s3_store, crawl, bucket, prefix)
    return crawl, bucket


def test_ingest_from_an_s3_source(s3_store, tmp_path):
    crawl, bucket = crawl_in_a_bucket(s3_store, tmp_path, "crawls/2024")
    storage = storage_for(s3_store)

    source = warc_source(f"s3://{bucket}/crawls/2024/")
    run = Run(source, s3_store, settings(), tmp_path, storage=storage)
    assert [f.relpath for f in run.files] == ["a.warc.gz", "b.warc", "sub/c.warc.gz"]
    for f in run.files:
        content = (crawl / f.relpath).read_bytes()
        assert f.location == f"s3://{bucket}/crawls/2024/{f.relpath}"
        assert f.fingerprint == f"etag:{hashlib.md5(content).hexdigest()}:{len(content)}"
        assert f.size == len(content)
    assert run.counts["documents"] == 6 and run.counts["quarantined"] == {}

    # The same bytes from a local folder give the same documents, byte for byte.
    local = Run(warc_source(crawl), LocalStore(tmp_path / "store", "p"), settings(), tmp_path)
    assert run.shard_digests() == local.shard_digests()
    assert local.spec.version != run.spec.version  # fingerprints differ in kind (sha256 vs etag)


def test_s3_source_without_trailing_slash_reads_only_that_folder(s3_store, tmp_path):
    crawl, bucket = crawl_in_a_bucket(s3_store, tmp_path, "crawl")
    s3_store.client.put_object(Bucket=bucket, Key="crawl-old/x.warc.gz", Body=(crawl / "a.warc.gz").read_bytes())
    files = list_inputs(warc_source(f"s3://{bucket}/crawl"), storage_for(s3_store))
    assert [f.relpath for f in files] == ["a.warc.gz", "b.warc", "sub/c.warc.gz"]


# ---------------------------------------------------------------------------------------------
# Compressed pages, header-less responses, unreadable files


def test_the_samples_pages_compressed_are_the_same_documents(tmp_path):
    """The sample's real HTML pages gzip- and zstd-compressed (as crawl dumps store them) give the very
    documents the plain pages give, with the same URLs."""
    import gzip

    import zstandard

    plain = SAMPLE / "html"
    packed = tmp_path / "packed"
    for number, page in enumerate(sorted(plain.rglob("*.html"))):
        relpath = page.relative_to(plain).as_posix()
        target = packed / (relpath + (".gz" if number % 2 else ".zst"))
        target.parent.mkdir(parents=True, exist_ok=True)
        data = page.read_bytes()
        target.write_bytes(gzip.compress(data, mtime=0) if number % 2 else zstandard.ZstdCompressor().compress(data))
    base = "https://www.debian.org/doc/"
    expected = Run(html_source(plain, base_url=base), LocalStore(tmp_path / "a", "p"), settings(), tmp_path)
    run = Run(html_source(packed, base_url=base), LocalStore(tmp_path / "b", "p"), settings(), tmp_path)
    assert run.counts["quarantined"] == {} and run.counts["documents"] == expected.counts["documents"] >= 10
    assert sorted((row["url"], row["content"]) for row in run.documents()) == \
        sorted((row["url"], row["content"]) for row in expected.documents())
    # the same file given directly (a source location naming one file) is decoded too
    one = next(packed.rglob("*.html.gz"))
    [document] = Run(html_source(one), LocalStore(tmp_path / "c", "p"), settings(), tmp_path).documents()
    assert document["content"].startswith(b"<") and document["origin"] == f"{one.name}#file"


def write_headerless_response(path: Path, url: str, block: bytes) -> None:
    """A WARC `response` record whose block is the page alone: no HTTP status line, no headers."""
    import io

    from warcio.recordloader import ArcWarcRecord
    from warcio.warcwriter import WARCWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        headers = writer._init_warc_headers(url, "response", {"WARC-Date": "2024-05-06T07:08:09Z"})
        record = ArcWarcRecord("warc", "response", headers, io.BytesIO(block), None,
                               "application/http; msgtype=response", len(block))
        record.payload_length = len(block)
        writer.write_record(record)
        writer.write_record(writer.create_warc_record(
            "http://example.com/ok", "response", payload=io.BytesIO(html_page(1)),
            http_headers=StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")))


def test_a_response_without_http_headers_is_quarantined_with_its_block(tmp_path):
    block = (SAMPLE / "html" / "en").glob("*.html").__next__().read_bytes()
    write_headerless_response(tmp_path / "crawl" / "a.warc.gz", "http://example.com/bare", block)
    run = Run(warc_source(tmp_path / "crawl"), LocalStore(tmp_path / "store", "p"), settings(), tmp_path)
    assert run.counts["quarantined"] == {"missing_http_headers": 1} and run.counts["documents"] == 1
    [row] = run.quarantine()
    assert "no HTTP status line" in row["detail"] and row["size"] == len(block)
    assert row["sample"] == block[:4096]


def test_unreadable_inputs_are_quarantined_not_skipped(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "good.html").write_bytes(html_page(1))
    (pages / "gone.html").write_bytes(html_page(2))
    (pages / "dangling.html").symlink_to(tmp_path / "unmounted-share" / "page.html")
    (pages / "loop.html").symlink_to(pages / "loop.html")
    source = html_source(pages)
    files = list_inputs(source, LOCAL)
    assert [(f.relpath, f.error is not None) for f in files] == [
        ("dangling.html", True), ("gone.html", False), ("good.html", False), ("loop.html", True)]
    (pages / "gone.html").unlink()  # vanishes between listing and reading
    config = settings()
    store = LocalStore(tmp_path / "store", "p")
    manifest = run_ingest(source, config, LOCAL, store, ingest_spec(source, files, config), files,
                          progress=lambda _m: None)
    assert manifest["counts"]["quarantined"] == {"unreadable_file": 3} and manifest["counts"]["documents"] == 1
    assert manifest["counts"]["files"] == 4
    run = Run.__new__(Run)
    run.store, run.manifest, run.tmp_path = store, manifest, tmp_path
    details = {row["origin"]: row["detail"] for row in run.quarantine()}
    assert details["dangling.html#file"].startswith("a dangling symbolic link")
    assert details["loop.html#file"] == "a loop of symbolic links"
    assert details["gone.html#file"] == "no such file (it vanished between listing and reading)"
    # once the share is mounted the file is read: the version follows what can be read
    (tmp_path / "unmounted-share").mkdir()
    (tmp_path / "unmounted-share" / "page.html").write_bytes(html_page(3))
    assert ingest_spec(source, list_inputs(source, LOCAL), config).version != manifest["version"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file whatever its permissions")
def test_a_file_without_read_permission_is_quarantined(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "good.html").write_bytes(html_page(1))
    (pages / "secret.html").write_bytes(html_page(2))
    (pages / "secret.html").chmod(0)
    run = Run(html_source(pages), LocalStore(tmp_path / "store", "p"), settings(), tmp_path)
    assert run.counts["quarantined"] == {"unreadable_file": 1}
    assert run.quarantine()[0]["detail"] == "permission denied"


def test_an_s3_object_gone_between_listing_and_reading_is_quarantined(s3_store, tmp_path):
    _, bucket = crawl_in_a_bucket(s3_store, tmp_path, "crawls")
    storage = storage_for(s3_store)
    source = warc_source(f"s3://{bucket}/crawls/")
    files = list_inputs(source, storage)
    s3_store.client.delete_object(Bucket=bucket, Key="crawls/b.warc")
    config = settings()
    manifest = run_ingest(source, config, storage, s3_store, ingest_spec(source, files, config), files,
                          progress=lambda _m: None)
    assert manifest["counts"]["quarantined"] == {"unreadable_file": 1} and manifest["counts"]["documents"] == 5
