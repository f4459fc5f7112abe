"""Tokenize stage: one source's filtered documents -> Arrow IPC shards of packed token sequences
(`tokens/<source>`), train and validation split.

Each work unit (one filtered document shard, in parallel over processes) streams its documents,
encodes them with the tokenizer artifact in batches (`encode_batch`, one thread per worker process:
`workers` is the parallelism), and packs them with corpus.token_shards.Packer into rows of
seq_len + 1 ids, end-of-text after each document. A document goes to the validation split when a hash
of its id falls below `val_fraction`, so the split is the same on every rerun. Each unit's last partial
row per split is padded (see corpus/token_shards.py). Files: `train/<unit>-NNNN.arrow`,
`val/<unit>-NNNN.arrow`, each listed in the manifest with its split, sequences, tokens (without padding)
and documents (end-of-text tokens in it). For the mixture's rehydration, `cluster_sizes/train/<unit>.parquet`
lists per train row, in row order over the unit's train files, the `minhash_cluster_size` of the
document with the most tokens in that row (1 where the documents did not go through dedup).

The core (`tokenize_unit`, `run_tokenize`) knows nothing of Prefect; `tokenize_task` is the thin task.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.artifacts import ArtifactWriter, StageSpec, upload_file
from pipeline.config import TokenizeConfig
from pipeline.storage import ObjectStore
from corpus.token_shards import Packer, TokenShardWriter, token_dtype, token_schema
from pipeline.units import ShardUnit, UnitOutput, read_shard, run_shard_stage

from .stage import RunContext, execute_stage, stage_task, upstream_manifest
from .tokenizer import conventions, id_fraction, tokenizer_json

STAGE = "tokens"
CODE_VERSION = "2"  # 2: cluster_sizes/ for rehydration; the tokenizer's own BOS; a loss mask when pad is eos
SPLITS = ("train", "val")
CLUSTER_SIZES = "cluster_sizes"


@dataclass(frozen=True)
class TokenizeJob:
    source: str
    settings: TokenizeConfig
    store: ObjectStore
    upstream: dict  # the filter manifest
    prefix: str
    tokenizer: str  # tokenizer.json
    eos_id: int
    pad_id: int
    vocab_size: int


@lru_cache(maxsize=2)
def _tokenizer(serialized: str):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(serialized)
    tokenizer.encode_special_tokens = True
    return tokenizer


def new_counts() -> dict[str, Any]:
    """documents_in = documents; per split: documents, tokens (each document's ids plus its end-of-text),
    sequences; and the padding of the partial last rows."""
    return {"documents_in": 0, "documents": 0, "padding_tokens": 0,
            "splits": {split: {"documents": 0, "tokens": 0, "sequences": 0} for split in SPLITS}}


def split_of(doc_id: str, val_fraction: float) -> str:
    return "val" if id_fraction(doc_id, "validation-split") < val_fraction else "train"


class RowOwners:
    """Which document dominates each packed row: fed each document's tag (its cluster size) and tokens in
    packing order, `take(rows)` returns the tag of the document with the most tokens in each of the next
    `rows` rows (ties: the first)."""

    def __init__(self, width: int):
        self.width = width
        self.segments: deque[list[int]] = deque()  # [tag, tokens not yet in a taken row]

    def add(self, tag: int, tokens: int) -> None:
        self.segments.append([tag, tokens])

    def take(self, rows: int) -> np.ndarray:
        tags = np.ones(rows, dtype=np.uint32)
        for row in range(rows):
            need, most = self.width, 0
            while need and self.segments:
                segment = self.segments[0]
                used = min(need, segment[1])
                if used > most:
                    tags[row], most = segment[0], used
                segment[1] -= used
                need -= used
                if not segment[1]:
                    self.segments.popleft()
        return tags


def tokenize_unit(job: TokenizeJob, unit: ShardUnit) -> dict:
    # One encoding thread per worker process: the `workers` setting is the parallelism.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    settings = job.settings
    tokenizer = _tokenizer(job.tokenizer)
    dtype = token_dtype(job.vocab_size)
    # A tokenizer that pads with its end-of-text token needs the mask to tell padding from a real end of text.
    schema = token_schema(settings.seq_len, dtype, settings.loss_mask or job.pad_id == job.eos_id)
    counts = new_counts()
    with UnitOutput(job.store, job.prefix, unit.key, settings, STAGE) as out:
        def writer(split: str) -> TokenShardWriter:
            def upload(path: Path, rows: int, tokens: int, documents: int) -> None:
                out.files.append(upload_file(job.store, job.prefix, f"{split}/{path.name}", path, "tokens",
                                             split=split, source=job.source, sequences=rows, tokens=tokens,
                                             documents=documents))
            return TokenShardWriter(out.scratch / split, unit.key, schema, job.source, settings.shard_max_sequences,
                                    upload, pad_id=job.pad_id, eos_id=job.eos_id)

        writers = {split: writer(split) for split in SPLITS}
        packers = {split: Packer(settings.seq_len + 1, job.eos_id, job.pad_id, dtype) for split in SPLITS}
        owners = RowOwners(settings.seq_len + 1)
        cluster_sizes: list[np.ndarray] = []  # per train row

        def emit(split: str, rows: tuple[np.ndarray, np.ndarray], tail: bool = False) -> None:
            if len(rows[0]):
                counts["splits"][split]["sequences"] += len(rows[0])
                padding = np.zeros(len(rows[0]), np.int64)
                if tail:  # the last, partial row: its padding is where the mask is 0
                    padding[-1] = np.count_nonzero(rows[1][-1] == 0)
                writers[split].write(*rows, padding=padding)
                if split == "train":
                    cluster_sizes.append(owners.take(len(rows[0])))

        for batch in read_shard(job.store, job.upstream, unit.entry, out.scratch,
                                columns=["id", "text", "minhash_cluster_size"], batch_rows=settings.batch_documents):
            ids, texts, sizes = (batch.column(index).to_pylist() for index in range(3))
            # The tokenizer's own special tokens (a checkpoint's BOS) are added; the end of text is ours to add once.
            for doc_id, size, encoding in zip(ids, sizes, tokenizer.encode_batch(texts, add_special_tokens=True)):
                split = split_of(doc_id, settings.val_fraction)
                document = encoding.ids[:-1] if encoding.ids and encoding.ids[-1] == job.eos_id else encoding.ids
                counts["documents_in"] += 1
                counts["documents"] += 1
                counts["splits"][split]["documents"] += 1
                counts["splits"][split]["tokens"] += len(document) + 1
                if split == "train":
                    owners.add(size or 1, len(document) + 1)
                emit(split, packers[split].add(document))
        for split in SPLITS:
            tail = packers[split].finish()
            if len(tail[0]):
                counts["padding_tokens"] += int(np.count_nonzero(tail[1][0] == 0))
            emit(split, tail, tail=True)
            writers[split].close()
        if cluster_sizes:
            path = out.scratch / f"{unit.key}.parquet"
            pq.write_table(pa.table({"cluster_size": np.concatenate(cluster_sizes)}), path, compression="zstd")
            out.files.append(upload_file(job.store, job.prefix, f"{CLUSTER_SIZES}/train/{unit.key}.parquet", path,
                                         CLUSTER_SIZES, split="train", unit=unit.key,
                                         sequences=int(sum(map(len, cluster_sizes)))))
        files = out.close()
    return {"unit": unit.key, "files": files, "counts": counts}


def tokenize_spec(source: str, settings: TokenizeConfig, upstream: dict, tokenizer: dict,
                  rebuild: str | None = None) -> StageSpec:
    return StageSpec(stage=STAGE, artifact=f"{STAGE}/{source}", code_version=CODE_VERSION, config=settings.versioned(),
                     inputs={upstream["artifact"]: upstream["version"], tokenizer["artifact"]: tokenizer["version"]},
                     rebuild=rebuild)


def run_tokenize(source: str, settings: TokenizeConfig, store: ObjectStore, spec: StageSpec, upstream: dict,
                 tokenizer: dict, progress: Callable[[str], None] = print) -> dict:
    """Tokenize and pack every document shard of `source` in `upstream` and commit; returns the manifest."""
    found = conventions(tokenizer)
    job = TokenizeJob(source, settings, store, upstream, spec.prefix, tokenizer_json(store, tokenizer),
                      eos_id=found["eos_id"], pad_id=found["pad_id"], vocab_size=found["vocab_size"])
    writer = ArtifactWriter(store, spec)
    dtype = token_dtype(job.vocab_size)
    return run_shard_stage(writer, upstream, tokenize_unit, job, settings, new_counts(), name=f"tokenize[{source}]",
                           progress=progress, source=source, seq_len=settings.seq_len, dtype=str(dtype),
                           eos_id=job.eos_id, pad_id=job.pad_id, vocab_size=job.vocab_size)


@stage_task("tokens", "tokens[{source_name}]")
def tokenize_task(ctx: RunContext, source_name: str, filter_result: dict, tokenizer_result: dict) -> Any:
    """Resolve the version from the filtered documents, the tokenizer and the config; skip or tokenize."""
    upstream = upstream_manifest(ctx, filter_result)
    tokenizer = upstream_manifest(ctx, tokenizer_result)
    settings = ctx.config.tokenize
    spec = tokenize_spec(source_name, settings, upstream, tokenizer, rebuild=ctx.rebuild_token(f"{STAGE}/{source_name}"))
    return execute_stage(ctx, spec, lambda emit: run_tokenize(source_name, settings, ctx.store, spec, upstream,
                                                              tokenizer, emit))
