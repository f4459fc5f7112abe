"""Streaming benchmark: the training stages' data path with `train.stream` (token shards read from the artifact
store while training, through a bounded cache) against the full download before the first step, side by side in
one run, at 1x and 8x the sample's tokens.

Run from the repository root (about 3 minutes on a 2-core machine):

    .venv/bin/python benchmarks/bench_stream.py
    .venv/bin/python benchmarks/bench_stream.py --scales 1 8 --steps 4 --cache-mb 1

Setup (untimed): a real SeaweedFS (`weed mini`, loopback) holding a committed tokens artifact and a mixture
artifact (its order: one seeded permutation of every row, as tasks/mixture.py writes it). 1x is the demo's
mixture: pipeline.yaml's `mixture.budget_tokens` (900,000) in rows of `tokenize.seq_len` + 1 (256 + 1) ids =
3,502 sequences; the shards hold 512 sequences each, written in record batches of 0-3 rows (as the tokens stage
writes one document's rows at a time), uint16 ids of a learnable pattern. 8x: eight times the rows.

Measured per scale and mode, on the demo's model (llama-tiny, one rank, ZeRO-1, fp32, micro-batch 8):
- first_step_s: from the stage's start (`fetch_data`: the order downloaded, and the shards downloaded and
  verified in full mode) to the trainer's first step line, through `run_training` (the trainer's start, DeepSpeed
  initialisation and the first optimizer step included);
- data_ready_s: the data part of it: the full download's seconds, or the streaming trainer's wait for its first
  micro-batch (`first_batch_s`);
- peak_disk_mb: the most bytes of token shards on local disk during the run, sampled every 20 ms by a thread
  walking the run's shard directories (full: shards/ and val/; streaming: cache/), and the cache's own count;
- the bytes read from the store (whole shards, ranged reads) and the losses, which must be the same in both modes.

The machine is shared with other jobs, so the modes run side by side at each scale and only their relation is
meaningful; nothing here is a target asserted by the tests. Writes benchmarks/results/stream.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from shared_machine import machine_info, wait_until_quiet  # noqa: E402  benchmarks/ is sys.path[0]

RESULTS = REPO / "benchmarks" / "results" / "stream.json"
SEQ_LEN, SEQUENCES_1X, SHARD_ROWS, VOCAB = 256, 3502, 512, 8192


def log(message: str) -> None:
    print(f"[bench_stream] {message}", flush=True)


def tokens_artifact(store, scale: int, scratch: Path) -> dict:
    """A committed tokens artifact of `scale` x 3,502 train sequences (and a small val split)."""
    import numpy as np

    from corpus.token_shards import TokenShardWriter, token_schema
    from pipeline.artifacts import ArtifactWriter, StageSpec

    spec = StageSpec(stage="tokenize", artifact="tokens/bench", code_version="bench", config={"scale": scale},
                     inputs={})
    writer = ArtifactWriter(store, spec)
    files: list[dict] = []
    rng = np.random.default_rng(scale)
    for split, rows in (("train", SEQUENCES_1X * scale), ("val", 64)):
        def closed(path: Path, count: int, tokens: int, documents: int, split=split) -> None:
            files.append(writer.put_file(f"{split}/{path.name}", path, "tokens", split=split, source="bench",
                                         sequences=count, tokens=tokens, documents=documents))

        out = TokenShardWriter(scratch / f"{scale}" / split, "u0", token_schema(SEQ_LEN, np.dtype(np.uint16), False),
                               "bench", SHARD_ROWS, closed, pad_id=1, eos_id=0)
        written = 0
        while written < rows:
            take = min(int(rng.integers(0, 4)), rows - written)
            starts, steps = rng.integers(2, VOCAB, take), rng.integers(1, 4, take)
            ids = ((starts[:, None] + steps[:, None] * np.arange(SEQ_LEN + 1)) % (VOCAB - 2) + 2).astype(np.uint16)
            out.write(ids, np.ones_like(ids, dtype=np.uint8), padding=np.zeros(take, np.int64))
            written += take
        out.close()
    summary = {"seq_len": SEQ_LEN, "dtype": "uint16", "eos_id": 0, "pad_id": 1, "vocab_size": VOCAB}
    return writer.commit(files, {"sequences": SEQUENCES_1X * scale}, summary=summary)


def mixture_artifact(store, tokens: dict, scratch: Path) -> dict:
    """A committed mixture over every train row of `tokens`, in one seeded permutation."""
    import numpy as np

    from pipeline.artifacts import ArtifactWriter, StageSpec
    from tasks.training import write_order

    shards = [{"artifact": tokens["artifact"], "version": tokens["version"], "path": entry["path"],
               "sequences": entry["sequences"]} for entry in tokens["files"] if entry.get("split") == "train"]
    order = np.array([(index, row) for index, shard in enumerate(shards) for row in range(shard["sequences"])])
    order = order[np.random.default_rng(0).permutation(len(order))]
    writer = ArtifactWriter(store, StageSpec(stage="mixture", artifact="mixture", code_version="bench",
                                             config={}, inputs={"tokens": tokens["version"]}))
    path = write_order(order, scratch / f"order-{tokens['version']}.arrow")
    files = [writer.put_file("order.arrow", path, "order", rows=len(order))]
    return writer.commit(files, {"sequences": len(order)}, summary={"seq_len": SEQ_LEN, "shards": shards})


class DiskWatch:
    """The most bytes under some directories, sampled every 20 ms on a thread."""

    def __init__(self, directories: list[Path]):
        self.directories, self.peak = directories, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _size(self) -> int:
        total = 0
        for directory in self.directories:
            for path in list(directory.rglob("*")) if directory.exists() else []:
                try:
                    total += path.stat().st_size if path.is_file() else 0
                except FileNotFoundError:  # evicted while walking
                    pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._size())
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._size())
        return self.peak


def run_mode(store, mixture: dict, validation: list[dict], stream: bool, steps: int, cache_mb: float,
             scratch: Path) -> dict:
    from model.families import hf_config_dict, resolve_size
    from pipeline.config import TrainConfig
    from tasks.training import TrainingJob, fetch_data, run_training, val_shards

    settings = TrainConfig(steps=steps, micro_batch=8, warmup_steps=1, zero_stage=1, checkpoint_every=10 ** 6,
                           log_every=1, threads_per_process=1, stream=stream, cache_gb=cache_mb / 1000)
    config = hf_config_dict(resolve_size("llama-tiny", {"n_positions": SEQ_LEN}), VOCAB, 0, 1)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="run-") as directory:
        work = Path(directory)
        watch = DiskWatch([work / "shards", work / "val", work / "cache"])
        marks: dict[str, float] = {}
        lines: list[str] = []

        def progress(message: str) -> None:
            if " step 1/" in message and "first_step" not in marks:
                marks["first_step"] = time.perf_counter()
            lines.append(message)

        started = time.perf_counter()
        data = fetch_data(store, mixture, work, val_shards(validation), settings)
        fetched = time.perf_counter()
        job = TrainingJob("pretrain", settings, config, steps, data)
        metrics, _sync = run_training(job, store, f"bench-stream/{'s' if stream else 'f'}/{work.name}", work,
                                      progress)
        peak = watch.stop()
    streamed = [json.loads(line)["stream"] for line in lines if line.startswith('{"stream"')]
    result = {"mode": "streaming" if stream else "full download", "first_step_s": round(marks["first_step"] - started, 2),
              "data_ready_s": round(streamed[0]["first_batch_s"] if streamed else fetched - started, 3),
              "peak_disk_mb": round(peak / 1e6, 3), "losses": [m["loss"] for m in metrics]}
    if streamed:
        result.update({"cache_limit_mb": round(streamed[0]["limit_bytes"] / 1e6, 3),
                       "cache_peak_mb": round(streamed[0]["peak_cached_bytes"] / 1e6, 3),
                       "whole_shard_reads": streamed[0]["downloads"],
                       "whole_shard_mb": round(streamed[0]["downloaded_bytes"] / 1e6, 3),
                       "ranged_reads": streamed[0]["range_reads"], "evictions": streamed[0]["evictions"]})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cache-mb", type=float, default=1.0, help="train.cache_gb of the streaming runs, in MB")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from pipeline.seaweed import start_seaweed, stop_seaweed
    from pipeline.storage import S3Store

    busy, waited = wait_until_quiet(60)
    log(f"CPUs {busy:.0%} busy before the run (waited {waited} s)")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as directory:
        scratch = Path(directory)
        server = start_seaweed(scratch / "seaweed")
        os.environ.update(server.env())
        try:
            store = S3Store("bench-stream", "p", endpoint_url=server.endpoint_url)
            store.ensure_bucket()
            for scale in args.scales:
                tokens = tokens_artifact(store, scale, scratch)
                mixture = mixture_artifact(store, tokens, scratch)
                data_mb = sum(e["bytes"] for e in tokens["files"] if e.get("split") == "train") / 1e6
                log(f"{scale}x: {mixture['counts']['sequences']:,} sequences in "
                    f"{len(mixture['summary']['shards'])} shards, {data_mb:.2f} MB")
                for stream in (False, True):
                    result = {"scale": scale, "sequences": mixture["counts"]["sequences"],
                              "shards": len(mixture["summary"]["shards"]), "data_mb": round(data_mb, 3),
                              **run_mode(store, mixture, [tokens], stream, args.steps, args.cache_mb, scratch)}
                    log(json.dumps({k: v for k, v in result.items() if k != "losses"}))
                    results.append(result)
        finally:
            stop_seaweed(server)
    by = {(r["scale"], r["mode"]): r for r in results}
    comparison = {f"{scale}x": {"same_losses": by[(scale, "streaming")]["losses"] == by[(scale, "full download")]["losses"],
                                "first_step_streaming_over_full": round(by[(scale, "streaming")]["first_step_s"] /
                                                                        by[(scale, "full download")]["first_step_s"], 3),
                                "disk_streaming_over_full": round(by[(scale, "streaming")]["peak_disk_mb"] /
                                                                  by[(scale, "full download")]["peak_disk_mb"], 3)}
                  for scale in args.scales}
    report = {"benchmark": "stream", "machine": machine_info(REPO, ("torch", "deepspeed", "pyarrow", "boto3")), "busy_before": busy,
              "setup": {"seq_len": SEQ_LEN, "sequences_1x": SEQUENCES_1X, "shard_rows": SHARD_ROWS,
                        "steps": args.steps, "micro_batch": 8, "model": "llama-tiny", "cache_mb": args.cache_mb,
                        "store": "SeaweedFS (weed mini) on loopback"},
              "results": results, "comparison": comparison}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out}: {json.dumps(comparison)}")


if __name__ == "__main__":
    main()
