"""HTML cleaning stage: ingest shards -> text documents (title, text), one artifact per source.

Per document: decode the raw bytes (a BOM, then valid UTF-8 whatever the label says, then the HTTP
header's charset, then the page's <meta> charset, then detection), extract the main content
(resiliparse by default; trafilatura per source where precision matters), normalise the text
(NFC, control characters removed, whitespace and blank lines collapsed, boilerplate lines removed).
Non-HTML documents (plain text, JSONL text fields) only go through the normaliser. Documents that
come out empty or shorter than `min_chars` go to `removed/` with their reason.

The core (`decode_html`, `extract`, `normalize_text`, `clean_shard`, `run_clean`) knows nothing of
Prefect; `clean_task` at the end is the thin task the flow calls.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from pipeline.artifacts import ArtifactWriter, StageSpec
from pipeline.config import CleanConfig
from pipeline.shards import CLEAN_SCHEMA, QUARANTINE_SCHEMA, ShardWriter
from pipeline.storage import ObjectStore
from pipeline.units import ShardUnit, UnitOutput, read_shard, resolve_writer_thread, run_shard_stage

from .stage import RunContext, execute_stage, stage_task, upstream_manifest

STAGE = "clean"
CODE_VERSION = "1"
MB = 1024 * 1024
TEXT_TYPES = ("text/plain",)

# ---------------------------------------------------------------------------------------------
# Decoding

_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_:.\-]+)""", re.IGNORECASE)
# WHATWG: these labels mean windows-1252 in HTML, whose extra characters real pages do use.
_WHATWG_ALIASES = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "ascii": "cp1252",
                   "us-ascii": "cp1252", "iso8859-1": "cp1252", "l1": "cp1252"}


@lru_cache(maxsize=256)
def _codec(label: str | None) -> str | None:
    """A Python codec name for a charset label, or None if unknown."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    label = _WHATWG_ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def _strict(content: bytes, codec: str | None) -> str | None:
    if codec is None:
        return None
    try:
        return content.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def meta_charset(content: bytes) -> str | None:
    match = _META_CHARSET.search(content[:4096])
    return match.group(1).decode("ascii", "replace") if match else None


def decode_html(content: bytes, declared: str | None) -> tuple[str, str, str]:
    """(text, charset used, how it was chosen: bom|utf-8|header|meta|detected). Never raises.

    Bytes that are valid UTF-8 (with non-ASCII in them) are read as UTF-8 even when a header or meta
    tag says otherwise: legacy single-byte text is almost never valid UTF-8 by accident, while UTF-8
    pages served with a stale latin-1 label are common.
    """
    for bom, codec in _BOMS:
        if content.startswith(bom):
            return content.decode(codec, errors="replace"), codec, "bom"
    if content.isascii():
        return content.decode("ascii"), "ascii", "ascii"
    if (text := _strict(content, "utf-8")) is not None:
        return text, "utf-8", "utf-8"
    header = _codec(declared)
    if header and header != "utf-8" and (text := _strict(content, header)) is not None:
        return text, header, "header"
    meta = _codec(meta_charset(content))
    if meta and meta != "utf-8" and (text := _strict(content, meta)) is not None:
        return text, meta, "meta"
    from resiliparse.parse.encoding import detect_encoding

    detected = _codec(detect_encoding(content)) or "cp1252"
    return content.decode(detected, errors="replace"), detected, "detected"


# ---------------------------------------------------------------------------------------------
# Extraction and normalisation


def extract(html: str, extractor: str) -> tuple[str | None, str]:
    """(title, main-content text) of an HTML page; text is '' when nothing is found."""
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse(html)
    title = (tree.title or "").strip() or None
    if extractor == "trafilatura":
        import trafilatura

        text = trafilatura.extract(html, include_comments=False, include_tables=True, fast=True) or ""
    else:
        from resiliparse.extract.html2text import extract_plain_text

        text = extract_plain_text(tree, main_content=True, preserve_formatting=True, list_bullets=True,
                                  alt_texts=False, links=False, form_fields=False, noscript=False)
    return title, text


_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")


def compile_patterns(patterns: list[str]) -> re.Pattern | None:
    """Boilerplate patterns as one regex matched against whole lines, case-insensitively."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


def normalize_text(text: str, boilerplate: re.Pattern | None = None) -> str:
    """NFC, no control characters, one space between words, at most one blank line between
    paragraphs, and no line that is boilerplate as a whole."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    lines: list[str] = []
    for line in text.split("\n"):
        # every Unicode space run -> one space (2x faster than a regex); most lines need nothing: every
        # space but " " is non-printable, so a printable line without "  " or edge spaces is left as is
        if not line.isprintable() or "  " in line or line[:1] == " " or line[-1:] == " ":
            line = " ".join(line.split())
        if line and boilerplate is not None and boilerplate.fullmatch(line):
            continue
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The stage core


@dataclass(frozen=True)
class CleanJob:
    source: str
    settings: CleanConfig
    extractor: str
    store: ObjectStore
    upstream: dict  # the ingest manifest
    prefix: str


def new_counts() -> dict[str, Any]:
    return {"documents_in": 0, "documents": 0, "text_chars": 0, "removed": {}, "charset": {},
            "charset_relabelled": 0}


def clean_shard(job: CleanJob, unit: ShardUnit) -> dict:
    """Clean one ingest shard into text shards (and removed/), upload them; return the unit record."""
    settings = job.settings
    boilerplate = compile_patterns(settings.boilerplate_patterns)
    counts = new_counts()
    with UnitOutput(job.store, job.prefix, unit.key, settings, STAGE) as out:
        documents = out.writer("data", CLEAN_SCHEMA, "documents", "text",
                               background=resolve_writer_thread("auto", settings.workers))
        removed = out.writer("removed", QUARANTINE_SCHEMA, "removed", "sample")
        columns = ["id", "source", "url", "fetch_date", "content_type", "charset", "content"]
        for batch in read_shard(job.store, job.upstream, unit.entry, out.scratch, columns):
            for row in batch.to_pylist():
                counts["documents_in"] += 1
                _clean_document(row, job.extractor, settings, boilerplate, documents, removed, counts)
        files = out.close()
    return {"unit": unit.key, "files": files, "counts": counts}


def _clean_document(row: dict, extractor: str, settings: CleanConfig, boilerplate: re.Pattern | None,
                    documents: ShardWriter, removed: ShardWriter, counts: dict) -> None:
    content: bytes = row["content"]
    if row["content_type"] in TEXT_TYPES:
        raw, charset, how = content.decode("utf-8", errors="replace"), "utf-8", "text"
        title, text = None, raw
    else:
        raw, charset, how = decode_html(content, row["charset"])
        if row["charset"] and _codec(row["charset"]) not in (None, charset) and how in ("utf-8", "meta", "detected"):
            counts["charset_relabelled"] += 1
        try:
            title, text = extract(raw, extractor)
        except Exception as exc:  # one page the parser chokes on must not end the shard
            _remove(removed, row, "extraction_failed", f"{type(exc).__name__}: {exc}", content, settings, counts)
            return
    counts["charset"][how] = counts["charset"].get(how, 0) + 1
    text = normalize_text(text, boilerplate)
    if title:
        title = normalize_text(title).replace("\n", " ")
    if not text:
        _remove(removed, row, "empty_after_extraction", f"{extractor} found no text", content, settings, counts)
        return
    if len(text) < settings.min_chars:
        _remove(removed, row, "too_short", f"{len(text)} characters < min_chars {settings.min_chars}",
                text.encode(), settings, counts)
        return
    counts["documents"] += 1
    counts["text_chars"] += len(text)
    # CLEAN_SCHEMA order: id, source, url, fetch_date, title, text, charset
    documents.add((row["id"], row["source"], row["url"], row["fetch_date"], title, text, charset))


def _remove(removed: ShardWriter, row: dict, reason: str, detail: str, sample: bytes, settings: CleanConfig,
            counts: dict) -> None:
    counts["removed"][reason] = counts["removed"].get(reason, 0) + 1
    removed.add((row["source"], row["id"], reason, detail, len(row["content"]), sample[: settings.removed_sample_bytes]))


def clean_spec(source: str, settings: CleanConfig, upstream: dict, rebuild: str | None = None) -> StageSpec:
    config = settings.versioned()
    config.pop("extractor_by_source", None)
    config["extractor"] = settings.extractor_for(source)
    return StageSpec(stage=STAGE, artifact=f"{STAGE}/{source}", code_version=CODE_VERSION, config=config,
                     inputs={upstream["artifact"]: upstream["version"]}, rebuild=rebuild)


def run_clean(source: str, settings: CleanConfig, store: ObjectStore, spec: StageSpec, upstream: dict,
              progress: Callable[[str], None] = print) -> dict:
    """Clean every document shard of the ingest artifact `upstream` and commit; returns the manifest."""
    writer = ArtifactWriter(store, spec)
    job = CleanJob(source, settings, settings.extractor_for(source), store, upstream, spec.prefix)
    return run_shard_stage(writer, upstream, clean_shard, job, settings, new_counts(), name=f"clean[{source}]",
                           progress=progress, extractor=job.extractor)


@stage_task("clean", "clean[{source_name}]")
def clean_task(ctx: RunContext, source_name: str, ingest_result: dict) -> Any:
    """Resolve the version from the ingest artifact and the config, then skip it (Cached) or clean."""
    upstream = upstream_manifest(ctx, ingest_result)
    settings = ctx.config.clean
    spec = clean_spec(source_name, settings, upstream, rebuild=ctx.rebuild_token(f"{STAGE}/{source_name}"))
    return execute_stage(ctx, spec, lambda emit: run_clean(source_name, settings, ctx.store, spec, upstream, emit))
