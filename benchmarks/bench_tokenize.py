"""Tokenization benchmark: the tokens stage end to end against bare `tokenizers.encode_batch` on the same
text in the same run (the ceiling), 1 vs 2 worker processes, and peak memory at 1x and 4x the corpus.

Run from the repository root (about 2 minutes on a 2-core machine; the corpus comes from
bench_dedup.py's Debian installation guides, downloaded once into benchmarks/.cache/):

    .venv/bin/python benchmarks/bench_tokenize.py
    .venv/bin/python benchmarks/bench_tokenize.py --repeats 1

Setup (untimed): the guides' 3,158 documents are written as a document artifact (the filter stage's
Parquet format, 8 shards) into a local store, and a 32k byte-level BPE is trained on them by the
tokenizer stage's own code.

Measured, each repeated and the median taken:
- ceiling: `Tokenizer.encode_batch(texts, add_special_tokens=False)` over every document, batches of
  256, one thread (TOKENIZERS_PARALLELISM=false, as the stage's workers run), texts already in memory;
- stage_w1: `tasks.tokenize.run_tokenize` with 1 worker (in process): read the Parquet shards, encode,
  split, pack, write the Arrow shards, hash and store them, commit; a new version each time;
- stage_w2: the same with 2 worker processes (the fork server is started by an untimed run first, as
  a long-running worker keeps it);
- memory: peak RSS (VmHWM) of a fresh process running stage_w1 alone (the corpus and the tokenizer are
  prepared by this process first) on the corpus and on the corpus x4.

Writes benchmarks/results/tokenize.json. Targets (from the issue): stage_w1 / ceiling >= 0.85 in tokens
per second; stage_w2 / stage_w1 >= 1.7; peak memory flat from 1x to 4x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared_machine import machine_info, wait_until_quiet  # benchmarks/ is sys.path[0]

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ["TOKENIZERS_PARALLELISM"] = "false"

RESULTS = REPO / "benchmarks" / "results" / "tokenize.json"
TARGETS = {"w1_over_ceiling": 0.85, "w2_over_w1": 1.7}
SHARDS = 8
SEQ_LEN = 1024


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def document_artifact(store, documents: list[dict], copies: int) -> dict:
    """The documents (copies perturbed so no two are equal) as a committed filter-format artifact."""
    from pipeline.artifacts import ArtifactWriter, StageSpec
    from pipeline.config import FilterConfig
    from pipeline.shards import LANGID_SCHEMA
    from pipeline.units import UnitOutput

    spec = StageSpec(stage="filter", artifact="filter/guide", code_version="bench", config={"copies": copies},
                     inputs={})
    writer = ArtifactWriter(store, spec)
    total = len(documents) * copies
    per_shard = -(-total // SHARDS)
    with UnitOutput(store, spec.prefix, "s", FilterConfig(shard_max_docs=per_shard), "bench") as out:
        shards = out.writer("data", LANGID_SCHEMA, "documents", "text")
        for copy in range(copies):
            for number, document in enumerate(documents):
                text = document["text"] if not copy else f"Copy {copy}.\n{document['text']}"
                shards.add((f"{copy}-{number}", "guide", document["key"], None, None, text, "utf-8",
                            document["lang"], 1.0, []))
        files = out.close()
    return writer.commit(files, {"documents": total})


def setup(scratch: Path, copies: int = 1):
    from bench_dedup import load_documents
    from pipeline.config import TokenizerConfig
    from pipeline.storage import LocalStore
    from tasks.tokenizer import run_tokenizer, tokenizer_spec

    documents = load_documents()
    store = LocalStore(scratch / "store", "bench")
    inputs = {"guide": document_artifact(store, documents, copies)}
    settings = TokenizerConfig(vocab_size=32_000, sample_max_mb=16)  # the same sample at 1x and 4x
    tokenizer = run_tokenizer(settings, store, tokenizer_spec(settings, inputs, SEQ_LEN, None), inputs, SEQ_LEN,
                              progress=lambda _m: None)
    return store, inputs["guide"], tokenizer, documents


def run_stage(store, upstream: dict, tokenizer: dict, workers: int, token: str) -> dict:
    from pipeline.config import TokenizeConfig
    from tasks.tokenize import run_tokenize, tokenize_spec

    settings = TokenizeConfig(workers=workers, seq_len=SEQ_LEN)
    spec = tokenize_spec("guide", settings, upstream, tokenizer, rebuild=token)
    return run_tokenize("guide", settings, store, spec, upstream, tokenizer, progress=lambda _m: None)


def timed(fn) -> dict:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fn()
    return {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0}


def peak_rss_kb() -> int:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, Linux does not carry it over from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(directory: str) -> None:
    """Run in a fresh process: stage_w1 on a prepared store; prints the peak RSS."""
    from pipeline.storage import LocalStore

    import tasks.tokenize  # noqa: F401  (imports are not the stage's memory)

    setup_record = json.loads((Path(directory) / "setup.json").read_text())
    store = LocalStore(Path(directory) / "store", "bench")
    before = peak_rss_kb()
    manifest = run_stage(store, setup_record["upstream"], setup_record["tokenizer"], 1, "memory")
    peak = peak_rss_kb()
    splits = manifest["counts"]["splits"]
    print(json.dumps({"documents": manifest["counts"]["documents_in"],
                      "tokens": splits["train"]["tokens"] + splits["val"]["tokens"],
                      "peak_rss_mb_before_stage": round(before / 1024, 1), "peak_rss_mb": round(peak / 1024, 1)}))


def measure_memory(copies: int) -> dict:
    """Prepare the corpus x copies here, then measure the stage alone in a fresh process."""
    with tempfile.TemporaryDirectory() as scratch:
        store, upstream, tokenizer, _ = setup(Path(scratch), copies)
        (Path(scratch) / "setup.json").write_text(json.dumps({"upstream": upstream, "tokenizer": tokenizer}))
        out = subprocess.run([sys.executable, __file__, "--memory-child", scratch], capture_output=True, text=True,
                             check=True, cwd=REPO)
    return {"copies": copies, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return

    from tasks.tokenize import _tokenizer
    from tasks.tokenizer import tokenizer_json

    with tempfile.TemporaryDirectory() as scratch:
        log("setup: the corpus as a document artifact and a 32k BPE trained on it ...")
        store, upstream, tokenizer_manifest, documents = setup(Path(scratch))
        texts = [document["text"] for document in documents]
        tokenizer = _tokenizer(tokenizer_json(store, tokenizer_manifest))

        def ceiling() -> None:
            for start in range(0, len(texts), 256):
                tokenizer.encode_batch(texts[start:start + 256], add_special_tokens=False)

        total_tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
        run_stage(store, upstream, tokenizer_manifest, 2, "warm-up")  # starts the fork server, untimed
        busy, waited = wait_until_quiet(60)
        log(f"timing (other jobs used {busy:.0%} of the CPUs, waited {waited} s) ...")
        runs: dict[str, list[dict]] = {"ceiling": [], "stage_w1": [], "stage_w2": []}
        for repeat in range(args.repeats):  # interleaved, so all three see the same interference
            runs["ceiling"].append(timed(ceiling))
            runs["stage_w1"].append(timed(lambda: run_stage(store, upstream, tokenizer_manifest, 1, f"w1-{repeat}")))
            runs["stage_w2"].append(timed(lambda: run_stage(store, upstream, tokenizer_manifest, 2, f"w2-{repeat}")))
    figures = {}
    for name, measured in runs.items():
        wall = statistics.median(r["wall_s"] for r in measured)
        figures[name] = {"wall_s": round(wall, 3), "tokens_per_s": round(total_tokens / wall),
                         "runs": [{k: round(v, 3) for k, v in r.items()} for r in measured]}
    log("memory: a fresh process per corpus size ...")
    memory = [measure_memory(copies) for copies in (1, 4)]
    ratios = {"w1_over_ceiling": round(figures["stage_w1"]["tokens_per_s"] / figures["ceiling"]["tokens_per_s"], 3),
              "w2_over_w1": round(figures["stage_w2"]["tokens_per_s"] / figures["stage_w1"]["tokens_per_s"], 3),
              "peak_rss_4x_over_1x": round(memory[1]["peak_rss_mb"] / memory[0]["peak_rss_mb"], 3)}
    results = {
        "machine": {**machine_info(REPO, ("tokenizers", "pyarrow", "numpy")), "busy_before_timing": busy},
        "corpus": {"documents": len(texts), "tokens": total_tokens, "text_mb": round(sum(map(len, texts)) / 2**20, 1),
                   "input_shards": SHARDS, "seq_len": SEQ_LEN, "vocab_size": tokenizer_manifest["counts"]["vocab_size"]},
        "figures": figures, "memory": memory, "ratios": ratios,
        "targets": {name: {"target": target, "value": ratios[name], "met": ratios[name] >= target}
                    for name, target in TARGETS.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"corpus: {len(texts)} documents, {total_tokens:,} tokens")
    for name, figure in figures.items():
        print(f"{name:10} {figure['tokens_per_s']:>10,} tokens/s  ({figure['wall_s']} s)")
    print(f"stage w1 / ceiling {ratios['w1_over_ceiling']}, w2 / w1 {ratios['w2_over_w1']}")
    for row in memory:
        print(f"memory x{row['copies']}: {row['documents']} documents, peak RSS {row['peak_rss_mb']} MB "
              f"(before the stage {row['peak_rss_mb_before_stage']} MB)")
    print(f"targets: {json.dumps({k: v['met'] for k, v in results['targets'].items()})}; -> {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
