"""IFT stage: instruction fine-tuning (`ift`) of the CPT model (or the pretrained one when CPT is off, or
with CPT off the user's checkpoint named by `ift.init`) on chat JSONL.

1. Data: every line of `ift.chat_files` (JSONL or .jsonl.zst) is validated (corpus/chat.py); a line
   that is not a valid conversation, is longer than `max_line_mb`, or whose encoding does not fit one
   row of seq_len + 1 tokens (`too_long`) is quarantined with its reason (quarantine.parquet, same
   columns as ingest's) and counted; a file that cannot be read to the end (`unreadable_file`, e.g. a
   truncated .zst) keeps the lines read before the error.
2. Split: a conversation is held out (val) when a hash of its messages falls below `val_fraction`.
3. Encoding: with the pipeline's own tokenizer, the chat template on its role tokens (loss mask 1 on the
   assistant contents and the <|end|> closing them, 0 elsewhere); with a checkpoint's tokenizer, the
   checkpoint's own chat template (or a plain-text one when it has none), the mask on what each assistant
   turn adds (corpus/chat.py). A conversation the template cannot render incrementally is quarantined
   (template_not_incremental). Conversations are packed, several per row, never split (ChatPacker), into
   token shards with the `loss_mask` column (train/ and val/).
4. Training: the same trainer from the starting weights, `epochs` passes over the train rows in a seeded
   order per epoch, a re-warmed learning rate; full fine-tuning or LoRA (`ift.method: lora`; adapters
   merged into the exported weights). Loss is computed on masked positions only.

Artifact: the model (hf/ with the chat template, and a generation config that stops at the end of an
assistant turn; metrics, loss curve), the token shards (the eval stage scores the held-out assistant turns from val/), the
order and the quarantine.

The core (`read_conversations`, `encode_conversations`, `run_ift`) knows nothing of Prefect; `prepare` resolves
the version and the build, which `ift_task` runs here or on train.work_pool (tasks/remote.py).
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

from corpus.chat import (PLAIN_TEMPLATE, ChatPacker, ChatReject, ChatTemplate, TemplateChatEncoder,
                         TemplateNotIncremental, parse_chat_line, read_lines)
from corpus.decontamination import eval_files
from corpus.token_shards import TokenShardWriter, token_dtype, token_schema
from pipeline.artifacts import ArtifactWriter, StageSpec, fetch_verified, files_with_role, sha256_file
from pipeline.config import IftConfig, TrainConfig
from pipeline.shards import QUARANTINE_SCHEMA
from pipeline.storage import ObjectStore

from .checkpoints import StartingModel, artifact_model, check_base_checkpoint
from .cpt import check_fits
from .remote import run_training_stage
from .stage import RunContext, stage_task, upstream_manifest
from .tokenizer import conventions, id_fraction
from .training import (TrainingJob, describe_plan, export_model, loss_summary, model_summary, plan, run_training,
                       tokenizer_files, write_order)

STAGE = "ift"
CODE_VERSION = "2"  # 2: a checkpoint's own chat template; transformers model classes
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


def encode_conversations(conversations: Iterator[tuple[str, list[dict] | ChatReject, bytes]],
                         encode: Callable[[list[dict]], tuple[np.ndarray, np.ndarray]], seq_len: int,
                         val_fraction: float, eos_id: int, pad_id: int,
                         dtype: np.dtype) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], list[tuple],
                                                   dict]:
    """Packed (tokens, masks) per split, the quarantined lines and the counts."""
    packers = {split: ChatPacker(seq_len + 1, eos_id, pad_id, dtype) for split in SPLITS}
    quarantined: list[tuple] = []
    counts: dict[str, Any] = {"lines": 0, "quarantined": {},
                              "splits": {split: {"conversations": 0, "assistant_tokens": 0} for split in SPLITS}}
    for origin, item, line in conversations:
        counts["lines"] += 1
        if not isinstance(item, ChatReject):
            try:
                ids, mask = encode(item)
            except TemplateNotIncremental as exc:
                ids, mask = None, None
                item = ChatReject("template_not_incremental", str(exc)[:300])
        if not isinstance(item, ChatReject):
            if packers["train"].fits(ids):
                split = split_of(item, val_fraction)
                packers[split].add(ids, mask)
                counts["splits"][split]["conversations"] += 1
                counts["splits"][split]["assistant_tokens"] += int(mask.sum())
                continue
            item = ChatReject("too_long", f"{len(ids) + 1} tokens; a row holds {seq_len + 1} (tokenize.seq_len + 1)")
        counts["quarantined"][item.reason] = counts["quarantined"].get(item.reason, 0) + 1
        quarantined.append(("chat", origin, item.reason, item.detail, len(line), line[:SAMPLE_BYTES]))
    rows = {split: (*packers[split].finish(), np.asarray(packers[split].paddings, np.int64)) for split in SPLITS}
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


def chat_encoder(store: ObjectStore, tokenizer: dict, work: Path) -> tuple[Callable, str, int]:
    """(encode(messages) -> (ids, mask), the Jinja chat template the export carries, the end-of-turn id)."""
    found = conventions(tokenizer)
    if found["origin"].startswith("checkpoint:"):
        from transformers import AutoTokenizer

        directory = work / "tokenizer"
        directory.mkdir()
        tokenizer_files(store, tokenizer, directory)
        hf = AutoTokenizer.from_pretrained(str(directory))
        template = hf.chat_template or PLAIN_TEMPLATE
        encoder = TemplateChatEncoder(hf, template)
        return encoder.encode, template, encoder.end_of_turn_id() or found["eos_id"]
    from tokenizers import Tokenizer

    [entry] = [e for e in files_with_role(tokenizer, "tokenizer") if e["path"] == "tokenizer.json"]
    encoder = Tokenizer.from_file(str(fetch_verified(store, tokenizer, entry, work)))
    template = ChatTemplate(*tokenizer["config"]["role_tokens"])
    return (lambda messages: template.encode(encoder, messages)), template.jinja_template(), found["end_of_turn_id"]


def run_ift(settings: IftConfig, train: TrainConfig, seq_len: int, store: ObjectStore, spec: StageSpec,
            start: StartingModel, tokenizer: dict, chat_files: list[Path],
            progress: Callable[[str], None] = print) -> dict:
    """Validate, encode, pack, fine-tune, export (with the chat template) and commit; returns the manifest."""
    started = time.monotonic()
    writer = ArtifactWriter(store, spec)
    found = conventions(tokenizer)
    eos_id, pad_id = found["eos_id"], found["pad_id"]
    phase = settings.train_settings(train)
    check_fits(start.config, tokenizer, seq_len, "ift (the starting model)")
    with tempfile.TemporaryDirectory(dir=train.work_dir, prefix="ift-") as scratch:
        work = Path(scratch)
        encode, chat_template, end_of_turn = chat_encoder(store, tokenizer, work)
        dtype = token_dtype(found["vocab_size"])
        rows, quarantined, counts = encode_conversations(
            read_conversations(chat_files, int(settings.max_line_mb * 1024 * 1024)), encode, seq_len,
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
        init = start.hf_dir(store, work)
        order = epoch_order(train_rows, settings.epochs, settings.seed)
        files.append(writer.put_file("order.arrow", write_order(order, work / "order.arrow"), "order", rows=len(order)))
        planned = plan(start.config, seq_len, phase, len(order))
        progress(f"ift: starting from {start.name}; " + describe_plan(STAGE, planned, seq_len) +
                 (f"; LoRA rank {settings.lora.rank} on {settings.lora.targets}" if settings.method == "lora" else ""))
        lora = settings.lora.model_dump(mode="json") if settings.method == "lora" else None
        job = TrainingJob(STAGE, phase, start.config, planned["steps"],
                          {"shards": [str(local["train"])], "order": str(work / "order.arrow"), "seq_len": seq_len,
                           "pad_id": pad_id, "val_shards": [str(local["val"])] if "val" in local else []},
                          init=str(init), lora=lora)
        metrics, sync = run_training(job, store, spec.prefix, work, progress)
        files += export_model(job, writer, store, tokenizer, work, metrics, sync, chat_template=chat_template,
                              end_of_turn_id=end_of_turn)
        described = model_summary(work / "hf")
    losses = loss_summary(STAGE, metrics, progress)
    counts.update({"steps": losses["steps"], "first_loss": losses["first_loss"], "last_loss": losses["last_loss"]})
    summary = {**planned, **described, "init": start.name, "init_lineage": start.lineage(), "method": settings.method,
               "seq_len": seq_len, "pad_id": pad_id, "end_of_turn_id": end_of_turn,
               "seconds": round(time.monotonic() - started, 1), "last_val_loss": losses.get("last_val_loss"),
               "table": [{"split": split, **counts["splits"][split]} for split in SPLITS]}
    return writer.commit(files, counts, summary=summary)


def prepare(ctx: RunContext, model_result: dict | None, tokenizer_result: dict) -> tuple[StageSpec, Callable]:
    """The version (from the starting model: the CPT or pretrained artifact, or with CPT off the checkpoint of
    ift.init; the tokenizer, the chat files and the config) and the build."""
    config = ctx.config
    start = artifact_model(upstream_manifest(ctx, model_result)) if model_result is not None \
        else check_base_checkpoint(config, ctx.base_dir)
    if start is None:
        raise ValueError("ift: no model to fine-tune (enable cpt or pretraining, or set ift.init)")
    tokenizer = upstream_manifest(ctx, tokenizer_result)
    chat_files = eval_files(config.ift.chat_files, ctx.base_dir, key="ift.chat_files")
    spec = ift_spec(config.ift, config.train, config.tokenize.seq_len, start, tokenizer, chat_files,
                    rebuild=ctx.rebuild_token(STAGE))
    return spec, lambda emit: run_ift(config.ift, config.train, config.tokenize.seq_len, ctx.store, spec, start,
                                      tokenizer, chat_files, emit)


@stage_task("ift", "ift")
def ift_task(ctx: RunContext, model_result: dict | None, tokenizer_result: dict) -> Any:
    """Skip or fine-tune, here or as a training flow run on train.work_pool (tasks/remote.py)."""
    return run_training_stage(ctx, STAGE, prepare, {"model_result": model_result,
                                                    "tokenizer_result": tokenizer_result})
