"""Builders for the flow tests: small real WARC/JSONL inputs and configs pointing at a test bucket."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import yaml
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from tests.conftest import SAMPLE

WORDS = ("the quick brown fox jumps over the lazy dog while a debian installer partitions disks and "
         "configures the network before the base system is installed on the target machine").split()


def write_warc(path: Path, pages: int, seed: int = 0, words_per_page: int = 400) -> Path:
    """A gzip WARC of request+response pairs with real HTTP headers (deterministic per seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        for page in range(pages):
            url = f"https://example.org/s{seed}/page{page}.html"
            text = " ".join(WORDS[(page * 7 + seed + i) % len(WORDS)] for i in range(words_per_page))
            body = f"<html><head><title>Page {page}</title></head><body><p>{text}</p></body></html>".encode()
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                                  ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
            fixed = {"WARC-Date": "2024-05-01T12:00:00Z",
                     "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>"}
            request = writer.create_warc_record(url, "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n"),
                                                warc_headers_dict=dict(fixed))
            response = writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers,
                                                 warc_headers_dict=dict(fixed))
            writer.write_record(request)
            writer.write_record(response)
    return path


def write_jsonl(path: Path, lines: list[dict | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((json.dumps(line) if isinstance(line, dict) else line) + "\n" for line in lines))
    return path


def write_config(path: Path, *, endpoint: str | None, bucket: str, sources: list[dict], prefix: str = "t",
                 **sections) -> Path:
    storage = {"backend": "s3", "endpoint_url": endpoint, "bucket": bucket, "prefix": prefix}
    config = {"storage": storage, "sources": sources, "ingest": {"workers": 1, **sections.pop("ingest", {})}}
    config.update(sections)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def sample_sources() -> list[dict]:
    """The bundled sample's sources, as pipeline.yaml names them, with absolute locations."""
    config = yaml.safe_load((SAMPLE.parents[1] / "pipeline.yaml").read_text())
    sources = []
    for source in config["sources"]:
        source = dict(source)
        source["location"] = str((SAMPLE.parents[1] / source["location"]).resolve())
        sources.append(source)
    return sources
