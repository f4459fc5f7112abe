"""IFT stage: instruction fine-tuning (`ift`) of the CPT model (or the pretrained one when CPT is off)
on chat JSONL.

1. Data: every line of `ift.chat_files` (JSONL or .jsonl.zst) is validated (corpus/chat.py); a line
   that is not a valid conversation, is longer than `max_line_mb`, or whose encoding does not fit one
   row of seq_len + 1 tokens (`too_long`) is quarantined with its reason (quarantine.parquet, same
   columns as ingest's) and counted; a file that cannot be read to the end (`unreadable_file`, e.g. a
   truncated .zst) keeps the lines read before the error.
2. Split: a conversation is held out (val) when a hash of its messages falls below `val_fraction`.
3. Encoding: the chat template on the tokenizer's role tokens; loss mask 1 on the assistant contents
   and the <|end|> closing them, 0 elsewhere; conversations are packed, several per row, never split
   (corpus/chat.py ChatPacker), into token shards with the `loss_mask` column (train/ and val/).
4. Training: the same trainer from the starting weights, `epochs` passes over the train rows in a seeded
   order per epoch, a re-warmed learning rate; full fine-tuning or LoRA (`ift.method: lora`; adapters
   merged into the exported weights). Loss is computed on masked positions only.

Artifact: the model (weights, config, hf/ with the chat template in tokenizer_config.json, metrics,
loss curve), the token shards (the eval stage scores the held-out assistant turns from val/), the
order and the quarantine.

The core (`read_conversations`, `encode_conversations`, `run_ift`) knows nothing of Prefect; `ift_task`
is the thin task.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.artifacts import ArtifactWriter, StageSpec, fetch_verified, files_with_role, sha256_file
from corpus.chat import ChatPacker, ChatReject, ChatTemplate, parse_chat_line, read_lines
from pipeline.config import IftConfig, TrainConfig
from corpus.decontamination import eval_files
from pipeline.shards import QUARANTINE_SCHEMA
from pipeline.storage import ObjectStore
from corpus.token_shards import TokenShardWriter, token_dtype, token_schema
from prefect import task
from prefect.cache_policies import NO_CACHE

from .cpt import StartingModel, artifact_model, check_fits
from .stage import RunContext, execute_stage, upstream_manifest
from .tokenizer import id_fraction
from .training import (TrainingJob, describe_plan, export_model, loss_summary, plan, publish_curve, run_training,
                       write_order)

STAGE = "ift"
CODE_VERSION = "1"
SPLITS = ("train", "val")
SAMPLE_BYTES = 2048


def read_conversations(files: list[Path], max_line_bytes: int) -> Iterator[tuple[str, list[dict] | ChatReject, bytes]]:
    """(origin `file#line N`, messages or the reason they are refused, the raw line) of every line."""
    for path in files:
        number = 0
        try:
            for number, line in enumerate(read_lines(path, max_line_bytes), start=1):
                if line is None:
                    yield (f"{path.name}#line {number}", ChatReject("line_too_long", f"over {max_line_bytes} bytes"),
                           b"")
                elif line.strip():
                    yield f"{path.name}#line {number}", parse_chat_line(line), line
        except Exception as exc:  # a truncated or corrupt file: keep what was read, quarantine the rest
            yield (f"{path.name}#after line {number}", ChatReject("unreadable_file", f"{type(exc).__name__}: {exc}"[:300]),
                   b"")


def split_of(messages: list[dict], val_fraction: float) -> str:
    key = hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return "val" if id_fraction(key, "ift-validation") < val_fraction else "train"


def encode_conversations(conversations: Iterator[tuple[str, list[dict] | ChatReject, bytes]], tokenizer,
                         template: ChatTemplate, seq_len: int, val_fraction: float, eos_id: int, pad_id: int,
                         dtype: np.dtype) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[tuple], dict]:
    """Packed (tokens, masks) per split, the quarantined lines and the counts."""
    packers = {split: ChatPacker(seq_len + 1, eos_id, pad_id, dtype) for split in SPLITS}
    quarantined: list[tuple] = []
    counts: dict[str, Any] = {"lines": 0, "quarantined": {},
                              "splits": {split: {"conversations": 0, "assistant_tokens": 0} for split in SPLITS}}
    for origin, item, line in conversations:
        counts["lines"] += 1
        if not isinstance(item, ChatReject):
            ids, mask = template.encode(tokenizer, item)
            if packers["train"].fits(ids):
                split = split_of(item, val_fraction)
                packers[split].add(ids, mask)
                counts["splits"][split]["conversations"] += 1
                counts["splits"][split]["assistant_tokens"] += int(mask.sum())
                continue
            item = ChatReject("too_long", f"{len(ids) + 1} tokens; a row holds {seq_len + 1} (tokenize.seq_len + 1)")
        counts["quarantined"][item.reason] = counts["quarantined"].get(item.reason, 0) + 1
        quarantined.append(("chat", origin, item.reason, item.detail, len(line), line[:SAMPLE_BYTES]))
    rows = {split: packers[split].finish() for split in SPLITS}
    for split in SPLITS:
        counts["splits"][split]["sequences"] = len(rows[split][0])
    counts["conversations"] = sum(counts["splits"][split]["conversations"] for split in SPLITS)
    return rows, quarantined, counts


def epoch_order(rows: int, epochs: float, seed: int) -> np.ndarray:
    """ceil(epochs) seeded permutations of the train rows, cut to epochs x rows: (shard 0, row) pairs."""
    wanted = max(int(round(epochs * rows)), 1)
    passes = [np.random.default_rng([seed, epoch]).permutation(rows) for epoch in range(-(-wanted // rows))]
    picked = np.concatenate(passes)[:wanted]
    return np.stack([np.zeros(len(picked), dtype=np.int64), picked], axis=1)


def ift_spec(settings: IftConfig, train: TrainConfig, seq_len: int, start: StartingModel, tokenizer: dict,
             chat_files: list[Path], rebuild: str | None = None) -> StageSpec:
    return StageSpec(stage=STAGE, artifact=STAGE, code_version=CODE_VERSION,
                     config={**settings.versioned(), "train": settings.train_settings(train).versioned(),
                             "seq_len": seq_len},
                     inputs={"init": start.identity, "tokenizer": tokenizer["version"],
                             "chat_files": {path.name: sha256_file(path) for path in chat_files}},
                     rebuild=rebuild)


def run_ift(settings: IftConfig, train: TrainConfig, seq_len: int, store: ObjectStore, spec: StageSpec,
            start: StartingModel, tokenizer: dict, chat_files: list[Path],
            progress: Callable[[str], None] = print) -> dict:
    """Validate, encode, pack, fine-tune, export (with the chat template) and commit; returns the manifest."""
    from tokenizers import Tokenizer

    started = time.monotonic()
    writer = ArtifactWriter(store, spec)
    specials = tokenizer["counts"]["special_token_ids"]
    template = ChatTemplate(*tokenizer["config"]["role_tokens"])
    eos_id, pad_id = specials[tokenizer["config"]["eos_token"]], specials[tokenizer["config"]["pad_token"]]
    vocab_size = tokenizer["counts"]["vocab_size"]
    phase = settings.train_settings(train)
    with tempfile.TemporaryDirectory(dir=train.work_dir, prefix="ift-") as scratch:
        work = Path(scratch)
        [tokenizer_file] = [e for e in files_with_role(tokenizer, "tokenizer") if e["path"] == "tokenizer.json"]
        encoder = Tokenizer.from_file(str(fetch_verified(store, tokenizer, tokenizer_file, work)))
        dtype = token_dtype(vocab_size)
        rows, quarantined, counts = encode_conversations(
            read_conversations(chat_files, int(settings.max_line_mb * 1024 * 1024)), encoder, template, seq_len,
            settings.val_fraction, eos_id, pad_id, dtype)
        train_rows = len(rows["train"][0])
        if not train_rows:
            raise ValueError(f"ift: no valid training conversation in {[str(p) for p in chat_files]} "
                             f"(quarantined: {counts['quarantined']})")
        progress(f"ift: {counts['conversations']} conversations ({counts['splits']['val']['conversations']} held out) "
                 f"in {train_rows} + {len(rows['val'][0])} rows; quarantined {counts['quarantined'] or 'none'}")
        files, local = [], {}
        schema = token_schema(seq_len, dtype, loss_mask=True)
        for split in SPLITS:
            def uploaded(path: Path, sequences: int, tokens: int, documents: int, split: str = split) -> None:
                local[split] = path
                files.append(writer.put_file(f"{split}/{path.name}", path, "tokens", split=split, source="chat",
                                             sequences=sequences, tokens=tokens, documents=documents))
            shard_writer = TokenShardWriter(work / split, "chat", schema, "chat", max(len(rows[split][0]), 1),
                                            uploaded, pad_id=pad_id, eos_id=eos_id)
            shard_writer.write(*rows[split])
            shard_writer.close()
        if quarantined:
            path = work / "quarantine.parquet"
            pq.write_table(pa.Table.from_pylist([dict(zip(QUARANTINE_SCHEMA.names, row)) for row in quarantined],
                                                schema=QUARANTINE_SCHEMA), path)
            files.append(writer.put_file("quarantine/quarantine.parquet", path, "quarantine", rows=len(quarantined)))
        weights, model = start.fetch(store, work)
        check_fits(model, vocab_size, seq_len, "ift (the starting model)")
        order = epoch_order(train_rows, settings.epochs, settings.seed)
        files.append(writer.put_file("order.arrow", write_order(order, work / "order.arrow"), "order", rows=len(order)))
        planned = plan({k: model[k] for k in ("n_layer", "d_model", "n_positions")}, model["vocab_size"], seq_len,
                       phase, len(order))
        progress(f"ift: starting from {start.name}; " + describe_plan(STAGE, planned, seq_len) +
                 (f"; LoRA rank {settings.lora.rank} on {settings.lora.targets}" if settings.method == "lora" else ""))
        lora = settings.lora.model_dump(mode="json") if settings.method == "lora" else None
        job = TrainingJob(STAGE, phase, model, planned["steps"],
                          {"shards": [str(local["train"])], "order": str(work / "order.arrow"), "seq_len": seq_len,
                           "pad_id": pad_id}, init=str(weights), lora=lora)
        metrics = run_training(job, store, spec.prefix, work, progress)
        files += export_model(job, writer, store, tokenizer, work, metrics, chat_template=template.jinja_template())
    losses = loss_summary(STAGE, metrics, progress)
    counts.update({"steps": losses["steps"], "first_loss": losses["first_loss"], "last_loss": losses["last_loss"]})
    summary = {**planned, "init": start.name, "method": settings.method, "seq_len": seq_len,
               "pad_id": pad_id, "seconds": round(time.monotonic() - started, 1),
               "table": [{"split": split, **counts["splits"][split]} for split in SPLITS]}
    return writer.commit(files, counts, summary=summary)


@task(name="ift", task_run_name="ift", cache_policy=NO_CACHE, persist_result=False)
def ift_task(ctx: RunContext, model_result: dict, tokenizer_result: dict) -> Any:
    """Resolve the version from the starting model, the tokenizer, the chat files and the config."""
    config = ctx.config
    start = artifact_model(upstream_manifest(ctx, model_result))
    tokenizer = upstream_manifest(ctx, tokenizer_result)
    chat_files = eval_files(config.ift.chat_files, ctx.base_dir, key="ift.chat_files")
    spec = ift_spec(config.ift, config.train, config.tokenize.seq_len, start, tokenizer, chat_files,
                    rebuild=ctx.rebuild_token(STAGE))
    result = execute_stage(ctx, spec, lambda emit: run_ift(config.ift, config.train, config.tokenize.seq_len,
                                                           ctx.store, spec, start, tokenizer, chat_files, emit))
    publish_curve(ctx.store, spec.prefix, STAGE)
    return result
