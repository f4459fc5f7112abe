"""Language-ID stage: clean shards -> the same documents with lang, lang_score and lang_topk.

fastText (lid.176 by default; any fastText LID model such as lid.176.bin or GlotLID by path) labels
each document's normalised text, newlines turned into spaces as fastText expects. A document is kept
in data/ if its language is in `keep` and its top score reaches the language's threshold; the rest is
dropped to removed/ with the reason, or routed to routed/lang=<xx>/ (below-threshold documents to
lang=und) so a multilingual corpus can be kept per language. The counts carry a language histogram.

The core (`LanguageIdentifier`, `langid_shard`, `run_langid`) knows nothing of Prefect;
`langid_task` at the end is the thin task the flow calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from pipeline.artifacts import ArtifactWriter, StageSpec
from pipeline.config import LangidConfig
from pipeline.models import file_sha256, lid_model_path
from pipeline.shards import LANGID_SCHEMA, QUARANTINE_SCHEMA, ShardWriter
from pipeline.storage import ObjectStore
from pipeline.units import ShardUnit, UnitOutput, read_shard, resolve_writer_thread, run_shard_stage

from .stage import RunContext, execute_stage, stage_task, upstream_manifest

STAGE = "langid"
CODE_VERSION = "1"
MB = 1024 * 1024
UNDETERMINED = "und"


class LanguageIdentifier:
    """A fastText language-ID model: texts -> (label, score, top-k [(label, score)])."""

    def __init__(self, model_path: str | Path, top_k: int = 3):
        import fasttext

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"fastText model {path} not found (run `make` to fetch lid.176.ftz, "
                                    f"or set langid.model_path)")
        self.model = fasttext.load_model(str(path))
        self.top_k = top_k

    def predict(self, texts: list[str]) -> list[tuple[str, float, list[tuple[str, float]]]]:
        # fastText reads one line per prediction: a newline inside a text would end it early.
        lines = [text.replace("\n", " ").replace("\r", " ") for text in texts]
        labels, scores = self.model.predict(lines, k=self.top_k)
        results = []
        for row_labels, row_scores in zip(labels, scores):
            topk = [(label.removeprefix("__label__"), min(float(score), 1.0))
                    for label, score in zip(row_labels, row_scores)]
            lang, score = topk[0] if topk else (UNDETERMINED, 0.0)
            results.append((lang, score, topk))
        return results


@lru_cache(maxsize=4)
def identifier(model_path: str, top_k: int) -> LanguageIdentifier:
    """One loaded model per worker process."""
    return LanguageIdentifier(model_path, top_k)


def resolve_model_path(settings: LangidConfig) -> Path:
    return Path(settings.model_path) if settings.model_path else lid_model_path()


@dataclass(frozen=True)
class LangidJob:
    source: str
    settings: LangidConfig
    model_path: str
    store: ObjectStore
    upstream: dict  # the clean manifest
    prefix: str


def new_counts() -> dict[str, Any]:
    return {"documents_in": 0, "documents": 0, "removed": {}, "routed": {}, "languages": {}}


def langid_shard(job: LangidJob, unit: ShardUnit) -> dict:
    """Label one clean shard; write kept, routed and removed documents; return the unit record."""
    settings = job.settings
    model = identifier(job.model_path, settings.top_k)
    counts = new_counts()
    with UnitOutput(job.store, job.prefix, unit.key, settings, STAGE) as out:
        kept = out.writer("data", LANGID_SCHEMA, "documents", "text",
                          background=resolve_writer_thread("auto", settings.workers))
        removed = out.writer("removed", QUARANTINE_SCHEMA, "removed", "sample")
        routed: dict[str, ShardWriter] = {}
        for batch in read_shard(job.store, job.upstream, unit.entry, out.scratch):
            rows = batch.to_pylist()
            for row, (lang, score, topk) in zip(rows, model.predict([row["text"] for row in rows])):
                counts["documents_in"] += 1
                counts["languages"][lang] = counts["languages"].get(lang, 0) + 1
                labelled = (row["id"], row["source"], row["url"], row["fetch_date"], row["title"], row["text"],
                            row["charset"], lang, score, [{"lang": k, "score": v} for k, v in topk])
                threshold = settings.threshold_for(lang)
                if settings.keeps(lang) and score >= threshold:
                    counts["documents"] += 1
                    kept.add(labelled)
                    continue
                below = score < threshold
                reason = "lang_score_below_threshold" if below else "lang_not_kept"
                if settings.action == "route":
                    partition = UNDETERMINED if below else lang
                    counts["routed"][partition] = counts["routed"].get(partition, 0) + 1
                    if partition not in routed:
                        routed[partition] = out.writer(f"routed/lang={partition}", LANGID_SCHEMA, "routed",
                                                       "text", lang=partition)
                    routed[partition].add(labelled)
                else:
                    counts["removed"][reason] = counts["removed"].get(reason, 0) + 1
                    removed.add((row["source"], row["id"], reason, f"{lang} {score:.3f} (threshold {threshold})",
                                 len(row["text"]), row["text"].encode()[: settings.removed_sample_bytes]))
        files = out.close()
    return {"unit": unit.key, "files": files, "counts": counts}


def langid_spec(source: str, settings: LangidConfig, upstream: dict, model_sha256: str,
                rebuild: str | None = None) -> StageSpec:
    return StageSpec(stage=STAGE, artifact=f"{STAGE}/{source}", code_version=CODE_VERSION,
                     config=settings.versioned(),
                     inputs={upstream["artifact"]: upstream["version"], "model_sha256": model_sha256},
                     rebuild=rebuild)


def run_langid(source: str, settings: LangidConfig, store: ObjectStore, spec: StageSpec, upstream: dict,
               progress: Callable[[str], None] = print) -> dict:
    """Label every shard of the clean artifact `upstream` and commit; returns the manifest."""
    writer = ArtifactWriter(store, spec)
    job = LangidJob(source, settings, str(resolve_model_path(settings)), store, upstream, spec.prefix)
    return run_shard_stage(writer, upstream, langid_shard, job, settings, new_counts(), name=f"langid[{source}]",
                           progress=progress, model=Path(job.model_path).name)


@stage_task("langid", "langid[{source_name}]")
def langid_task(ctx: RunContext, source_name: str, clean_result: dict) -> Any:
    """Resolve the version from the clean artifact, the model file and the config; skip or label."""
    upstream = upstream_manifest(ctx, clean_result)
    settings = ctx.config.langid
    model_path = resolve_model_path(settings)
    if not model_path.is_file():
        raise FileNotFoundError(f"langid.model_path: {model_path} does not exist (run `make` to fetch lid.176.ftz)")
    spec = langid_spec(source_name, settings, upstream, file_sha256(model_path),
                       rebuild=ctx.rebuild_token(f"{STAGE}/{source_name}"))
    return execute_stage(ctx, spec, lambda emit: run_langid(source_name, settings, ctx.store, spec, upstream, emit))
