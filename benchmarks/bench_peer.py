"""Against datatrove: its FineWeb chain and ours on the same WARC, on the same machine, in the same run.

The corpus is benchmarks/debian_warc.py's WARC (6,597 real Debian documentation pages in many
languages, 37 MB). Runs, each a fresh subprocess measured the same way:

- `datatrove_t1`: datatrove 0.10.1 in its own virtualenv (benchmarks/.cache/peer-venv, `make
  bench-peer` builds it): WarcReader → URLFilter → Trafilatura(favour_precision=True) →
  LanguageFilter(["en"]) → GopherRepetitionFilter → GopherQualityFilter →
  C4QualityFilter(filter_no_terminal_punct=False) → FineWebQualityFilter → JsonlWriter,
  LocalPipelineExecutor with 1 task (benchmarks/peer/run_datatrove.py);
- `ours_w1`: ingest → clean → langid (keep en, drop the rest) → filter with the same four rule sets
  (gopher_repetition, gopher_quality, c4 with filter_no_terminal_punct off, fineweb; PII redaction
  off), 1 worker, through the stage cores exactly as the flow's tasks call them, into a local store;
- `ours_full_w1`: the same with dedup, the tokenizer and the tokens stage added (WARC → token shards);
- `datatrove_t2` and `ours_w2`: 2 tasks / 2 workers on the WARC cut in two at a record boundary.

For each: CPU seconds of the whole process tree (this process is a child subreaper, so orphaned
fork-server workers and datatrove's extractor children are reaped here and counted in
RUSAGE_CHILDREN), wall time, documents in and out, the peak of the summed RSS (and PSS) of the tree
(sampled every 50 ms) and CPU per document. Both outputs are kept (benchmarks/.cache/peer-runs/) and compared
by URL. Results: benchmarks/results/peer.json.

    make bench-peer                                          # builds the peer's venv and the WARC first
    .venv/bin/python benchmarks/bench_peer.py                # every run
    .venv/bin/python benchmarks/bench_peer.py --only datatrove_t1 ours_w1
    .venv/bin/python benchmarks/bench_peer.py --profile      # also cProfile ours_w1 (results/peer_profile.txt)
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(REPO), str(HERE)]

from shared_machine import busy_fraction, machine_info, wait_until_quiet  # noqa: E402

CACHE = HERE / ".cache"
PEER_PYTHON = CACHE / "peer-venv" / "bin" / "python"
PEER_ASSETS = CACHE / "peer-assets"
RUNS_DIR = CACHE / "peer-runs"
WARC_CACHE = CACHE / "debian-warc"
RUNS = ("datatrove_t1", "ours_w1", "ours_full_w1", "datatrove_t2", "ours_w2")
MATCHED = ("ingest/web", "clean/web", "langid/web", "filter/web")
FULL = ("ingest/web", "clean/web", "langid/web", "dedup", "filter/web", "tokenizer", "tokens/web")
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process (not init), so reaping them here counts their CPU."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def pss_bytes(pid: int) -> int:
    """Proportional set size (pages shared with other processes counted by share), from smaps_rollup."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class TreeMemory:
    """Peak summed RSS and PSS of this process's descendants, sampled every `every` seconds. Summed RSS
    counts pages a forked child shares with its parent (datatrove's extractor sandbox, fork-server
    workers) once per process; PSS splits them."""

    def __init__(self, every: float = 0.05):
        import psutil

        self.process, self.every, self.peak, self.peak_pss = psutil.Process(), every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = pss = 0
            for proc in self.process.children(recursive=True):
                try:
                    total += proc.memory_info().rss
                    pss += pss_bytes(proc.pid)
                except psutil.Error:
                    pass
            self.peak, self.peak_pss = max(self.peak, total), max(self.peak_pss, pss)
            time.sleep(self.every)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def reap_orphans(limit: float = 60.0) -> int:
    """Wait for every remaining descendant (fork servers exit once their parent is gone); returns how many."""
    import psutil

    reaped, deadline = 0, time.monotonic() + limit
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid:
            reaped += 1
            continue
        if time.monotonic() > deadline:
            for child in psutil.Process().children():
                child.kill()
            deadline = float("inf")
        time.sleep(0.05)


def measure(command: list[str], log: Path, env: dict | None = None) -> dict:
    """Run `command` to the end; CPU of its whole tree, wall time, peak tree RSS, and its last stdout line."""
    reap_orphans(5)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with TreeMemory() as memory, open(log, "w") as errors:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=errors, text=True, cwd=REPO,
                              env={**os.environ, **(env or {})})
        wall = time.perf_counter() - started
        orphans = reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} … failed ({done.returncode}); see {log}")
    cpu_user, cpu_sys = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu_user + cpu_sys, 2), "cpu_user_s": round(cpu_user, 2),
            "cpu_sys_s": round(cpu_sys, 2), "peak_tree_rss_mb": round(memory.peak / 2**20, 1),
            "peak_tree_pss_mb": round(memory.peak_pss / 2**20, 1),
            "orphans_reaped": orphans, "result": json.loads(done.stdout.strip().splitlines()[-1])}


# --- ours (runs in a child process of the project's venv) ------------------------------------------------------

def ours_config(corpus: Path, workers: int, work: Path):
    from pipeline.config import load_config

    overrides = {"storage.backend": "local", "storage.local_root": str(work / "store"),
                 "sources": [{"name": "web", "kind": "warc", "location": str(corpus)}],
                 "mixture.weights": {"web": 1.0}, "cpt.enabled": False, "ift.enabled": False,
                 "ingest.unit_max_mb": 16,  # one work unit per file of the 2-way cut, as datatrove's tasks
                 "langid.keep": ["en"], "langid.action": "drop", "langid.threshold": 0.65,
                 "filter.rules": ["gopher_repetition", "gopher_quality", "c4", "fineweb"],
                 "filter.per_language": {}, "filter.c4": {"filter_no_terminal_punct": False},
                 "filter.pii": {"emails": False, "ip_addresses": False, "phone_numbers": False}}
    for section in ("ingest", "clean", "langid", "dedup", "filter", "tokenize"):
        overrides[f"{section}.workers"] = workers
    return load_config(REPO / "pipeline.yaml", overrides)


def ours_child(corpus: Path, workers: int, work: Path, full: bool) -> dict:
    """Build the stages with their cores, as the flow's tasks call them (tests/reliability/stages.py `plan`);
    the matched chain feeds langid's artifact straight to filter, as the flow does without dedup."""
    import tempfile

    from pipeline.models import file_sha256
    from pipeline.sources import list_inputs
    from pipeline.storage import LocalStore
    from tasks.clean import clean_spec, run_clean
    from tasks.filter import filter_spec, resolve_rule_inputs, run_filter
    from tasks.ingest import ingest_spec, run_ingest
    from tasks.langid import langid_spec, resolve_model_path, run_langid
    from tests.reliability.stages import plan

    config = ours_config(corpus, workers, work)
    store = LocalStore(work / "store", config.storage.prefix)
    quiet = lambda _message: None  # noqa: E731
    stages, done = {}, {}
    started = time.perf_counter()
    cpu_started = time.process_time()

    def clocked(began: float, cpu_began: float) -> dict:
        # CPU of this process: with 1 worker every unit runs in it, so this is the stage's whole CPU
        return {"wall": round(time.perf_counter() - began, 3), "cpu": round(time.process_time() - cpu_began, 3)}

    if full:
        for stage in FULL:  # plan() skips what is built: each call builds the next stage only
            began, cpu_began = time.perf_counter(), time.process_time()
            done = plan(config, store, REPO, stage)
            stages[stage] = clocked(began, cpu_began)
    else:
        source = config.source("web")

        def timed(name: str, build) -> None:
            began, cpu_began = time.perf_counter(), time.process_time()
            done[name] = build()
            stages[name] = clocked(began, cpu_began)

        files = list_inputs(source, config.storage, base_dir=REPO)
        spec = ingest_spec(source, files, config.ingest)
        timed("ingest/web", lambda: run_ingest(source, config.ingest, config.storage, store, spec, files, quiet))
        spec_c = clean_spec("web", config.clean, done["ingest/web"])
        timed("clean/web", lambda: run_clean("web", config.clean, store, spec_c, done["ingest/web"], quiet))
        digest = file_sha256(resolve_model_path(config.langid))
        spec_l = langid_spec("web", config.langid, done["clean/web"], digest)
        timed("langid/web", lambda: run_langid("web", config.langid, store, spec_l, done["clean/web"], quiet))
        with tempfile.TemporaryDirectory() as scratch:
            inputs = resolve_rule_inputs(config.filter, store, REPO, Path(scratch))
            spec_f = filter_spec("web", config.filter, done["langid/web"], inputs)
            timed("filter/web", lambda: run_filter("web", config.filter, store, spec_f, done["langid/web"], quiet,
                                                   inputs))
    counts = {name: manifest["counts"] for name, manifest in done.items()}
    # stage_seconds: {stage: {wall, cpu}}; imports and start-up come before `started`
    return {"seconds": round(time.perf_counter() - started, 3), "cpu_seconds_in_stages": round(
                time.process_time() - cpu_started, 3), "stage_seconds": stages,
            "documents_in": counts["ingest/web"].get("documents"),
            "documents_out": counts["filter/web"].get("documents"),
            "funnel": {name: counts[name].get("documents") for name in counts},
            "removed": {name: counts[name].get("removed") for name in counts if counts[name].get("removed")},
            "tokens": sum(split["tokens"] for split in counts["tokens/web"]["splits"].values())
            if "tokens/web" in counts else None,
            "filter": {"artifact": done["filter/web"]["artifact"], "version": done["filter/web"]["version"]}}


def ours_kept_urls(work: Path, filter_ref: dict) -> list[str]:
    """The URLs of the documents ours kept (read from the committed filter artifact)."""
    import tempfile

    import pyarrow.parquet as pq

    from pipeline.artifacts import fetch_verified, files_with_role, read_manifest
    from pipeline.storage import LocalStore

    store = LocalStore(work / "store", ours_config(work, 1, work).storage.prefix)
    manifest = read_manifest(store, filter_ref["artifact"], filter_ref["version"])
    urls = []
    with tempfile.TemporaryDirectory() as scratch:
        for entry in files_with_role(manifest, "documents"):
            urls += pq.read_table(fetch_verified(store, manifest, entry, Path(scratch)), columns=["url"])["url"].to_pylist()
    return urls


def datatrove_kept_urls(out: Path) -> list[str]:
    urls = []
    for path in sorted((out / "output").glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as handle:
            urls += [json.loads(line)["metadata"]["url"] for line in handle]
    return urls


# --- the runs -----------------------------------------------------------------------------------------------------

def run_one(name: str, warc: dict, trafilatura_timeout: float = 1.0) -> tuple[dict, list[str]]:
    two = name.endswith("2")
    corpus = WARC_CACHE / ("halves" if two else "full")
    work = RUNS_DIR / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if name.startswith("datatrove"):
        measured = measure([str(PEER_PYTHON), str(HERE / "peer" / "run_datatrove.py"), "run", "--assets",
                            str(PEER_ASSETS), "--input", str(corpus), "--out", str(work), "--tasks", "2" if two else "1",
                            "--trafilatura-timeout", str(trafilatura_timeout)],
                           work / "stderr.log")
        result = measured.pop("result")
        urls = datatrove_kept_urls(work)
        documents_in = result["documents_in"]
        # Trafilatura gives up on a page after 1 s of wall time (datatrove's default): on a busy machine
        # pages are dropped that a quiet one keeps, and their CPU is not spent
        timeouts = (work / "stderr.log").read_text(errors="replace").count("Timeout while cleaning record text")
        measured.update({"extractor_timeouts": timeouts, "trafilatura_timeout_s": trafilatura_timeout,
                         "documents_in": documents_in["total"] if isinstance(documents_in, dict) else documents_in,
                         "documents_out": len(urls), "steps": [
                             {"name": step["name"].split(": ")[-1], "seconds": round(step["seconds"] or 0, 2),
                              "forwarded": step["stats"].get("forwarded")} for step in result["steps"]]})
    else:
        measured = measure([sys.executable, __file__, "--child", str(corpus), "2" if two else "1", str(work),
                            "full" if "full" in name else "matched"], work / "stderr.log",
                           env={"PREFECT_LOGGING_LEVEL": "WARNING"})
        result = measured.pop("result")
        urls = ours_kept_urls(work, result["filter"])
        measured.update({key: result[key] for key in ("documents_in", "documents_out", "funnel", "removed",
                                                       "tokens", "stage_seconds", "filter")},
                        cpu_s_in_stages=result["cpu_seconds_in_stages"])
    measured["documents_out"] = len(urls) if measured["documents_out"] is None else measured["documents_out"]
    measured["cpu_ms_per_document"] = round(1000 * measured["cpu_s"] / warc["responses"], 3)
    measured["documents_per_cpu_s"] = round(warc["responses"] / measured["cpu_s"], 1)
    measured["warc_mb_per_cpu_s"] = round(warc["bytes"] / 2**20 / measured["cpu_s"], 3)
    return measured, urls


def kept_urls(name: str, result: dict) -> list[str]:
    """The kept URLs of an earlier run, from its output kept under benchmarks/.cache/peer-runs/."""
    if name.startswith("datatrove"):
        return datatrove_kept_urls(RUNS_DIR / name)
    return ours_kept_urls(RUNS_DIR / name, result["filter"])


def overlap(a: list[str], b: list[str]) -> dict:
    sa, sb = set(a), set(b)
    return {"datatrove": len(sa), "ours": len(sb), "both": len(sa & sb), "only_datatrove": len(sa - sb),
            "only_ours": len(sb - sa), "examples_only_datatrove": sorted(sa - sb)[:5],
            "examples_only_ours": sorted(sb - sa)[:5]}


def profile_ours(out: Path) -> None:
    """cProfile ours_w1 in this process (1 worker runs every unit in-process); the top of the profile."""
    import cProfile
    import io
    import pstats

    work = RUNS_DIR / "ours_w1-profile"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    import tasks.clean, tasks.filter, tasks.ingest, tasks.langid  # noqa: E401,F401  (imports out of the profile)
    profiler = cProfile.Profile()
    profiler.enable()
    result = ours_child(WARC_CACHE / "full", 1, work, full=False)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(35)
    out.write_text(f"ours_w1 under cProfile, stage seconds {result['stage_seconds']}\n" + text.getvalue())
    print(f"profile: {out} (stage seconds under the profiler: {result['stage_seconds']})")


def summary(results: dict, overlaps: dict) -> list[str]:
    base = results.get("datatrove_t1")
    lines = ["| run | wall s | CPU s (tree) | docs in → kept | CPU ms per doc | docs per CPU-s | peak RSS (tree) | "
             "datatrove CPU per doc ÷ this |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    for name in RUNS:
        if name not in results:
            continue
        r = results[name]
        peer = results.get("datatrove_t2" if name.endswith("2") else "datatrove_t1", base)
        ratio = f"{peer['cpu_ms_per_document'] / r['cpu_ms_per_document']:.1f}×" if peer and name.startswith("ours") else "—"
        lines.append(f"| {name} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['documents_in']:,} → {r['documents_out']:,} | "
                     f"{r['cpu_ms_per_document']:.2f} | {r['documents_per_cpu_s']:,.0f} | {r['peak_tree_rss_mb']:,.0f} MB"
                     + (f" (PSS {r['peak_tree_pss_mb']:,.0f})" if r.get("peak_tree_pss_mb") else "") + " | "
                     f"{ratio} |")
    for name, o in overlaps.items():
        lines.append(f"\nkept by URL ({name}): datatrove {o['datatrove']:,}, ours {o['ours']:,}, both {o['both']:,}, "
                     f"only datatrove {o['only_datatrove']:,}, only ours {o['only_ours']:,}")
    return lines


def write_results(out: Path, warc: dict, results: dict, urls: dict, previous: dict) -> tuple[list[str], dict]:
    """peer.json from the runs so far (written after every run, so a long run keeps what it measured)."""
    overlaps = dict(previous.get("overlap", {}))
    ratios = {}
    for ours, peer in (("ours_w1", "datatrove_t1"), ("ours_full_w1", "datatrove_t1"), ("ours_w2", "datatrove_t2")):
        for name in (ours, peer):
            if name not in urls and name in results and (RUNS_DIR / name).exists():
                urls[name] = kept_urls(name, results[name])
        if ours in urls and peer in urls:
            overlaps[f"{ours} vs {peer}"] = overlap(urls[peer], urls[ours])
        if ours in results and peer in results:
            ratios[f"{peer}_over_{ours}_cpu_per_document"] = round(
                results[peer]["cpu_ms_per_document"] / results[ours]["cpu_ms_per_document"], 2)
            ratios[f"{peer}_over_{ours}_wall"] = round(results[peer]["wall_s"] / results[ours]["wall_s"], 2)
    table = summary(results, overlaps)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": machine_info(REPO, ("resiliparse", "fasttext-numpy2", "pyarrow", "datasketch", "tokenizers")),
        "peer": {"requirements": "benchmarks/peer/requirements.txt", "datatrove": "0.10.1",
                 "lid": "lid.176.ftz (quantised) seeded where datatrove expects lid.176.bin"},
        "corpus": warc, "results": results, "overlap": overlaps, "ratios": ratios,
        "target_cpu_per_document_ratio": 15, "table": table}, indent=2, ensure_ascii=False))
    return table, ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=RUNS, help="these runs only (the JSON keeps the others' last figures)")
    parser.add_argument("--profile", action="store_true", help="also cProfile ours_w1 into results/peer_profile.txt")
    parser.add_argument("--trafilatura-timeout", type=float, default=1.0,
                        help="datatrove's per-page extraction timeout in wall seconds (its default: 1); raise it on a "
                             "busy machine, where pages time out that a quiet one extracts")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "peer.json")
    parser.add_argument("--child", nargs=4, metavar=("CORPUS", "WORKERS", "WORK", "CHAIN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        corpus, workers, work, chain = args.child
        print(json.dumps(ours_child(Path(corpus), int(workers), Path(work), chain == "full")))
        return 0
    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON}: missing; `make bench-peer` builds the peer's virtualenv")
    from debian_warc import build

    warc = build()
    become_subreaper()
    previous = json.loads(args.out.read_text()) if args.out.exists() and args.only else {}
    results, urls = dict(previous.get("results", {})), {}
    for name in args.only or RUNS:
        busy, waited = wait_until_quiet(30)
        measured, urls[name] = run_one(name, warc, args.trafilatura_timeout)
        measured["others_busy_before"] = busy
        measured["others_busy_after"] = round(busy_fraction(0.5), 3)
        results[name] = measured
        print(f"{name}: {measured['cpu_s']:.1f} CPU-s, {measured['wall_s']:.1f} s wall, "
              f"{measured['documents_in']:,} → {measured['documents_out']:,} documents, "
              f"peak {measured['peak_tree_rss_mb']:,.0f} MB"
              + (f", {measured['extractor_timeouts']} Trafilatura timeouts (pages skipped)"
                 if measured.get("extractor_timeouts") else ""), flush=True)
        table, ratios = write_results(args.out, warc, results, urls, previous)
    print("\n".join(table))
    for key, value in ratios.items():
        print(f"{key}: {value}")
    for name in ("ours_w1", "ours_full_w1"):
        stages = results.get(name, {}).get("stage_seconds", {})
        if stages and all(isinstance(stage, dict) for stage in stages.values()):
            print(f"{name}, CPU s per stage: " + ", ".join(f"{stage} {clock['cpu']:.1f}" for stage, clock in stages.items())
                  + f" (the rest of {results[name]['cpu_s']:.1f}: start-up and imports)")
    print("CPU-seconds are the robust figure on a shared machine; wall times move with other jobs "
          "(others_busy_before/after in the JSON)")
    if args.profile:
        profile_ours(args.out.parent / "peer_profile.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
