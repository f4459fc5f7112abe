"""Held-out stage (`heldout`): the fixed held-out documents every proxy model of an ablation is scored on.

An ablation compares data recipes, so its yardstick must not move with them. The documents are taken
from the output of one stage (`held_out.stage`: clean or langid, before any dedup or quality filter; or
filter) of the ablation's *base* config — base config plus base overrides, no recipe's overrides — so no
recipe's dedup or filter decides what is scored. A document is held out when the tokenize stage's own
rule puts its id in the validation split (tasks/tokenize.py `split_of` with `tokenize.val_fraction`,
which no recipe may change): ids are assigned at ingest from the source (tasks/ingest.py document_id),
so the same ids fall in the validation split of every recipe, and no proxy model trains on them.

At most `max_bytes_per_source` UTF-8 bytes per source (the general sources, which pretraining reads),
in shard order. The artifact: heldout.parquet (source, id, lang, text) — committed once, read by every
proxy evaluation (tasks/proxy_eval.py).

The core (`heldout_spec`, `select_documents`, `run_heldout`, `read_heldout`) knows nothing of Prefect;
`heldout_task` is the thin task.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from corpus.eval_tasks import Document
from pipeline.artifacts import ArtifactWriter, StageSpec, fetch_verified, files_with_role
from pipeline.storage import ObjectStore
from pipeline.units import read_shard

from .stage import RunContext, execute_stage, stage_task, upstream_manifest
from .tokenize import split_of

STAGE = "heldout"
CODE_VERSION = "1"
STAGES_READ = ("clean", "langid", "filter")  # per-source stages whose documents have id, lang (or not) and text
FILE = "heldout.parquet"
SCHEMA = pa.schema([("source", pa.string()), ("id", pa.string()), ("lang", pa.string()), ("text", pa.string())])


def select_documents(store: ObjectStore, manifest: dict, val_fraction: float, max_bytes: int,
                     scratch: Path) -> list[Document]:
    """The documents of one source's artifact whose id falls in the validation split, in shard order, up to
    `max_bytes` of UTF-8 text (the last one cut at a character boundary)."""
    kept: list[Document] = []
    budget = max_bytes
    for entry in sorted(files_with_role(manifest, "documents"), key=lambda e: e["path"]):
        for batch in read_shard(store, manifest, entry, scratch):
            columns = {name: batch.column(name).to_pylist() for name in ("id", "lang", "text")
                       if name in batch.schema.names}
            langs = columns.get("lang") or [None] * batch.num_rows
            for doc_id, lang, text in zip(columns["id"], langs, columns["text"]):
                if budget <= 0:
                    return kept
                if not text or split_of(doc_id, val_fraction) != "val":
                    continue
                encoded = text.encode("utf-8")
                if len(encoded) > budget:
                    text = encoded[:budget].decode("utf-8", errors="ignore")
                kept.append(Document(doc_id, lang or "", text))
                budget -= len(encoded)
    return kept


def heldout_spec(settings: dict, val_fraction: float, inputs: dict[str, dict], rebuild: str | None = None) -> StageSpec:
    """The version: what was read (each source's artifact version), the split rule and the byte budget."""
    return StageSpec(stage=STAGE, artifact=STAGE, code_version=CODE_VERSION,
                     config={"stage": settings["stage"], "max_bytes_per_source": settings["max_bytes_per_source"],
                             "val_fraction": val_fraction},
                     inputs={manifest["artifact"]: manifest["version"] for manifest in inputs.values()},
                     rebuild=rebuild)


def run_heldout(settings: dict, val_fraction: float, store: ObjectStore, spec: StageSpec, inputs: dict[str, dict],
                progress: Callable[[str], None] = print) -> dict:
    """Select every source's held-out documents and commit them; returns the manifest."""
    started = time.monotonic()
    writer = ArtifactWriter(store, spec)
    counts: dict[str, Any] = {"documents": {}, "bytes": {}}
    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    with tempfile.TemporaryDirectory(prefix="heldout-") as scratch:
        for source in sorted(inputs):
            documents = select_documents(store, inputs[source], val_fraction, settings["max_bytes_per_source"],
                                         Path(scratch))
            if not documents:
                raise ValueError(f"heldout: no document of {inputs[source]['artifact']} falls in the validation "
                                 f"split (tokenize.val_fraction {val_fraction}); raise it or add data")
            counts["documents"][source] = len(documents)
            counts["bytes"][source] = sum(len(doc.text.encode("utf-8")) for doc in documents)
            for doc in documents:
                for name, value in (("source", source), ("id", doc.id), ("lang", doc.lang), ("text", doc.text)):
                    rows[name].append(value)
            progress(f"heldout: {source}: {len(documents)} documents, {counts['bytes'][source]:,} bytes from "
                     f"{inputs[source]['artifact']}@{inputs[source]['version']}")
        path = Path(scratch) / FILE
        pq.write_table(pa.table(rows, schema=SCHEMA), path, compression="zstd")
        files = [writer.put_file(FILE, path, "heldout", documents=sum(counts["documents"].values()))]
    return writer.commit(files, counts, summary={"seconds": round(time.monotonic() - started, 3),
                                                 "stage": settings["stage"], "val_fraction": val_fraction})


def read_heldout(store: ObjectStore, manifest: dict, scratch: Path) -> dict[str, list[Document]]:
    """{source: documents} of a committed held-out artifact (verified against its manifest)."""
    [entry] = list(files_with_role(manifest, "heldout"))
    table = pq.read_table(fetch_verified(store, manifest, entry, scratch))
    documents: dict[str, list[Document]] = {}
    for source, doc_id, lang, text in zip(*(table.column(name).to_pylist() for name in SCHEMA.names)):
        documents.setdefault(source, []).append(Document(doc_id, lang, text))
    return documents


@stage_task("heldout", "heldout")
def heldout_task(ctx: RunContext, settings: dict, upstream_results: dict[str, dict]) -> Any:
    """Resolve the version from the sources' artifacts read, the split and the budget; skip or select."""
    inputs = {source: upstream_manifest(ctx, result) for source, result in upstream_results.items()}
    val_fraction = ctx.config.tokenize.val_fraction
    spec = heldout_spec(settings, val_fraction, inputs, rebuild=ctx.rebuild_token(STAGE))
    return execute_stage(ctx, spec, lambda emit: run_heldout(settings, val_fraction, ctx.store, spec, inputs, emit))
