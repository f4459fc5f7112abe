"""Build the sample chat set data/sample/chat/debian_chat.jsonl from the sample corpus, for instruction
fine-tuning (IFT).

Real-looking conversations about real pages: for every English page of the sample (the WARC responses
and the JSONL documents whose URL is in an English locale) with a title and a first paragraph of at
least 20 words, two conversations — what the page is about (answer: its first paragraph, up to three
sentences), and a question naming the page's topic with a follow-up turn. Each line is a chat JSONL
object {"id", "source_url", "messages": [...]} that corpus.chat.parse_chat_line accepts. Users
bring their own chat sets in the same format.

    python scripts/build_chat_sample.py        # rewrites the file (byte-identical for the same sample)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SYSTEM = "You are a helpful assistant who answers questions about the Debian documentation concisely."
ENGLISH = re.compile(r"/(en|en-US)/")
SENTENCE = re.compile(r"(?<=[.!?])\s+")


def warc_pages(sample: Path) -> list[tuple[str, str]]:
    """(url, extracted text) of the English HTML responses of the sample WARCs."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    from tasks.clean import compile_patterns, decode_html, extract, normalize_text
    from pipeline.config import CleanConfig

    boilerplate = compile_patterns(CleanConfig().boilerplate_patterns)
    pages = []
    for path in sorted((sample / "web").glob("*.warc.gz")):
        with open(path, "rb") as handle:
            for record in ArchiveIterator(handle, record_types=WarcRecordType.response, parse_http=True):
                url = record.headers.get("WARC-Target-URI", "")
                if not ENGLISH.search(url) or "html" not in (record.http_content_type or ""):
                    continue
                html, _, _ = decode_html(record.reader.read(), None)
                _, text = extract(html, "resiliparse")
                pages.append((url, normalize_text(text or "", boilerplate)))
    return pages


def jsonl_pages(sample: Path) -> list[tuple[str, str]]:
    data = zstandard.ZstdDecompressor().stream_reader((sample / "jsonl" / "sample-text-00000.jsonl.zst").open("rb"))
    rows = [json.loads(line) for line in data.read().decode("utf-8").splitlines() if line.strip()]
    return [(row["url"], row["text"]) for row in rows if ENGLISH.search(row.get("url") or "")]


def title_and_paragraph(text: str) -> tuple[str, str] | None:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) < 2:
        return None
    title = re.sub(r"^[\d.]+\s+", "", lines[0]).strip()  # "6.2. Components" -> "Components"
    for line in lines[1:]:
        if len(line.split()) >= 20 and re.sub(r"^[\d.]+\s+", "", line) != title:
            return title, " ".join(SENTENCE.split(line)[:3])
    return None


def conversations(url: str, text: str, number: int) -> list[dict]:
    found = title_and_paragraph(text)
    if found is None:
        return []
    title, paragraph = found
    first_sentence = SENTENCE.split(paragraph)[0]
    return [
        {"id": f"chat-{number:04d}-a", "source_url": url, "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"What does the page “{title}” explain?"},
            {"role": "assistant", "content": paragraph},
        ]},
        {"id": f"chat-{number:04d}-b", "source_url": url, "messages": [
            {"role": "user", "content": f"I am reading about {title.lower()}. Where do I start?"},
            {"role": "assistant", "content": first_sentence},
            {"role": "user", "content": "Thanks. Is there more to it?"},
            {"role": "assistant", "content": f"Yes: the section “{title}” goes on from there; "
                                             f"its opening says: {paragraph}"},
        ]},
    ]


def build(sample: Path) -> list[dict]:
    seen: set[str] = set()
    lines: list[dict] = []
    for url, text in warc_pages(sample) + jsonl_pages(sample):
        if url in seen:
            continue
        seen.add(url)
        lines += conversations(url, text, len(seen))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=REPO / "data" / "sample")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "sample" / "chat" / "debian_chat.jsonl")
    args = parser.parse_args()
    lines = build(args.sample)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    print(f"{len(lines)} conversations -> {args.out}")


if __name__ == "__main__":
    main()
