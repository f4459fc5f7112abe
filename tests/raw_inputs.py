"""Builders of raw ingest inputs for the tests: deterministic WARC files (warcio), JSONL (plain, gzip,
zstd) and HTML folders. Deterministic means byte-identical on every run: record ids are derived from
the file name and URL, dates are fixed, gzip headers carry no timestamp."""

from __future__ import annotations

import gzip
import io
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import zstandard
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

WARC_DATE = "2024-05-06T07:08:09Z"
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa75\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82"
)


@dataclass
class Page:
    url: str
    body: bytes
    content_type: str | None = "text/html; charset=utf-8"  # None: no Content-Type header
    status: str = "200 OK"
    date: str = WARC_DATE
    extra_headers: list[tuple[str, str]] = field(default_factory=list)


def html_page(n: int, words: int = 40, lang_word: str = "lorem") -> bytes:
    text = " ".join(f"{lang_word}{i % 13}" for i in range(words))
    return f"<html><head><title>Page {n}</title></head><body><p>{n}: {text}</p></body></html>".encode()


def record_id(path: Path, url: str, kind: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{path.name}|{url}|{kind}')}>"


def write_warc(path: Path, pages: list[Page], *, gzip: bool = True, with_requests: bool = True) -> list[int]:
    """Write a WARC of `response` records (each preceded by its `request` record if with_requests).
    Returns the byte offset at which each response record starts."""
    offsets = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=gzip)
        for page in pages:
            if with_requests:
                request = writer.create_warc_record(
                    page.url, "request", payload=io.BytesIO(b""),
                    http_headers=StatusAndHeaders("GET / HTTP/1.1", [("Host", "example.com")], is_http_request=True),
                    warc_headers_dict={"WARC-Date": page.date, "WARC-Record-ID": record_id(path, page.url, "request")},
                )
                writer.write_record(request)
            offsets.append(handle.tell())
            headers = [("Content-Type", page.content_type)] if page.content_type is not None else []
            headers += [("Content-Length", str(len(page.body))), *page.extra_headers]
            response = writer.create_warc_record(
                page.url, "response", payload=io.BytesIO(page.body),
                http_headers=StatusAndHeaders(page.status, headers, protocol="HTTP/1.1"),
                warc_headers_dict={"WARC-Date": page.date, "WARC-Record-ID": record_id(path, page.url, "response")},
            )
            writer.write_record(response)
    return offsets


def jsonl_bytes(rows: list[dict | bytes | str]) -> bytes:
    out = bytearray()
    for row in rows:
        if isinstance(row, dict):
            out += json.dumps(row, ensure_ascii=False).encode("utf-8")
        elif isinstance(row, str):
            out += row.encode("utf-8")
        else:
            out += row
        out += b"\n"
    return bytes(out)


def write_jsonl(path: Path, rows: list[dict | bytes | str]) -> Path:
    """Plain, .gz or .zst, chosen by the file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = jsonl_bytes(rows)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def paragraphs(lang: str) -> list[str]:
    """Real paragraphs of a language (Debian installation manual) from the unit tests' language-ID set."""
    path = Path(__file__).parent / "data" / "langid_paragraphs_small.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [row["text"] for row in rows if row["lang"] == lang]


def english_paragraphs() -> list[str]:
    return paragraphs("en")
