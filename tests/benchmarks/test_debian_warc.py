"""benchmarks/debian_warc.py: the URL each package's page gets, and the WARC's layout (warcinfo first,
responses ordered by the sha1 of the URL, uuid5 record ids, the same bytes every time)."""

from __future__ import annotations

import hashlib
import sys
import uuid
from pathlib import Path

from fastwarc.warc import ArchiveIterator, WarcRecordType

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import debian_warc  # noqa: E402


def url_of(package: str, rel: str) -> str:
    return next(url_of(rel) for name, _, _, url_of in debian_warc.PACKAGES if name == package)


def test_every_package_maps_its_pages_to_the_urls_of_the_readme():
    assert url_of("python3.11-doc", "library/os.html") == "https://docs.python.org/3.11/library/os.html"
    assert url_of("postgresql-doc-15", "sql-select.html") == "https://www.postgresql.org/docs/15/sql-select.html"
    assert url_of("debian-handbook", "de-DE/sect.apt.html") == \
        "https://debian-handbook.info/browse/de-DE/stable/sect.apt.html"
    assert url_of("installation-guide-amd64", "ro/ch07s01.html") == \
        "https://www.debian.org/releases/bookworm/amd64/ch07s01.ro.html"


def test_the_warc_is_deterministic_and_ordered_by_url_hash(tmp_path: Path):
    pages = []
    for number in range(5):
        page = tmp_path / f"p{number}.html"
        page.write_text(f"<html><body><p>page {number} é</p></body></html>", encoding="utf-8")
        pages.append((f"https://example.org/{number}.html", page))
    pages.sort(key=lambda item: hashlib.sha1(item[0].encode()).hexdigest())
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "w.warc.gz", tmp_path / "b" / "w.warc.gz"
    offsets = debian_warc.write_warc(first, pages, {"pkg": {"version": "1"}})
    debian_warc.write_warc(second, pages, {"pkg": {"version": "1"}})
    assert first.read_bytes() == second.read_bytes()
    assert len(offsets) == 5 and offsets == sorted(offsets) and offsets[0] > 0

    with open(first, "rb") as handle:
        records = [(r.record_type, dict(r.headers), r.http_headers and r.http_headers.get("Content-Type"),
                    r.reader.read()) for r in ArchiveIterator(handle, parse_http=True)]
    assert records[0][0] == WarcRecordType.warcinfo
    responses = records[1:]
    assert [headers["WARC-Target-URI"] for _, headers, _, _ in responses] == [url for url, _ in pages]
    for (kind, headers, content_type, body), (url, path) in zip(responses, pages):
        assert kind == WarcRecordType.response
        assert headers["WARC-Record-ID"] == f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>"
        assert headers["WARC-Identified-Payload-Type"] == "text/html"
        assert content_type == "text/html; charset=utf-8"
        assert body == path.read_bytes()


def test_a_cut_at_a_record_offset_gives_two_valid_warcs(tmp_path: Path):
    pages = []
    for number in range(4):
        page = tmp_path / f"p{number}.html"
        page.write_bytes(b"<p>x</p>" * (number + 1))
        pages.append((f"https://example.org/{number}", page))
    warc = tmp_path / "w.warc.gz"
    offsets = debian_warc.write_warc(warc, pages, {})
    data = warc.read_bytes()
    (tmp_path / "0.warc.gz").write_bytes(data[: offsets[2]])
    (tmp_path / "1.warc.gz").write_bytes(data[offsets[2]:])
    counts = []
    for part in ("0.warc.gz", "1.warc.gz"):
        with open(tmp_path / part, "rb") as handle:
            counts.append(sum(1 for _ in ArchiveIterator(handle, record_types=WarcRecordType.response)))
    assert counts == [2, 2]
