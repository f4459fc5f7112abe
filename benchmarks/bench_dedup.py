"""Dedup and filter benchmark: near-duplicate quality against exact Jaccard, MinHash speed side by side with
datasketch, memory per document, and the filter chain's speed.

Run from the repository root (about 2-3 minutes on a 2-core machine; the first run downloads ~36 MB of
Debian packages into benchmarks/.cache/):

    .venv/bin/python benchmarks/bench_dedup.py
    .venv/bin/python benchmarks/bench_dedup.py --repeats 1 --no-memory

The corpus: every HTML page of Debian's installation guide for amd64 and for i386 (the same manual in
~19 languages, built for two architectures: the same pages in slightly different versions, natural
near-duplicates), fetched with `apt-get download` at the versions of the bundled sample, and
extracted and normalised by the clean stage's own code (tasks.clean.extract, normalize_text).

1. Near-duplicate quality. The truth is every pair of documents whose shingle sets (the stage's own
   5-word / 5-character shingles, as text) have an exact Jaccard similarity >= 0.8, found exhaustively
   with the AllPairs prefix-filtering join (exact: no pair above the threshold can be missed) and
   verified on the full sets. The stage's LSH (corpus.minhash.MinHasher with pipeline.yaml's
   defaults: 112 permutations, 14 bands x 8 rows) gives candidate pairs (documents sharing a band key)
   and clusters (the stage's union-find). Reported: recall of the true pairs among the candidates and
   within clusters; precision = the share of candidate pairs whose exact Jaccard is >= 0.8 (and, for
   context, >= 0.7, near the LSH threshold); and removal precision = the share of the documents the
   stage removes (keep: first) whose exact Jaccard with the document kept in their place is >= 0.8.
2. Speed, one process (per core): the stage's per-document work (normalise, shingle, MinHash, band
   keys, exact key) side by side, in the same run and on the same documents, with datasketch's
   per-shingle `MinHash.update` (its default SHA1 hash) and with `update_batch` + xxh32 (the fast path
   datasketch offers).
3. Memory: the whole dedup stage (tasks.dedup.run_dedup, 1 worker, local store) on the corpus and on the
   corpus x4 (each copy perturbed: every 40th word replaced, so copies are near-duplicates), peak
   Python+numpy memory (tracemalloc) per document, its growth per added document between the two
   (the per-document cost beyond fixed buffers), and the signature and index bytes per document.
4. The filter chain (tasks.filter.filter_document with pipeline.yaml's rules, the sample's eval set for
   decontamination, PII redaction) in documents/s per core on the same documents.
5. Memory whatever the longest document: the whole dedup stage (1 worker, each run in a fresh process)
   on the bundled sample's 214 JSONL documents, without and with a 20 MB single-line page made of
   their text, in the same benchmark run: peak RSS of each and the difference, against the page's size.
   `--long-document-only` runs just this part (no download, ~15 s).

Writes benchmarks/results/dedup.json and prints a summary. Targets (from the issue): recall >= 0.95 and
precision >= 0.95 on pairs with Jaccard >= 0.8; MinHash incl. shingling >= 3,000 docs/s per core; filter
chain >= 500 docs/s per core.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path

from shared_machine import machine_info, measure_group, wait_until_quiet  # benchmarks/ is sys.path[0]

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CACHE = REPO / "benchmarks" / ".cache" / "installation-guide"
RESULTS = REPO / "benchmarks" / "results" / "dedup.json"
PACKAGES = {arch: f"installation-guide-{arch}=20230508+deb12u1" for arch in ("amd64", "i386")}
TRUE_JACCARD = 0.8
TARGETS = {"recall": 0.95, "precision": 0.95, "minhash_docs_per_core_s": 3000.0, "filter_docs_per_core_s": 500.0}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Corpus


def guide_root(arch: str) -> Path:
    """The unpacked package (downloaded with apt-get once, then cached)."""
    root = CACHE / arch
    html = root / "usr" / "share" / "doc" / f"installation-guide-{arch}"
    if html.is_dir():
        return html
    CACHE.mkdir(parents=True, exist_ok=True)
    if not list(CACHE.glob(f"installation-guide-{arch}_*.deb")):
        log(f"apt-get download {PACKAGES[arch]}")
        subprocess.run(["apt-get", "download", PACKAGES[arch]], cwd=CACHE, check=True, capture_output=True)
    deb = sorted(CACHE.glob(f"installation-guide-{arch}_*.deb"))[-1]
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return html


def load_documents() -> list[dict]:
    from tasks.clean import compile_patterns, decode_html, extract, normalize_text
    from pipeline.config import CleanConfig, DedupConfig

    boilerplate = compile_patterns(CleanConfig().boilerplate_patterns)
    char_languages = set(DedupConfig().char_ngram_languages)
    documents = []
    for arch in PACKAGES:
        root = guide_root(arch)
        for path in sorted(root.glob("*/*.html")):
            html, _, _ = decode_html(path.read_bytes(), "utf-8")
            _, text = extract(html, "resiliparse")
            text = normalize_text(text or "", boilerplate)
            if len(text) < 200:  # the clean stage's min_chars
                continue
            locale = path.parent.name
            lang = locale.split("_")[0].lower()
            documents.append({"key": f"{arch}/{locale}/{path.name}", "text": text, "lang": lang,
                              "chars": lang in char_languages})
    return documents


# ---------------------------------------------------------------------------------------------
# 1. Quality against exact Jaccard


def exact_pairs(sets: list[frozenset], threshold: float) -> dict[tuple[int, int], float]:
    """Every pair with Jaccard >= threshold (AllPairs: a pair that similar must share one of the rarest
    len - ceil(t * len) + 1 shingles of each set, so indexing those prefixes misses nothing)."""
    frequency: dict[str, int] = defaultdict(int)
    for shingle_set in sets:
        for shingle in shingle_set:
            frequency[shingle] += 1
    index: dict[str, list[int]] = defaultdict(list)
    candidates: set[tuple[int, int]] = set()
    order = sorted(range(len(sets)), key=lambda i: len(sets[i]))
    for i in order:
        shingle_set = sets[i]
        if not shingle_set:
            continue
        ranked = sorted(shingle_set, key=lambda s: (frequency[s], s))
        prefix = len(ranked) - math.ceil(threshold * len(ranked)) + 1
        for shingle in ranked[:prefix]:
            for j in index[shingle]:
                if len(sets[j]) >= threshold * len(shingle_set):
                    candidates.add((min(i, j), max(i, j)))
            index[shingle].append(i)
    found = {}
    for i, j in candidates:
        similarity = len(sets[i] & sets[j]) / len(sets[i] | sets[j])
        if similarity >= threshold:
            found[(i, j)] = similarity
    return found


def lsh_candidates(documents: list[dict]) -> tuple[set[tuple[int, int]], list[list[int]]]:
    """Candidate pairs (sharing a band key) and each document's band keys, with the stage's defaults."""
    from pipeline.config import DedupConfig
    from tasks.dedup import hasher

    minhash = hasher(DedupConfig())
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    keys = []
    for number, document in enumerate(documents):
        signature = minhash.signature(document["text"], document["chars"])
        bands = minhash.band_keys(signature) if signature is not None else []
        keys.append(bands)
        for band, key in enumerate(bands):
            buckets[(band, key)].append(number)
    pairs = set()
    for members in buckets.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                pairs.add((members[a], members[b]))
    return pairs, keys


def clusters_of(keys: list[list[int]]) -> list[int]:
    """The stage's clustering (tasks.dedup.UnionFind over every band) of the documents."""
    import numpy as np

    from tasks.dedup import UnionFind

    union = UnionFind(len(keys))
    valid = np.array([bool(k) for k in keys])
    bands = max(len(k) for k in keys)
    for band in range(bands):
        column = np.array([k[band] if k else 0 for k in keys], dtype=np.uint64)
        union.union_runs(column, valid)
    return union.roots().tolist()


def quality(documents: list[dict]) -> dict:
    from corpus.minhash import shingles

    started = time.perf_counter()
    sets = [frozenset(shingles(d["text"], 5, d["chars"])) for d in documents]
    truth = exact_pairs(sets, TRUE_JACCARD)
    truth_seconds = time.perf_counter() - started
    candidates, keys = lsh_candidates(documents)
    roots = clusters_of(keys)

    def jaccard(pair: tuple[int, int]) -> float:
        i, j = pair
        return len(sets[i] & sets[j]) / len(sets[i] | sets[j]) if sets[i] | sets[j] else 1.0

    candidate_similarity = {pair: jaccard(pair) for pair in candidates}
    true_found = sum(1 for pair in truth if pair in candidates)
    same_cluster = sum(1 for i, j in truth if roots[i] == roots[j])
    cross_arch = sum(1 for i, j in truth if documents[i]["key"].split("/")[0] != documents[j]["key"].split("/")[0])
    # what the stage does with the clusters (keep: first): is each removed document really that similar to
    # the one kept in its place?
    representative: dict[int, int] = {}
    for number, root in enumerate(roots):
        representative.setdefault(root, number)
    removed = [(number, representative[root]) for number, root in enumerate(roots) if representative[root] != number]
    removal_similarity = [jaccard(pair) for pair in removed]
    histogram: dict[str, int] = defaultdict(int)
    for similarity in candidate_similarity.values():
        histogram[f"{min(int(similarity * 10), 9) / 10:.1f}"] += 1
    return {
        "documents": len(documents),
        "true_pairs": len(truth),
        "true_pairs_amd64_vs_i386": cross_arch,
        "candidate_pairs": len(candidates),
        "recall_pairs": round(true_found / len(truth), 4) if truth else None,
        "recall_clusters": round(same_cluster / len(truth), 4) if truth else None,
        "precision_jaccard_0.8": round(sum(s >= 0.8 for s in candidate_similarity.values()) / len(candidates), 4),
        "precision_jaccard_0.7": round(sum(s >= 0.7 for s in candidate_similarity.values()) / len(candidates), 4),
        "candidate_jaccard_histogram": dict(sorted(histogram.items())),
        "removed_documents": len(removed),
        "removal_precision_jaccard_0.8": round(sum(x >= 0.8 for x in removal_similarity) / len(removed), 4),
        "removal_precision_jaccard_0.7": round(sum(x >= 0.7 for x in removal_similarity) / len(removed), 4),
        "missed_true_pairs_jaccard": sorted(round(s, 3) for pair, s in truth.items() if pair not in candidates)[:20],
        "exact_join_seconds": round(truth_seconds, 2),
    }


# ---------------------------------------------------------------------------------------------
# 2. Speed


def speed(documents: list[dict], repeats: int) -> dict:
    import xxhash
    from datasketch import MinHash

    from pipeline.config import DedupConfig
    from corpus.minhash import shingles
    from tasks.dedup import hasher

    minhash = hasher(DedupConfig())

    def ours() -> None:  # the stage's own per-document work (bounded-memory sketch: signature and exact key)
        for document in documents:
            signature, _ = minhash.sketch(document["text"], document["chars"])
            if signature is not None:
                minhash.band_keys(signature)

    def datasketch_update() -> None:
        for document in documents:
            sketch = MinHash(num_perm=112, seed=1)
            for shingle in shingles(document["text"], 5, document["chars"]):
                sketch.update(shingle.encode("utf-8"))

    def datasketch_update_batch_xxh32() -> None:
        for document in documents:
            sketch = MinHash(num_perm=112, seed=1, hashfunc=xxhash.xxh32_intdigest)
            sketch.update_batch([s.encode("utf-8") for s in shingles(document["text"], 5, document["chars"])])

    count = len(documents)
    figures = measure_group([("ours", ours, count), ("datasketch_update", datasketch_update, count),
                             ("datasketch_update_batch_xxh32", datasketch_update_batch_xxh32, count)], repeats)
    for name in ("datasketch_update", "datasketch_update_batch_xxh32"):
        figures[f"ours_over_{name}"] = round(figures["ours"]["per_core_s"] / figures[name]["per_core_s"], 2)
    return figures


# ---------------------------------------------------------------------------------------------
# 3. Memory of the whole stage


def perturbed(text: str, copy: int) -> str:
    words = text.split(" ")
    for index in range(copy % 40, len(words), 40):
        words[index] = f"copy{copy}"
    return " ".join(words)


def langid_artifact(store, documents: list[dict], copies: int) -> dict:
    """The documents (and perturbed copies) as a committed langid artifact, the stage's real input."""
    from pipeline.artifacts import ArtifactWriter, StageSpec
    from pipeline.config import LangidConfig
    from pipeline.shards import LANGID_SCHEMA
    from pipeline.units import UnitOutput

    spec = StageSpec(stage="langid", artifact="langid/guide", code_version="bench", config={"copies": copies},
                     inputs={})
    writer = ArtifactWriter(store, spec)
    with UnitOutput(store, spec.prefix, "s", LangidConfig(shard_max_docs=2000), "bench") as out:
        shards = out.writer("data", LANGID_SCHEMA, "documents", "text")
        for copy in range(copies):
            for number, document in enumerate(documents):
                text = document["text"] if copy == 0 else perturbed(document["text"], copy)
                shards.add((f"{copy}-{number}", "guide", document["key"], None, None, text, "utf-8",
                            document["lang"], 1.0, []))
        files = out.close()
    return writer.commit(files, {"documents": len(documents) * copies})


def memory(documents: list[dict], copies: int) -> dict:
    from pipeline.config import DedupConfig
    from pipeline.storage import LocalStore
    from tasks.dedup import dedup_spec, run_dedup

    with tempfile.TemporaryDirectory() as scratch:
        store = LocalStore(Path(scratch) / "store", "bench")
        inputs = {"guide": langid_artifact(store, documents, copies)}
        settings = DedupConfig(workers=1)
        spec = dedup_spec(settings, inputs, None)
        tracemalloc.start()
        started = time.perf_counter()
        manifest = run_dedup(settings, store, spec, inputs, progress=lambda _m: None)
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    total = manifest["counts"]["documents_in"]
    size = {role: sum(f["bytes"] for f in manifest["files"] if f["role"] == role) for role in ("signatures", "index")}
    return {
        "copies": copies,
        "documents": total,
        "removed": manifest["counts"]["removed"],
        "clusters": manifest["counts"]["clusters"],
        "peak_traced_bytes": peak,
        "peak_traced_bytes_per_document": round(peak / total, 1),
        "signature_bytes_per_document": round(size["signatures"] / total, 1),
        "index_bytes_per_document_kept": round(size["index"] / max(manifest["counts"]["documents"], 1), 1),
        "seconds_with_tracemalloc": round(seconds, 2),
    }


# ---------------------------------------------------------------------------------------------
# 4. Filter chain


def filter_speed(documents: list[dict], repeats: int) -> dict:
    from pipeline.config import load_config
    from pipeline.storage import LocalStore
    from tasks.filter import build_rules, filter_document, new_counts, resolve_rule_inputs

    settings = load_config(REPO / "pipeline.yaml").filter
    with tempfile.TemporaryDirectory() as scratch:
        inputs = resolve_rule_inputs(settings, LocalStore(Path(scratch), "x"), REPO, Path(scratch))
    rules = build_rules(settings, inputs)
    outcome: dict[str, int] = defaultdict(int)

    def chain() -> None:
        counts = new_counts()
        for document in documents:
            _, reason = filter_document(document["text"], document["lang"],
                                        settings.rules_for("guide", document["lang"]), rules, settings, counts)
            outcome[reason or "kept"] += 1

    figures = measure_group([("filter_chain", chain, len(documents))], repeats)
    passes = sum(outcome.values()) // len(documents)
    figures["outcome_per_pass"] = {k: v // passes for k, v in sorted(outcome.items())}
    figures["rules"] = settings.rules
    figures["eval_items"] = len(inputs.eval_items)
    return figures


# ---------------------------------------------------------------------------------------------
# 5. Memory with a 20 MB single-line document

LONG_DOCUMENT_BYTES = 20 * 1024 * 1024
SAMPLE_JSONL = REPO / "data" / "sample" / "jsonl" / "sample-text-00000.jsonl.zst"
DEDUP_PEAK_RSS = """
import resource, sys
from pipeline.artifacts import read_manifest
from pipeline.config import DedupConfig
from pipeline.storage import LocalStore
from tasks.dedup import dedup_spec, run_dedup

store = LocalStore(sys.argv[1], "bench")
inputs = {"guide": read_manifest(store, "langid/guide", sys.argv[2])}
settings = DedupConfig(workers=1)
manifest = run_dedup(settings, store, dedup_spec(settings, inputs, None), inputs, progress=lambda _m: None)
print(manifest["counts"]["documents_in"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def sample_documents() -> list[dict]:
    import io

    import zstandard

    with open(SAMPLE_JSONL, "rb") as handle:
        lines = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(handle), encoding="utf-8")
        rows = [json.loads(line) for line in lines]
    return [{"key": row["id"], "text": row["text"], "lang": row.get("lang_hint") or "en"} for row in rows]


def long_document_memory() -> dict:
    """Peak RSS of the dedup stage on the sample's documents, then on the same plus one 20 MB single line."""
    documents = sample_documents()
    block = " ".join(document["text"].replace("\n", " ") for document in documents)
    line = ((block + " ") * (LONG_DOCUMENT_BYTES // len(block.encode()) + 1)).encode()[:LONG_DOCUMENT_BYTES]
    page = {"key": "long-page", "text": line.decode("utf-8", "ignore"), "lang": "en"}
    figures: dict = {"documents": len(documents), "long_document_bytes": len(page["text"].encode())}
    for name, corpus in (("without", documents), ("with", documents + [page])):
        with tempfile.TemporaryDirectory() as scratch:
            from pipeline.storage import LocalStore

            store = LocalStore(Path(scratch) / "store", "bench")
            manifest = langid_artifact(store, corpus, 1)
            done = subprocess.run([sys.executable, "-c", DEDUP_PEAK_RSS, str(Path(scratch) / "store"),
                                   manifest["version"]], capture_output=True, text=True, check=True, cwd=REPO)
            documents_in, peak = map(int, done.stdout.split())
            assert documents_in == len(corpus)
            figures[f"peak_rss_{name}_bytes"] = peak
    extra = figures["peak_rss_with_bytes"] - figures["peak_rss_without_bytes"]
    figures["peak_rss_difference_bytes"] = extra
    figures["difference_over_document_size"] = round(extra / figures["long_document_bytes"], 2)
    return figures


def print_long_document(row: dict) -> None:
    mb = 1024 * 1024
    print(f"dedup peak RSS: {row['peak_rss_without_bytes'] / mb:,.0f} MB on {row['documents']} documents, "
          f"{row['peak_rss_with_bytes'] / mb:,.0f} MB with a {row['long_document_bytes'] / mb:.0f} MB single-line "
          f"document too: +{row['peak_rss_difference_bytes'] / mb:,.0f} MB "
          f"({row['difference_over_document_size']}x the document)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the whole-stage memory runs")
    parser.add_argument("--long-document-only", action="store_true",
                        help="only part 5: the stage's peak memory without and with a 20 MB document")
    args = parser.parse_args()
    if args.long_document_only:
        row = long_document_memory()
        previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({**previous, "long_document_memory": row}, indent=2) + "\n")
        print_long_document(row)
        return

    log("corpus: installation-guide-amd64 and -i386, extracted with tasks.clean")
    documents = load_documents()
    log(f"{len(documents)} documents; exact Jaccard join and LSH ...")
    results: dict = {"machine": machine_info(REPO, ("datasketch", "xxhash", "numpy", "pyarrow")),
                     "corpus": {"packages": list(PACKAGES.values()), "documents": len(documents),
                                "mean_chars": round(sum(len(d["text"]) for d in documents) / len(documents))}}
    results["quality"] = quality(documents)
    busy, waited = wait_until_quiet(60)
    results["machine"]["busy_before_timing"] = busy
    log(f"speed (other jobs used {busy:.0%} of the CPUs, waited {waited} s) ...")
    results["speed"] = speed(documents, args.repeats)
    log("filter chain ...")
    results["filter"] = filter_speed(documents, args.repeats)
    if not args.no_memory:
        log("memory: whole stage at 1x and 4x ...")
        results["memory"] = [memory(documents, copies) for copies in (1, 4)]
        small, large = results["memory"]
        # the growth per added document: what the stage needs per document beyond its fixed buffers
        results["memory_marginal_bytes_per_document"] = round(
            (large["peak_traced_bytes"] - small["peak_traced_bytes"]) / (large["documents"] - small["documents"]), 1)
        log("memory: the stage without and with a 20 MB single-line document ...")
        results["long_document_memory"] = long_document_memory()
    q, s, f = results["quality"], results["speed"], results["filter"]
    results["targets"] = {
        "recall": {"target": TARGETS["recall"], "value": q["recall_pairs"], "met": q["recall_pairs"] >= TARGETS["recall"]},
        "precision": {"target": TARGETS["precision"], "value": q["precision_jaccard_0.8"],
                      "met": q["precision_jaccard_0.8"] >= TARGETS["precision"]},
        "minhash_docs_per_core_s": {"target": TARGETS["minhash_docs_per_core_s"], "value": s["ours"]["per_core_s"],
                                    "met": s["ours"]["per_core_s"] >= TARGETS["minhash_docs_per_core_s"]},
        "filter_docs_per_core_s": {"target": TARGETS["filter_docs_per_core_s"], "value": f["filter_chain"]["per_core_s"],
                                   "met": f["filter_chain"]["per_core_s"] >= TARGETS["filter_docs_per_core_s"]},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"documents {q['documents']}, true pairs (J >= 0.8) {q['true_pairs']}, candidates {q['candidate_pairs']}")
    print(f"recall {q['recall_pairs']:.4f} (clusters {q['recall_clusters']:.4f}), precision {q['precision_jaccard_0.8']:.4f}"
          f" (J >= 0.7: {q['precision_jaccard_0.7']:.4f})")
    print(f"MinHash docs/s per core: ours {s['ours']['per_core_s']:,.0f}, datasketch update "
          f"{s['datasketch_update']['per_core_s']:,.0f} (x{s['ours_over_datasketch_update']}), update_batch+xxh32 "
          f"{s['datasketch_update_batch_xxh32']['per_core_s']:,.0f} (x{s['ours_over_datasketch_update_batch_xxh32']})")
    print(f"filter chain docs/s per core: {f['filter_chain']['per_core_s']:,.0f}")
    for row in results.get("memory", []):
        print(f"memory x{row['copies']}: {row['documents']} docs, peak {row['peak_traced_bytes_per_document']} B/doc, "
              f"signatures {row['signature_bytes_per_document']} B/doc, index {row['index_bytes_per_document_kept']} B/doc")
    if "memory_marginal_bytes_per_document" in results:
        print(f"memory growth per added document: {results['memory_marginal_bytes_per_document']} B")
    if "long_document_memory" in results:
        print_long_document(results["long_document_memory"])
    print(f"targets: {json.dumps({k: v['met'] for k, v in results['targets'].items()})}; -> {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
