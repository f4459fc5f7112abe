"""The ingest core on a corpus of bad inputs (tests/bad_inputs.py): the run completes, every bad record
is counted under its reason and quarantined, every good document is kept, and the resource caps
(max_record_mb, max_decompressed_mb, max_compression_ratio) bound memory and are configurable."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import ConfigError, IngestConfig, StorageConfig, load_config
from pipeline.storage import LocalStore
from tests.bad_inputs import (
    GIB, GZIP_HEADER, INVALID_UTF8_HTML, MB, UTF16_HTML, build_bad_corpus, zstd_bomb, zstd_frames,
    zstd_repeated_line_bomb,
)
from tests.raw_inputs import jsonl_bytes
from tests.tasks.test_ingest import Run, html_source, jsonl_source, settings, storage_for, upload_crawl, warc_source

REPO = Path(__file__).resolve().parents[2]
SAMPLE_BYTES = 256


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Built once (~1 s): three 50 MB single-line documents, a 16 GiB zstd bomb in 512 KiB."""
    return build_bad_corpus(tmp_path_factory.mktemp("bad") / "in", huge_mb=50, bomb_gib=16)


def source_for(corpus, name: str):
    if name == "web":
        return warc_source(corpus.web)
    if name == "docs":
        return jsonl_source(corpus.docs, name="docs", id_field="id", url_field="url")
    return html_source(corpus.site, name="site", base_url=corpus.site_base_url)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def assert_outcome(run: Run, expected) -> None:
    """Counts per reason exactly as expected, every good document present once, nothing else."""
    counts = run.counts
    assert counts["quarantined"] == dict(expected.quarantined)
    assert counts["skipped"] == dict(expected.skipped)
    docs = run.documents()
    urls = [row["url"] for row in docs]
    assert sorted(urls) == sorted(expected.urls)  # all of them, each once, and no other
    assert counts["documents"] == len(expected.urls)
    assert counts["records"] == counts["documents"] + sum(expected.quarantined.values())
    rows = run.quarantine()
    assert Counter((row["origin"].split("#")[0], row["reason"]) for row in rows) == expected.rejects
    for row in rows:
        assert row["detail"] and row["source"] == run.spec.artifact.split("/")[1]
        assert len(row["sample"] or b"") <= SAMPLE_BYTES


def test_the_corpus_is_deterministic_and_small_to_build(tmp_path):
    import zstandard

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first = build_bad_corpus(tmp_path / "a", huge_mb=0.1, bomb_gib=1, gzip_bomb_mb=4)
    build_bad_corpus(tmp_path / "b", huge_mb=0.1, bomb_gib=1, gzip_bomb_mb=4)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    # the bomb really decodes to zero bytes (its first 64 MiB checked) and is 32 KiB per GiB
    bomb = zstd_bomb(1)
    assert len(bomb) < 33 * 1024
    reader = zstandard.ZstdDecompressor().stream_reader(bomb)
    assert reader.read(64 * MB) == bytes(64 * MB)
    assert first.bomb_bytes == GIB


# ---------------------------------------------------------------------------------------------
# The whole corpus with the default caps, on both store backends


@pytest.mark.parametrize("name", ["web", "docs", "site"])
def test_bad_corpus_completes_with_every_record_counted(corpus, name, store, tmp_path):
    run = Run(source_for(corpus, name), store, settings(quarantine_sample_bytes=SAMPLE_BYTES), tmp_path)
    assert_outcome(run, corpus.expected[name])
    by_url = {row["url"]: row for row in run.documents()}
    if name == "web":
        # invalid UTF-8 is not ingest's business: the bytes are kept as they are, clean decodes them
        assert by_url["https://web.test/invalid-utf8"]["content"] == INVALID_UTF8_HTML
        assert by_url["https://web.test/invalid-utf8"]["charset"] == "utf-8"
        assert by_url["https://web.test/utf16"]["content"] == UTF16_HTML
    elif name == "docs":
        lone = by_url["https://docs.test/mixed.jsonl/3"]["content"]
        assert lone.decode() == "A lone surrogate \ufffd becomes U+FFFD."
        assert by_url["https://docs.test/bom.jsonl/1"]["origin"] == "bom.jsonl#line=1"
        assert by_url["https://docs.test/mixed.jsonl/5"]["content"] == b"The last line has no newline."
        rows = {(row["origin"], row["reason"]): row for row in run.quarantine()}
        huge = rows[("huge_line.jsonl#line=2", "oversize_record")]
        assert huge["size"] == 50 * MB + 1  # measured to its end, newline included
        bomb = next(row for (origin, reason), row in rows.items() if reason == "decompression_limit"
                    and origin.startswith("bomb.jsonl.zst"))
        # the default ratio cap (100x the file's 512 KiB) stops the 16 GiB bomb after ~50 MB
        assert bomb["size"] == 100 * corpus.bomb_path.stat().st_size
        assert bomb["origin"] == "bomb.jsonl.zst#line=3"  # after the two good lines of its first frame
    else:
        assert by_url[corpus.site_base_url + "latin1.html"]["content"] == INVALID_UTF8_HTML


def test_bad_corpus_from_an_s3_source(corpus, s3_store, tmp_path):
    """The JSONL part read from s3:// (each file downloaded to scratch): the same outcome."""
    bucket = "raw-" + uuid.uuid4().hex[:10]
    s3_store.client.create_bucket(Bucket=bucket)
    upload_crawl(s3_store, corpus.docs, bucket, "docs")
    source = jsonl_source(f"s3://{bucket}/docs/", name="docs", id_field="id", url_field="url")
    run = Run(source, s3_store, settings(quarantine_sample_bytes=SAMPLE_BYTES), tmp_path, storage=storage_for(s3_store))
    assert_outcome(run, corpus.expected["docs"])


def test_workers_do_not_change_the_outcome(corpus, tmp_path):
    one = Run(source_for(corpus, "docs"), LocalStore(tmp_path / "a", "p"), settings(unit_max_mb=1), tmp_path)
    two = Run(source_for(corpus, "docs"), LocalStore(tmp_path / "b", "p"), settings(workers=2, unit_max_mb=1),
              tmp_path)
    assert one.manifest["summary"]["units"] > 2
    assert two.counts == one.counts
    assert two.manifest["files"] == one.manifest["files"]


# ---------------------------------------------------------------------------------------------
# Caps: memory stays bounded, and the config decides the outcome


def bomb_folder(tmp_path: Path, bomb: bytes, good_lines: int = 2) -> Path:
    folder = tmp_path / "bomb"
    folder.mkdir()
    good = [{"text": f"good {i}", "url": f"https://b.test/{i}"} for i in range(good_lines)]
    (folder / "b.jsonl.zst").write_bytes(zstd_frames(jsonl_bytes(good)) + bomb)
    return folder


def test_zstd_bomb_is_cut_off_with_bounded_memory(tmp_path):
    """With the ratio cap off, max_decompressed_mb alone stops a 16 GiB bomb: 1 GiB is decoded,
    in bounded chunks; memory does not grow with the bytes decoded."""
    folder = bomb_folder(tmp_path, zstd_bomb(16))
    config = settings(max_decompressed_mb=1024, max_compression_ratio=1_000_000)
    reset_peak_rss()
    base = peak_rss_mb()
    run = Run(jsonl_source(folder), LocalStore(tmp_path / "s", "p"), config, tmp_path)
    growth = peak_rss_mb() - base
    assert run.counts["quarantined"] == {"decompression_limit": 1}
    assert run.counts["documents"] == 2
    [row] = run.quarantine()
    assert row["size"] == 1024 * MB and row["origin"] == "b.jsonl.zst#line=3"
    assert "max_decompressed_mb" in row["detail"]
    # the 10 MB record cap, decoder chunks (<= 9 MB) and the writers: far below the 1 GiB decoded
    assert growth < 120, f"peak RSS grew by {growth:.0f} MB"


def test_a_50_mb_line_is_measured_without_being_held(tmp_path, corpus):
    folder = tmp_path / "huge"
    folder.mkdir()
    (folder / "h.jsonl").symlink_to(corpus.docs / "huge_line.jsonl")
    reset_peak_rss()
    base = peak_rss_mb()
    run = Run(jsonl_source(folder), LocalStore(tmp_path / "s", "p"), settings(), tmp_path)
    growth = peak_rss_mb() - base
    assert run.counts["quarantined"] == {"oversize_record": 1} and run.counts["documents"] == 2
    assert growth < 40, f"peak RSS grew by {growth:.0f} MB"  # at most the 10 MB cap is held, not 50 MB


def test_the_caps_decide_what_the_bomb_becomes(tmp_path):
    """A 64 MiB zero-byte frame (2 KiB compressed): the default ratio cap stops it; with the ratio cap
    raised it is decoded to the end and is one oversize line; max_decompressed_mb stops it again."""
    folder = bomb_folder(tmp_path, zstd_bomb(1 / 16))
    size = (folder / "b.jsonl.zst").stat().st_size
    source = jsonl_source(folder)

    def outcome(**caps) -> tuple[dict, int]:
        run = Run(source, LocalStore(tmp_path / uuid.uuid4().hex, "p"), settings(**caps), tmp_path)
        assert run.counts["documents"] == 2
        [row] = run.quarantine()
        return run.counts["quarantined"], row["size"]

    assert outcome() == ({"decompression_limit": 1}, 100 * size)
    assert outcome(max_compression_ratio=50) == ({"decompression_limit": 1}, 50 * size)
    assert outcome(max_compression_ratio=100_000) == ({"oversize_record": 1}, 64 * MB)
    assert outcome(max_compression_ratio=100_000, max_decompressed_mb=2) == ({"decompression_limit": 1}, 2 * MB)
    # a record cap above the line's size: the line is read whole, and is not JSON
    assert outcome(max_compression_ratio=100_000, max_record_mb=65) == ({"invalid_json": 1}, 64 * MB)


def test_a_bomb_of_valid_records_keeps_exactly_the_lines_within_the_cap(tmp_path):
    """A repeated valid line (~1 GiB decoded from ~60 KiB): the lines wholly inside the cap are kept,
    the one it cuts and everything after is one decompression_limit record."""
    line = jsonl_bytes([{"text": "spam " * 16 + "and ham"}])
    assert len(line) == 100
    folder = tmp_path / "spam"
    folder.mkdir()
    (folder / "s.jsonl.zst").write_bytes(zstd_repeated_line_bomb(line, copies=GIB // 100))
    assert (folder / "s.jsonl.zst").stat().st_size < 100 * 1024
    for cap_mb in (1, 2):
        config = settings(max_decompressed_mb=cap_mb, max_compression_ratio=1_000_000)
        run = Run(jsonl_source(folder), LocalStore(tmp_path / f"s{cap_mb}", "p"), config, tmp_path)
        kept = cap_mb * MB // len(line)
        assert run.counts["documents"] == kept
        assert run.counts["quarantined"] == {"decompression_limit": 1}
        assert [row["origin"] for row in run.quarantine()] == [f"s.jsonl.zst#line={kept + 1}"]


def test_gzip_truncation_and_corruption_keep_what_came_before(tmp_path):
    """Corrupt data after a whole gzip member: the member's lines are kept (they used to be lost when
    the corrupt bytes arrived in the same read)."""
    import gzip

    folder = tmp_path / "g"
    folder.mkdir()
    good = jsonl_bytes([{"text": f"kept {i}"} for i in range(3)])
    (folder / "c.jsonl.gz").write_bytes(gzip.compress(good, mtime=0) + GZIP_HEADER + b"\xff\xff")
    run = Run(jsonl_source(folder), LocalStore(tmp_path / "s", "p"), settings(), tmp_path)
    assert [row["content"] for row in run.documents()] == [b"kept 0", b"kept 1", b"kept 2"]
    assert run.counts["quarantined"] == {"corrupt_file": 1}
    assert run.quarantine()[0]["origin"] == "c.jsonl.gz#line=4"


# ---------------------------------------------------------------------------------------------
# Config


def test_cap_defaults_in_pipeline_yaml_match_the_schema():
    config = load_config(REPO / "pipeline.yaml")
    defaults = IngestConfig()
    for key in ("max_record_mb", "max_decompressed_mb", "max_compression_ratio"):
        assert getattr(config.ingest, key) == getattr(defaults, key)
    assert defaults.max_decompressed_mb == 65536 and defaults.max_compression_ratio == 100


@pytest.mark.parametrize("override, message", [
    ("ingest.max_decompressed_mb=0", "ingest.max_decompressed_mb:"),
    ("ingest.max_decompressed_mb=big", "ingest.max_decompressed_mb:"),
    ("ingest.max_compression_ratio=0.5", "ingest.max_compression_ratio:"),
    ("ingest.max_record_mb=-1", "ingest.max_record_mb:"),
])
def test_caps_are_validated(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(REPO / "pipeline.yaml", [override])
    assert message in str(error.value)


def test_caps_are_part_of_the_version(corpus):
    from pipeline.sources import list_inputs
    from tasks.ingest import ingest_spec

    source = source_for(corpus, "docs")
    files = list_inputs(source, StorageConfig(backend="local"))
    versions = {ingest_spec(source, files, settings(**caps)).version
                for caps in ({}, {"max_decompressed_mb": 10}, {"max_compression_ratio": 10})}
    assert len(versions) == 3
