"""datatrove's FineWeb chain, run inside the peer's own virtualenv (benchmarks/.cache/peer-venv), offline.

    peer-venv/bin/python benchmarks/peer/run_datatrove.py seed --assets DIR --ldnoobw data/ldnoobw --lid lid.176.ftz
    peer-venv/bin/python benchmarks/peer/run_datatrove.py run --assets DIR --input WARC_DIR --out OUT --tasks N

`seed` puts into DIR (HF_HOME, TLDEXTRACT_CACHE below it) what datatrove would download on first use:
the LDNOOBW word lists (from npm naughty-words 1.2.0, the copy in data/ldnoobw/), fastText lid.176 (the
quantised `.ftz` where datatrove asks for the 126 MB `.bin`: scores differ slightly) and tldextract's
public-suffix list (its bundled snapshot, cached without a network fetch). `run` is datatrove's
examples/fineweb.py chain without its exclusion writers: WarcReader → URLFilter →
Trafilatura(favour_precision=True) → LanguageFilter(["en"]) → GopherRepetitionFilter →
GopherQualityFilter → C4QualityFilter(filter_no_terminal_punct=False) → FineWebQualityFilter →
JsonlWriter, on LocalPipelineExecutor with N tasks (one per file of the input folder: datatrove shards
by file). It prints one JSON line: documents in and out and datatrove's stats per step.

This file imports datatrove: it never runs in the project's virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

LID_URL = "https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin"


def environment(assets: Path) -> None:
    """Point every cache at `assets` and forbid the Hub (set before datatrove is imported)."""
    os.environ["HF_HOME"] = str(assets / "hf")
    os.environ["TLDEXTRACT_CACHE"] = str(assets / "tldextract")
    os.environ["HF_HUB_OFFLINE"] = "1"


def seeded_path(url: str, namespace: str, subfolder: str) -> Path:
    """Where datatrove's cached_asset_path_or_download keeps `url` (computed by datatrove's own helpers)."""
    from datatrove.io import strip_protocol
    from huggingface_hub import cached_assets_path

    folder = cached_assets_path(library_name="datatrove", namespace=namespace, subfolder=subfolder)
    return Path(folder) / strip_protocol(url).replace("/", "_")


def place(path: Path, data: bytes) -> None:
    """Write an asset and the `.completed` marker that tells datatrove not to download it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    Path(f"{path}.completed").touch()


def seed(assets: Path, ldnoobw: Path, lid: Path) -> dict:
    from datatrove.pipeline.filters import c4_filters

    seeded = {"lid": str(seeded_path(LID_URL, "lid", "ft176"))}
    place(Path(seeded["lid"]), lid.read_bytes())
    lists = 0
    for lang in c4_filters._BADWORDS_LANGS:
        source = ldnoobw / f"{lang}.json"
        if not source.exists():  # tlh and fr-CA-u-sd-caqc: not in the npm package's lists we keep
            continue
        url = c4_filters._EN_BADWORDS_URL if lang == "en" else c4_filters._BADWORDS_URL + lang
        words = json.loads(source.read_text())
        place(seeded_path(url, "filters", "c4_badwords"), ("\n".join(words) + "\n").encode())
        lists += 1
    seeded["ldnoobw_lists"] = lists

    import tldextract.suffix_list as suffix_list
    from tldextract import TLDExtract

    def no_fetch(*_args, **_kwargs):
        raise suffix_list.SuffixListNotFound("offline: the bundled snapshot is cached instead")

    suffix_list.find_first_response = no_fetch  # the same cache key as a live run, the snapshot as its value
    extractor = TLDExtract()
    extractor("https://www.debian.org/")
    seeded["tldextract_cache"] = os.environ["TLDEXTRACT_CACHE"]
    return seeded


def chain(input_dir: Path, out: Path, timeout: float = 1.0) -> list:
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter, LanguageFilter, URLFilter)
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter

    return [
        WarcReader(str(input_dir), glob_pattern="*.warc.gz", default_metadata={"dump": "debian-docs"}),
        URLFilter(),
        Trafilatura(favour_precision=True, timeout=timeout),  # 1 s: datatrove's default
        LanguageFilter(languages=["en"]),
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(filter_no_terminal_punct=False),
        FineWebQualityFilter(),
        JsonlWriter(str(out / "output")),
    ]


def run(input_dir: Path, out: Path, tasks: int, timeout: float = 1.0) -> dict:
    from datatrove.executor.local import LocalPipelineExecutor

    files = sorted(input_dir.glob("*.warc.gz"))
    if len(files) < tasks:
        raise SystemExit(f"{input_dir}: {len(files)} WARC file(s) for {tasks} tasks (datatrove shards by file)")
    executor = LocalPipelineExecutor(pipeline=chain(input_dir, out, timeout), tasks=tasks, workers=tasks,
                                     logging_dir=str(out / "logs"))
    executor.run()
    stats = json.loads((out / "logs" / "stats.json").read_text())
    steps = [{"name": step["name"], "stats": step.get("stats", {}),
              "seconds": step.get("time_stats", {}).get("total")} for step in stats]
    forwarded = [step["stats"].get("forwarded", step["stats"].get("documents")) for step in steps]
    return {"documents_in": steps[0]["stats"].get("documents"),
            "documents_out": steps[-1]["stats"].get("total"), "forwarded": forwarded, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("seed", "run"))
    parser.add_argument("--assets", type=Path, required=True)
    parser.add_argument("--ldnoobw", type=Path)
    parser.add_argument("--lid", type=Path)
    parser.add_argument("--input", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--trafilatura-timeout", type=float, default=1.0,
                        help="seconds of wall time per page before Trafilatura gives up on it (datatrove's default: 1)")
    args = parser.parse_args(argv)
    environment(args.assets.resolve())
    if args.command == "seed":
        print(json.dumps(seed(args.assets, args.ldnoobw, args.lid)))
    else:
        print(json.dumps(run(args.input, args.out, args.tasks, args.trafilatura_timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
