"""A bad-input corpus for the ingest stage, built deterministically in a temp dir.

`build_bad_corpus(root)` writes three sources (`web/` WARC, `docs/` JSONL, `site/` HTML) in which broken
inputs are mixed with good documents, and returns, next to the paths, what each source must become:
the URLs of its good documents and the exact count of every quarantine and skip reason. Every good
document has a unique URL (the WARC target URI, the JSONL `url` field, the HTML source's base_url plus
the file's path), so "nothing else is lost" is a set comparison.

What is in it: a truncated .warc.gz, a WARC whose HTML is invalid UTF-8, binary payloads (PNG, ZIP,
PDF, gzip bytes) declared as text/html and as application/octet-stream, wrong and missing content
types, 50 MB single-line documents (a JSONL line, an HTML file, a WARC response), empty files of every
kind, files that are not what their name says, malformed JSONL lines (invalid JSON, not an object, no
text field, text not a string, invalid UTF-8, empty text), truncated and corrupt .jsonl.zst/.jsonl.gz,
and decompression bombs: a .jsonl.zst that expands to `bomb_gib` GiB of zero bytes (written block by
block, never decompressed here: the file is 32 KiB per GiB) and a small gzip bomb.

Also `zstd_bomb(gib, byte)` and `zstd_repeated_line_bomb(line, copies)` for tests of their own.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from corpus.raw_formats import without_compression_suffix
from tests.raw_inputs import PNG, Page, html_page, jsonl_bytes, write_warc

MB = 1024 * 1024
GIB = 1024 * MB

# ---------------------------------------------------------------------------------------------
# Payloads


def zip_bytes() -> bytes:
    """A small real ZIP archive (fixed timestamps: byte-identical on every run)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("index.html", date_time=(2024, 1, 2, 3, 4, 6))
        archive.writestr(info, html_page(1) * 5)
    return out.getvalue()


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n%%EOF\n"
INVALID_UTF8_HTML = "<html><head><title>Café</title></head><body><p>Crème brûlée à la carte, " \
                    "déjà vu, naïve façade.</p></body></html>".encode("latin-1")  # declared utf-8 below
UTF16_HTML = "\ufeff<html><body><p>Ünïcödé page in UTF-16 with a byte-order mark.</p></body></html>".encode(
    "utf-16-le")
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # no name, mtime 0


def huge_line(size: int, prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    """`size` bytes of words without a single newline."""
    body = size - len(prefix) - len(suffix)
    unit = b"lorem ipsum dolor sit amet "
    return prefix + (unit * (body // len(unit) + 1))[:body] + suffix


# ---------------------------------------------------------------------------------------------
# Compressed streams


def zstd_bomb(gib: float, byte: bytes = b"\x00") -> bytes:
    """One zstd frame that decodes to `gib` GiB of `byte`, written directly as RLE blocks (4 bytes per
    128 KiB: a 32,768x ratio, zstd's maximum), so it costs nothing to build. No content size in the
    header, so a decoder cannot refuse it up front: only a cap on decoded bytes stops it."""
    block = 128 * 1024
    blocks = max(1, int(gib * GIB) // block)
    header = b"\x28\xb5\x2f\xfd" + bytes([0x00, 7 << 3])  # magic; no checksum/size/dict; window 128 KiB
    rle = (block << 3) | (1 << 1)  # Block_Size | Block_Type=RLE | Last_Block=0
    body = struct.pack("<I", rle)[:3] + byte
    last = struct.pack("<I", rle | 1)[:3] + byte
    return header + body * (blocks - 1) + last


def zstd_repeated_line_bomb(line: bytes, copies: int, frame_mb: int = 16) -> bytes:
    """Frames of `line` repeated, concatenated: decodes to len(line) * copies bytes of valid-looking
    records. One frame of ~frame_mb MB is compressed once and repeated, so building stays cheap."""
    per_frame = max(1, frame_mb * MB // len(line))
    frame = zstandard.ZstdCompressor(level=3).compress(line * per_frame)
    whole, rest = divmod(copies, per_frame)
    tail = zstandard.ZstdCompressor(level=3).compress(line * rest) if rest else b""
    return frame * whole + tail


def gzip_bomb(mb: int) -> bytes:
    """A gzip member that decodes to `mb` MiB of zero bytes (~1,000x: deflate's limit), built from one
    compressed MiB repeated (each full-flushed block stands alone)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = deflate.compress(bytes(MB)) + deflate.flush(zlib.Z_FULL_FLUSH)
    end = deflate.flush(zlib.Z_FINISH)
    crc = 0
    zeros = bytes(MB)
    for _ in range(mb):
        crc = zlib.crc32(zeros, crc)
    return GZIP_HEADER + chunk * mb + end + struct.pack("<II", crc, (mb * MB) & 0xFFFFFFFF)


def zstd_frames(*parts: bytes) -> bytes:
    return b"".join(zstandard.ZstdCompressor(level=3).compress(part) for part in parts)


def gzip_members(*parts: bytes) -> bytes:
    return b"".join(gzip.compress(part, mtime=0) for part in parts)


# ---------------------------------------------------------------------------------------------
# The corpus


@dataclass
class Expected:
    """What one source must become."""

    urls: set[str] = field(default_factory=set)  # of the good documents: all of them, nothing else
    quarantined: Counter = field(default_factory=Counter)  # reason -> count
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    rejects: Counter = field(default_factory=Counter)  # (file relpath, reason) -> count

    def reject(self, relpath: str, reason: str, count: int = 1) -> None:
        self.quarantined[reason] += count
        self.rejects[(relpath, reason)] += count


@dataclass
class BadCorpus:
    root: Path
    web: Path
    docs: Path
    site: Path
    site_base_url: str
    expected: dict[str, Expected]  # by source name: web, docs, site
    bomb_path: Path  # the zstd bomb inside docs/
    bomb_bytes: int  # what it would decompress to


def build_bad_corpus(root: Path, *, huge_mb: float = 50, bomb_gib: float = 16, gzip_bomb_mb: int = 256) -> BadCorpus:
    root.mkdir(parents=True, exist_ok=True)
    huge = int(huge_mb * MB)
    web, web_expected = _build_web(root / "web", huge)
    docs, docs_expected, bomb_path, bomb_bytes = _build_docs(root / "docs", huge, bomb_gib, gzip_bomb_mb)
    base_url = "https://site.test/"
    site, site_expected = _build_site(root / "site", huge, base_url)
    return BadCorpus(root, web, docs, site, base_url,
                     {"web": web_expected, "docs": docs_expected, "site": site_expected}, bomb_path, bomb_bytes)


def _build_web(folder: Path, huge: int) -> tuple[Path, Expected]:
    folder.mkdir(parents=True, exist_ok=True)
    expected = Expected()

    def good(name: str, n: int) -> Page:
        page = Page(f"https://web.test/{name}", html_page(n))
        expected.urls.add(page.url)
        return page

    def bad(relpath: str, name: str, body: bytes, content_type: str | None, reason: str, **extra) -> Page:
        expected.reject(relpath, reason)
        return Page(f"https://web.test/bad/{name}", body, content_type, **extra)

    # mixed.warc.gz: good pages between binary payloads and wrong content types (request records too)
    m = "mixed.warc.gz"
    mixed = [
        good("m1", 1),
        bad(m, "png-as-html", PNG, "text/html", "binary_payload"),
        bad(m, "zip-as-html", zip_bytes(), "text/html; charset=utf-8", "binary_payload"),
        bad(m, "pdf-as-html", PDF, "text/html", "binary_payload"),
        bad(m, "gzip-as-html", gzip.compress(html_page(5), mtime=0), "text/html", "binary_payload"),
        bad(m, "nul-bytes", b"\x00\x01\x02\x03" * 64, "text/html", "binary_payload"),
        good("m2", 2),
        bad(m, "png-octet-stream", PNG, "application/octet-stream", "non_html_payload"),
        bad(m, "zip-octet-stream", zip_bytes(), "application/octet-stream", "non_html_payload"),
        bad(m, "html-as-text-plain", html_page(3), "text/plain", "non_html_payload"),
        bad(m, "json", b'{"a": 1}', "application/json", "non_html_payload"),
        bad(m, "image", PNG, "image/png", "non_html_payload"),
        bad(m, "no-content-type", html_page(4), None, "non_html_payload"),
        bad(m, "empty-body", b"", "text/html", "empty_payload"),
        bad(m, "whitespace-body", b" \r\n\t ", "text/html", "empty_payload"),
        Page("https://web.test/bad/not-found", b"<html>gone</html>", status="404 Not Found"),
        Page("https://web.test/bad/redirect", b"", status="302 Found", extra_headers=[("Location", "/m3")]),
        good("m3", 6),
    ]
    expected.skipped.update({"http_status_4xx": 1, "http_status_3xx": 1, "warc_request_record": len(mixed)})
    write_warc(folder / m, mixed)

    # invalid UTF-8 HTML (latin-1 bytes declared utf-8) is still a document: ingest keeps raw bytes and
    # clean decodes them (replacing what does not decode); same for UTF-16 with a BOM
    latin = Page("https://web.test/invalid-utf8", INVALID_UTF8_HTML, "text/html; charset=utf-8")
    utf16 = Page("https://web.test/utf16", UTF16_HTML, "text/html; charset=utf-16")
    write_warc(folder / "invalid_utf8.warc", [latin, utf16], gzip=False, with_requests=False)
    expected.urls |= {latin.url, utf16.url}

    # a 50 MB single-line HTML response between good ones
    big = [good("h1", 11), bad("huge.warc.gz", "huge", huge_line(huge, b"<html><body><p>", b"</p></body></html>"),
                               "text/html", "oversize_record"), good("h2", 12)]
    write_warc(folder / "huge.warc.gz", big, with_requests=False)

    # truncated.warc.gz: cut in the middle of its last record (3 whole records before it are kept)
    pages = [good(f"t{i}", 20 + i) for i in range(3)] + [Page("https://web.test/bad/cut", html_page(23, words=400))]
    offsets = write_warc(folder / "truncated.warc.gz", pages, with_requests=False)
    data = (folder / "truncated.warc.gz").read_bytes()
    (folder / "truncated.warc.gz").write_bytes(data[: offsets[-1] + (len(data) - offsets[-1]) // 2])
    expected.reject("truncated.warc.gz", "truncated_file")

    # empty and mislabelled files
    (folder / "empty.warc.gz").write_bytes(b"")
    expected.reject("empty.warc.gz", "empty_file")
    (folder / "empty.warc").write_bytes(b"")
    expected.reject("empty.warc", "empty_file")
    (folder / "empty_member.warc.gz").write_bytes(gzip.compress(b"", mtime=0))
    expected.reject("empty_member.warc.gz", "not_a_warc")
    (folder / "page.warc.gz").write_bytes(gzip.compress(html_page(30), mtime=0))  # HTML, not WARC
    expected.reject("page.warc.gz", "not_a_warc")
    (folder / "page.warc").write_bytes(html_page(31))
    expected.reject("page.warc", "not_a_warc")
    (folder / "image.warc").write_bytes(PNG)
    expected.reject("image.warc", "not_a_warc")
    return folder, expected


def _build_docs(folder: Path, huge: int, bomb_gib: float, gzip_bomb_mb: int) -> tuple[Path, Expected, Path, int]:
    folder.mkdir(parents=True, exist_ok=True)
    expected = Expected()

    def good(relpath: str, n: int, text: str | None = None) -> dict:
        url = f"https://docs.test/{relpath}/{n}"
        expected.urls.add(url)
        return {"id": f"{relpath}:{n}", "url": url, "text": text or f"Good document {n} of {relpath}."}

    def lines(rows: list) -> bytes:
        return jsonl_bytes(rows)

    m = "mixed.jsonl"
    reasons = Counter()
    rows: list = [good(m, 1)]
    for raw, reason in [
        (b'{"id": "x1", "text": "unterminated', "invalid_json"),
        (b"this is not json", "invalid_json"),
        (b'{"text": "trailing"} garbage', "invalid_json"),
        (b'{"text": "raw NUL \x00 inside a string"}', "invalid_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b'"just a string"', "not_an_object"),
        (b"42", "not_an_object"),
        (b"null", "not_an_object"),
        (b'{"id": "x2", "body": "no text field"}', "missing_text_field"),
        (b'{"text": 42}', "text_not_a_string"),
        (b'{"text": ["a", "list"]}', "text_not_a_string"),
        (b'{"text": null}', "text_not_a_string"),
        (b'{"text": {"nested": "object"}}', "text_not_a_string"),
        (b'{"text": "caf\xe9 in latin-1"}', "invalid_utf8"),
        (b"\x89PNG\r\x1a\x00\x00\x00\rIHDR", "invalid_utf8"),
        (b'{"text": ""}', "empty_text"),
        (b'{"text": " \\n\\t "}', "empty_text"),
    ]:
        rows.append(raw)
        reasons[reason] += 1
    rows += [b"", b"   ", good(m, 2, "Ünïcödé ✓ and an escaped \x00 NUL are fine."),
             json.dumps(good(m, 3, "A lone surrogate \ud800 becomes U+FFFD.")).encode()]  # ASCII escapes
    data = lines(rows) + json.dumps(good(m, 4, "CRLF line end")).encode() + b"\r\n"
    data += json.dumps(good(m, 5, "The last line has no newline.")).encode()
    (folder / m).write_bytes(data)
    for reason, count in reasons.items():
        expected.reject(m, reason, count)
    expected.skipped["blank_line"] += 2

    # a UTF-8 byte-order mark before the first line
    (folder / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + lines([good("bom.jsonl", 1), good("bom.jsonl", 2)]))

    # a 50 MB single-line document between good ones
    big = json.dumps({"id": "huge", "url": "https://docs.test/huge", "text": ""}).encode()[:-2]
    (folder / "huge_line.jsonl").write_bytes(
        lines([good("huge_line.jsonl", 1), huge_line(huge, big, b'"}'), good("huge_line.jsonl", 2)]))
    expected.reject("huge_line.jsonl", "oversize_record")

    # empty files, and compressed files that decode to nothing
    for name, content in [("empty.jsonl", b""), ("empty.jsonl.gz", b""), ("empty.jsonl.zst", b""),
                          ("empty_frame.jsonl.zst", zstd_frames(b"")), ("empty_member.jsonl.gz", gzip_members(b""))]:
        (folder / name).write_bytes(content)
        expected.reject(name, "empty_file")

    # truncated: the first frame/member is whole (its lines are kept), the second is cut
    t = "truncated.jsonl.zst"
    whole = lines([good(t, i) for i in range(1, 4)])
    cut = zstd_frames(lines([{"text": "lost in the cut frame " * 20, "url": "https://docs.test/lost"}] * 5))
    (folder / t).write_bytes(zstd_frames(whole) + cut[: len(cut) // 2])
    expected.reject(t, "truncated_file")
    t = "truncated.jsonl.gz"
    whole = lines([good(t, i) for i in range(1, 4)])
    cut = gzip_members(lines([{"text": "lost in the cut member " * 20, "url": "https://docs.test/lost"}]))
    (folder / t).write_bytes(gzip_members(whole) + cut[: len(cut) // 2])
    expected.reject(t, "truncated_file")

    # corrupt: not zstd at all; a gzip member whose deflate data is garbage after a good member
    (folder / "plain.jsonl.zst").write_bytes(lines([{"text": "plain text named .zst"}]))
    expected.reject("plain.jsonl.zst", "corrupt_file")
    c = "corrupt.jsonl.gz"
    (folder / c).write_bytes(gzip_members(lines([good(c, 1)])) + GZIP_HEADER + b"\xff" * 64)
    expected.reject(c, "corrupt_file")

    # not JSONL at all: binary content behind a JSONL name
    (folder / "image.jsonl").write_bytes(PNG)
    expected.reject("image.jsonl", "not_jsonl")
    (folder / "archive.jsonl.gz").write_bytes(gzip_members(zip_bytes()))
    expected.reject("archive.jsonl.gz", "not_jsonl")

    # decompression bombs after good records: a zstd frame of zero bytes, a gzip member of zero bytes
    b = "bomb.jsonl.zst"
    bomb_path = folder / b
    bomb_path.write_bytes(zstd_frames(lines([good(b, 1), good(b, 2)])) + zstd_bomb(bomb_gib))
    expected.reject(b, "decompression_limit")
    g = "bomb.jsonl.gz"
    (folder / g).write_bytes(gzip_members(lines([good(g, 1)])) + gzip_bomb(gzip_bomb_mb))
    expected.reject(g, "decompression_limit")
    return folder, expected, bomb_path, int(bomb_gib * GIB) // (128 * 1024) * 128 * 1024


def _build_site(folder: Path, huge: int, base_url: str) -> tuple[Path, Expected]:
    folder.mkdir(parents=True, exist_ok=True)
    expected = Expected()
    files = {
        "good1.html": (html_page(1), None),
        "sub/good2.htm": (html_page(2), None),
        "latin1.html": (INVALID_UTF8_HTML, None),  # invalid UTF-8: kept, clean decodes it
        "utf16.html": (UTF16_HTML, None),  # NUL bytes, but a BOM says it is text
        "empty.html": (b"", "empty_file"),
        "whitespace.html": (b"\n  \t\r\n", "empty_payload"),
        "png.html": (PNG, "binary_payload"),
        "zip.html": (zip_bytes(), "binary_payload"),
        "pdf.html": (PDF, "binary_payload"),
        "gzipped.html": (gzip.compress(html_page(3), mtime=0), None),  # saved gzip-encoded: decoded, kept
        "huge.html": (huge_line(huge, b"<html><body><p>", b"</p></body></html>"), "oversize_record"),
        "page.html.gz": (gzip.compress(html_page(4), mtime=0), None),  # its URL ends in page.html
        "sub/page.htm.zst": (zstandard.ZstdCompressor().compress(html_page(5)), None),
        "bomb.html.gz": (gzip_bomb(16), "decompression_limit"),
        "cut.html.gz": (gzip.compress(html_page(6) * 50, mtime=0)[:-40], "truncated_file"),
        "corrupt.html.zst": (b"\x28\xb5\x2f\xfd" + b"\xff" * 64, "corrupt_file"),
        "empty.html.gz": (gzip.compress(b"", mtime=0), "empty_payload"),
    }
    for relpath, (content, reason) in files.items():
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if reason is None:
            expected.urls.add(base_url + without_compression_suffix(relpath))
        else:
            expected.reject(relpath, reason)
    return folder, expected
