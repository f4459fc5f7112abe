"""Builders for the flow tests: WARCs of plain pages, and configs pointing at a test bucket."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import SAMPLE
from tests.raw_inputs import Page, write_warc

WORDS = ("the quick brown fox jumps over the lazy dog while a debian installer partitions disks and "
         "configures the network before the base system is installed on the target machine").split()


def write_pages(path: Path, pages: int, seed: int = 0, words_per_page: int = 400) -> Path:
    """A gzip WARC of `pages` request+response pairs of plain English pages (deterministic per seed)."""
    html = []
    for page in range(pages):
        text = " ".join(WORDS[(page * 7 + seed + i) % len(WORDS)] for i in range(words_per_page))
        body = f"<html><head><title>Page {page}</title></head><body><p>{text}</p></body></html>".encode()
        html.append(Page(f"https://example.org/s{seed}/page{page}.html", body))
    write_warc(path, html)
    return path


# The flow tests are about orchestration: the synthetic pages (a few words repeated) would not pass the
# quality rules, and small token settings keep the later stages quick. Stage logic has its own tests.
FLOW_TEST_SECTIONS = {
    "dedup": {"workers": 1, "near": False},
    "filter": {"workers": 1, "rules": [], "per_language": {}},
    "tokenizer": {"vocab_size": 512},
    "tokenize": {"workers": 1, "seq_len": 64},
    "mixture": {"budget_tokens": 20_000},
    "model": {"family": "llama", "preset": "llama-tiny"},
    "train": {"steps": 4, "micro_batch": 2, "warmup_steps": 1, "checkpoint_every": 2, "zero_stage": 0},
    "eval": {"enabled": False},  # cpt and ift are off by default; one test turns the later phases on
}
# The later phases on, quickly: docs is the domain source, the sample's chat set, a few steps each.
LATER_PHASES = {
    "tokenize": {"workers": 1, "seq_len": 512, "val_fraction": 0.3},  # a row holds a whole conversation
    "model": {"family": "llama", "preset": "llama-tiny", "n_positions": 512},
    "cpt": {"enabled": True, "steps": 2, "warmup_steps": 1, "budget_tokens": 5_000},
    "ift": {"enabled": True, "steps": 2, "warmup_steps": 1, "chat_files": [str(SAMPLE / "chat" / "*.jsonl")]},
    "eval": {"enabled": True, "max_chat_sequences": 8, "heldout": {"max_bytes_per_source": 20_000},
             "generated": {"cloze_items": 10, "last_word_items": 10}},
}


def write_config(path: Path, *, endpoint: str | None, bucket: str, sources: list[dict], prefix: str = "t",
                 **sections) -> Path:
    storage = {"backend": "s3", "endpoint_url": endpoint, "bucket": bucket, "prefix": prefix}
    config = {"storage": storage, "sources": sources, "ingest": {"workers": 1, **sections.pop("ingest", {})}}
    config.update({name: {**defaults, **sections.pop(name, {})} for name, defaults in FLOW_TEST_SECTIONS.items()})
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
