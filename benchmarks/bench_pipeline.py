"""End to end through the data stages — raw WARC to token shards (ingest, clean, langid, dedup, filter,
tokenizer, tokens) — at 1x, 2x and 4x corpus size with 1 worker, and at the largest size with 2 workers:
time per stage, peak memory of the whole process tree, and raw WARC MB per core-second.

The corpus is the bundled sample's WARC pages replicated with perturbation: replica 0 is the page as it
is; replica r > 0 of a page has `perturb` of its words replaced by words drawn from the sample (a
near-duplicate at Jaccard ~0.6-0.9, so dedup has real clusters to find, not byte copies), and a new host
in its URL. `scale` k is `base_replicas` x k replicas of every page, so the k runs hold the same kind of
text in proportion.

Each run is a fresh subprocess (`--child`) that builds the stages one after the other with the stage
cores, exactly as the flow's tasks call them (tests/reliability/stages.py `plan`), into a local store;
a thread samples the RSS of the subprocess and all its descendants (the worker processes) every 50 ms.

    .venv/bin/python benchmarks/bench_pipeline.py                     # results/pipeline.json
    .venv/bin/python benchmarks/bench_pipeline.py --scales 1 2 --base-replicas 2
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from shared_machine import machine_info, wait_until_quiet  # noqa: E402

STAGES = ("ingest/web", "clean/web", "langid/web", "dedup", "filter/web", "tokenizer", "tokens/web")
CORPUS_CACHE = REPO / "benchmarks" / ".cache" / "pipeline-corpus"
WORD = re.compile(r"[^\W\d_]{2,}")
TEXT = re.compile(r">([^<]+)<")


def sample_pages() -> list[tuple[str, bytes]]:
    """(url, html) of every HTML response in the bundled sample's WARCs."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    pages = []
    for path in sorted((REPO / "data" / "sample" / "web").glob("*.warc.gz")):
        with open(path, "rb") as handle:
            for record in ArchiveIterator(handle, record_types=WarcRecordType.response, parse_http=True):
                if "html" in (record.http_headers.get("Content-Type") or ""):
                    pages.append((record.headers.get("WARC-Target-URI"), record.reader.read()))
    return pages


def perturbed(html: str, vocabulary: list[str], share: float, rng: random.Random) -> str:
    """The page with `share` of the words of its text nodes replaced by random vocabulary words."""
    def node(match: re.Match) -> str:
        return ">" + WORD.sub(lambda w: rng.choice(vocabulary) if rng.random() < share else w.group(0),
                              match.group(1)) + "<"
    return TEXT.sub(node, html)


def build_corpus(replicas: int, perturb: float, files: int) -> Path:
    """`replicas` perturbed copies of every sample page in `files` .warc.gz files (cached by parameters)."""
    from tests.raw_inputs import Page, write_warc

    directory = CORPUS_CACHE / f"r{replicas}-p{perturb}-f{files}"
    if (directory / "done").exists():
        return directory
    pages = sample_pages()
    vocabulary = sorted({w for _, html in pages for w in WORD.findall(html.decode("utf-8", "replace"))})
    out: list[list[Page]] = [[] for _ in range(files)]
    for replica in range(replicas):
        for number, (url, html) in enumerate(pages):
            body = html if replica == 0 else perturbed(html.decode("utf-8", "replace"), vocabulary, perturb,
                                                       random.Random(replica * 1_000_003 + number)).encode()
            host_url = re.sub(r"^https?://([^/]+)", lambda m: f"https://r{replica}.{m.group(1)}", url)
            out[(replica * len(pages) + number) % files].append(Page(host_url, body))
    directory.mkdir(parents=True, exist_ok=True)
    for index, chunk in enumerate(out):
        write_warc(directory / f"corpus-{index:03d}.warc.gz", chunk)
    (directory / "done").write_text(json.dumps({"pages": len(pages) * replicas}))
    return directory


class TreeMemory:
    """Peak summed RSS of this process and its descendants, sampled every `every` seconds."""

    def __init__(self, every: float = 0.05):
        import psutil

        self.process, self.every, self.peak = psutil.Process(), every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for proc in [self.process, *self.process.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.every)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def child(corpus: Path, workers: int, work: Path) -> dict:
    """Build the data stages one by one into a fresh local store; times, counts and the memory peak."""
    from pipeline.config import load_config
    from pipeline.storage import LocalStore
    from tests.reliability.stages import plan

    overrides = {"storage.backend": "local", "storage.local_root": str(work / "store"),
                 "sources": [{"name": "web", "kind": "warc", "location": str(corpus)}],
                 "mixture.weights": {"web": 1.0}, "cpt.enabled": False, "ift.enabled": False}
    for section in ("ingest", "clean", "langid", "dedup", "filter", "tokenize"):
        overrides[f"{section}.workers"] = workers
    config = load_config(REPO / "pipeline.yaml", overrides)
    store = LocalStore(work / "store", config.storage.prefix)
    stages = {}
    with TreeMemory() as memory:
        for stage in STAGES:
            run_peak, memory.peak = memory.peak, 0
            started = time.perf_counter()
            manifest = plan(config, store, REPO, stage)[stage]
            counts = manifest["counts"]
            time.sleep(memory.every * 2)  # one more sample after the stage
            stages[stage] = {"seconds": round(time.perf_counter() - started, 3),
                             "documents": counts.get("documents", counts.get("sample_documents")),
                             "tokens": counts.get("tokens"), "peak_tree_rss_mb": round(memory.peak / 2**20, 1)}
            memory.peak = max(memory.peak, run_peak)
    return {"stages": stages, "peak_tree_rss_mb": round(memory.peak / 2**20, 1)}


def run(corpus: Path, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as work:
        output = subprocess.run([sys.executable, __file__, "--child", str(corpus), str(workers), work],
                                capture_output=True, text=True, check=True, cwd=REPO).stdout
    result = json.loads(output.strip().splitlines()[-1])
    warc_mb = sum(path.stat().st_size for path in corpus.glob("*.warc.gz")) / 2**20
    total = sum(stage["seconds"] for stage in result["stages"].values())
    result.update({"workers": workers, "warc_mb": round(warc_mb, 2), "seconds": round(total, 2),
                   "warc_mb_per_core_second": round(warc_mb / (total * workers), 3),
                   "share_of_time": {name: round(stage["seconds"] / total, 3)
                                     for name, stage in result["stages"].items()}})
    return result


def table(results: list[dict]) -> list[str]:
    base = results[0]
    lines = ["| corpus | workers | WARC MB | " + " | ".join(s.split("/")[0] for s in STAGES) +
             " | total s | vs 1x | peak MB | WARC MB per core-s |",
             "|---|---:|---:|" + "---:|" * len(STAGES) + "---:|---:|---:|---:|"]
    for result in results:
        cells = " | ".join(f"{result['stages'][s]['seconds']:.1f}" for s in STAGES)
        lines.append(f"| {result['scale']}x | {result['workers']} | {result['warc_mb']:.1f} | {cells} | "
                     f"{result['seconds']:.1f} | {result['seconds'] / base['seconds']:.2f} | "
                     f"{result['peak_tree_rss_mb']:.0f} | {result['warc_mb_per_core_second']:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--base-replicas", type=int, default=6, help="replicas of every sample page at 1x")
    parser.add_argument("--perturb", type=float, default=0.08, help="share of words replaced in a replica")
    parser.add_argument("--files", type=int, default=4, help=".warc.gz files per corpus (ingest's work units)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pipeline.json")
    parser.add_argument("--child", nargs=3, metavar=("CORPUS", "WORKERS", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        corpus, workers, work = args.child
        print(json.dumps(child(Path(corpus), int(workers), Path(work))))
        return 0
    results = []
    plans = [(scale, 1) for scale in args.scales] + [(max(args.scales), 2)]
    for scale, workers in plans:
        corpus = build_corpus(args.base_replicas * scale, args.perturb, args.files)
        busy, waited = wait_until_quiet(30)
        result = {"scale": scale, "replicas": args.base_replicas * scale, **run(corpus, workers),
                  "busy_before": busy}
        results.append(result)
        print(f"{scale}x, {workers} worker(s): {result['warc_mb']:.1f} MB in {result['seconds']:.1f} s = "
              f"{result['warc_mb_per_core_second']:.3f} MB per core-second, peak {result['peak_tree_rss_mb']:.0f} MB "
              f"({', '.join(f'{s} {v:.0%}' for s, v in result['share_of_time'].items())})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": machine_info(REPO, ("resiliparse", "fasttext-numpy2", "tokenizers", "pyarrow", "datasketch")),
        "corpus": {"base_replicas": args.base_replicas, "perturb": args.perturb, "files": args.files},
        "results": results, "table": table(results)}, indent=2))
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
