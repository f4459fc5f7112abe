"""The summary table of `make bench`: for every stage its throughput per core and peak memory next to
the reference measured in the same run, and the ratio — read from benchmarks/results/*.json and
written between the summary markers at the top of benchmarks/README.md (the last step of `make bench`).

    .venv/bin/python benchmarks/summary.py            # rewrite the table in benchmarks/README.md
    .venv/bin/python benchmarks/summary.py --print    # print it only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
START, END = "<!-- summary:start -->", "<!-- summary:end -->"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def stage_peak(stage: str) -> str:
    """A stage's peak memory (its process and workers) in the end-to-end run at the largest corpus."""
    pipeline = load("pipeline")
    if pipeline is None:
        return "—"
    run = max((r for r in pipeline["results"] if r["workers"] == 1), key=lambda r: r["scale"])
    peak = run["stages"].get(stage, {}).get("peak_tree_rss_mb")
    return f"{peak:.0f} MB ({run['scale']}x run)" if peak is not None else "—"


def rows() -> list[tuple[str, str, str, str, str, str]]:
    """(stage, ours per core, peak memory, reference, reference per core, ratio)."""
    out = []
    if ingest := load("ingest"):
        ours, ceiling = ingest["measurements"]["ingest_w1"], ingest["measurements"]["ceiling"]
        out.append(("ingest (1 worker)", f"{ours['mb_per_s'] * ours['seconds_median'] / ours['cpu_seconds_median']:.1f} MB/s"
                    f" = {ours['docs_per_s'] * ours['seconds_median'] / ours['cpu_seconds_median']:,.0f} docs/s",
                    f"{ours['worker_peak_rss_mb']:.0f} MB", "bare FastWARC iteration",
                    f"{ceiling['mb_per_s']:.1f} MB/s = {ceiling['docs_per_s']:,.0f} docs/s",
                    f"{ingest['ratios']['ingest_w1_over_ceiling']['value']:.2f} (wall)"))
    if clean := load("clean_langid"):
        speed = clean["extraction"]["throughput"]
        out.append(("clean (resiliparse + normalise)", f"{speed['gold_resiliparse']['per_core_s']:,.0f} pages/s",
                    stage_peak("clean/web"),
                    "trafilatura (fast) on the same pages", f"{speed['gold_trafilatura']['per_core_s']:,.0f} pages/s",
                    f"{speed['gold_resiliparse']['per_core_s'] / speed['gold_trafilatura']['per_core_s']:.1f}"))
        langid = clean["langid"]["throughput"]
        out.append(("langid", f"{langid['documents_product']['per_core_s']:,.0f} docs/s", stage_peak("langid/web"),
                    "bare fastText predict", f"{langid['documents_ceiling']['per_core_s']:,.0f} docs/s",
                    f"{clean['langid']['ratios']['documents_product_over_ceiling']:.2f}"))
    if dedup := load("dedup"):
        speed = dedup["speed"]
        out.append(("dedup (MinHash signatures)", f"{speed['ours']['per_core_s']:,.0f} docs/s",
                    f"+{dedup['memory_marginal_bytes_per_document']:.0f} B per document; {stage_peak('dedup')}",
                    "datasketch per-shingle update", f"{speed['datasketch_update']['per_core_s']:,.0f} docs/s",
                    f"{speed['ours_over_datasketch_update']:.1f}"))
        out.append(("filter (whole rule chain)", f"{dedup['filter']['filter_chain']['per_core_s']:,.0f} docs/s",
                    stage_peak("filter/web"),
                    "— (no reference implementation run)", "—", "—"))
    if tokenize := load("tokenize"):
        figures, memory = tokenize["figures"], tokenize["memory"]
        out.append(("tokens (1 worker)", f"{figures['stage_w1']['tokens_per_s']:,.0f} tokens/s",
                    f"{memory[0]['peak_rss_mb']:.0f} MB", "bare tokenizers encode_batch",
                    f"{figures['ceiling']['tokens_per_s']:,.0f} tokens/s", f"{tokenize['ratios']['w1_over_ceiling']:.2f}"))
    if train := load("train"):
        runs = {(run["preset"], run["config"]): run for run in train["runs"]}
        for preset in train["setup"]["presets"]:
            zero1, plain = runs.get((preset, "zero1:fp32")), runs.get((preset, "plain:fp32"))
            if zero1 and plain:
                out.append((f"pretrain step, {preset} (DeepSpeed ZeRO-1, fp32)", f"{zero1['tokens_per_s']:,.0f} tokens/s",
                            f"{zero1['peak_memory_mb']:.0f} MB (plain loop: {plain['peak_memory_mb']:.0f} MB)",
                            "plain PyTorch loop, same model class and batches", f"{plain['tokens_per_s']:,.0f} tokens/s",
                            f"{zero1['tokens_per_s'] / plain['tokens_per_s']:.2f}"))
    if stream := load("stream"):
        by = {(r["scale"], r["mode"]): r for r in stream["results"]}
        biggest = max(scale for scale, _ in by)
        ours, full = by[(biggest, "streaming")], by[(biggest, "full download")]
        out.append((f"training data, streamed ({biggest}x sample, cache {ours['cache_limit_mb']:g} MB)",
                    f"first step after {ours['first_step_s']:.1f} s (data ready {ours['data_ready_s']:.2f} s)",
                    f"{ours['peak_disk_mb']:.2f} MB on disk (1x: {by[(1, 'streaming')]['peak_disk_mb']:.2f} MB)"
                    if (1, "streaming") in by else f"{ours['peak_disk_mb']:.2f} MB on disk",
                    "full download before the first step",
                    f"{full['first_step_s']:.1f} s (data ready {full['data_ready_s']:.2f} s), "
                    f"{full['peak_disk_mb']:.2f} MB on disk",
                    f"disk {ours['peak_disk_mb'] / full['peak_disk_mb']:.2f}; same losses: "
                    f"{'yes' if ours['losses'] == full['losses'] else 'NO'}"))
    if pipeline := load("pipeline"):
        results = {(r["scale"], r["workers"]): r for r in pipeline["results"]}
        biggest = max(scale for scale, _ in results)
        one, two = results[(biggest, 1)], results.get((biggest, 2))
        small = min(scale for scale, workers in results if workers == 1)  # 1x, unless a --scaling-only run
        base = results[(small, 1)]
        scaling = f"{one['seconds'] / two['seconds']:.2f}x faster with 2 workers" if two else ""
        if small < biggest:
            reference = (f"the same at {small}x / with 2 workers",
                         f"{base['seconds']:.1f} s at {small}x, {one['seconds']:.1f} s at {biggest}x",
                         f"time {one['seconds'] / base['seconds']:.2f}x for {biggest // small}x the data; " + scaling)
        else:  # a --scaling-only run: the largest corpus with 1 and 2 workers
            reference = ("the same with 2 workers", f"{one['seconds']:.1f} s → {two['seconds']:.1f} s" if two else "—",
                         scaling or "—")
        out.append((f"all data stages, WARC → tokens ({biggest}x corpus)",
                    f"{one['warc_mb_per_core_second']:.2f} MB/s", f"{one['peak_tree_rss_mb']:.0f} MB", *reference))
    out += peer_rows()
    return out


def tree_memory(run: dict) -> str:
    """Peak summed RSS of a run's process tree (and PSS, which counts shared pages once, where measured)."""
    pss = run.get("peak_tree_pss_mb")
    return f"{run['peak_tree_rss_mb']:.0f} MB" + (f" (PSS {pss:.0f} MB)" if pss else "")


def peer_rows() -> list[tuple[str, str, str, str, str, str]]:
    """Our FineWeb-style chain against datatrove's on the same WARC (bench_peer.py), 1 and 2 workers."""
    peer = load("peer")
    if peer is None:
        return []
    results, out = peer["results"], []
    for ours, theirs, label in (("ours_w1", "datatrove_t1", "1 worker / 1 task"),
                                ("ours_w2", "datatrove_t2", "2 workers / 2 tasks")):
        if ours not in results or theirs not in results:
            continue
        a, b = results[ours], results[theirs]
        kept = peer.get("overlap", {}).get(f"{ours} vs {theirs}")
        both = f", {kept['both']:,} in both" if kept else ""
        out.append((f"WARC → filtered documents, FineWeb chain ({label}; {a['documents_in']:,} Debian pages)",
                    f"{a['documents_per_cpu_s']:,.0f} docs/s", tree_memory(a),
                    f"datatrove 0.10.1 FineWeb chain, same WARC ({tree_memory(b)})",
                    f"{b['documents_per_cpu_s']:,.0f} docs/s",
                    f"{b['cpu_ms_per_document'] / a['cpu_ms_per_document']:.1f}× less CPU per document; kept "
                    f"{a['documents_out']:,} vs {b['documents_out']:,}{both}"))
    return out


def table() -> str:
    lines = ["| stage | ours, per core | peak memory | reference (same run) | reference, per core | ratio |",
             "|---|---:|---:|---|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the table, do not write the README")
    args = parser.parse_args(argv)
    text = table()
    if args.print:
        print(text)
        return 0
    readme = HERE / "README.md"
    content = readme.read_text()
    if START not in content:
        raise SystemExit(f"{readme}: no {START} marker")
    before, rest = content.split(START, 1)
    _, after = rest.split(END, 1)
    readme.write_text(f"{before}{START}\n{text}\n{END}{after}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
