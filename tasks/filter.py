"""Filter stage: dedup (or langid) shards of one source -> documents that pass the quality rules and the toxicity check,
with PII redacted; one artifact per source.

The thresholds of the heuristic rules (and Gopher's stop words) can differ per language:
`filter.language_thresholds` names a folder of `<lang>.yaml` files (corpus/language_thresholds.py;
data/language_thresholds holds FineWeb-2's for the sample's languages) whose settings apply to that
language's documents; their content is part of the artifact's version.

Per document, the rules configured for its source or language run in order (Gopher quality, Gopher
repetition, C4, FineWeb, LDNOOBW toxicity, a pluggable toxicity classifier, the fastText quality
classifier, eval-set decontamination);
the first that fires removes the document to removed/ under its rule's name (e.g. `gopher_short_doc`,
`c4_curly_bracket`, `toxicity_word_list`, `quality_classifier`, `eval_overlap`). Decontamination also
counts, per eval item, the documents that hit it (`eval_hits`). C4's line
removals are kept in the text of documents that pass. E-mail addresses, IP addresses and phone
numbers in kept documents are replaced by placeholder tokens and counted.

The core (`build_rules`, `filter_document`, `filter_shard`, `run_filter`) knows nothing of Prefect;
`filter_task` at the end is the thin task the flow calls.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.artifacts import ArtifactWriter, StageSpec
from pipeline.artifacts import sha256_file
from pipeline.config import FilterConfig
from corpus.decontamination import EvalNgramIndex, eval_files, load_eval_items
from corpus.language_thresholds import build
from corpus.pii import PiiRedactor
from corpus.quality_classifier import QualityClassifier
from corpus.quality_rules import C4Quality, FineWebQuality, GopherQuality, GopherRepetition
from pipeline.shards import DEDUP_SCHEMA, QUARANTINE_SCHEMA
from pipeline.storage import ObjectStore
from corpus.toxicity import WordListToxicity
from pipeline.units import ShardUnit, UnitOutput, read_shard, resolve_writer_thread, run_shard_stage

from .quality_model import resolve_classifier_model
from .stage import RunContext, execute_stage, stage_task, upstream_manifest

STAGE = "filter"
CODE_VERSION = "2"  # 2: minhash_cluster_size carried through, per-language thresholds


@dataclass(frozen=True)
class HeuristicRules:
    """The rules with thresholds, as set for one language."""

    gopher_quality: GopherQuality
    gopher_repetition: GopherRepetition
    c4: C4Quality
    fineweb: FineWebQuality
    toxicity: WordListToxicity


def heuristic_rules(settings: FilterConfig, lang: str) -> HeuristicRules:
    """pipeline.yaml's settings of each rule, overridden by the language's file; Gopher's stop-word check runs
    for stop_word_languages (English stop words) and for languages whose file gives their own."""
    own = settings.language_settings().get(lang, {})
    merged = {rule: {**getattr(settings, rule), **own.get(rule, {})} for rule in HeuristicRules.__annotations__}
    quality = merged["gopher_quality"]
    if lang not in settings.stop_word_languages and "stop_words" not in own.get("gopher_quality", {}):
        quality["check_stop_words"] = False
    return HeuristicRules(**{rule: build(rule, values) for rule, values in merged.items()})


@dataclass(frozen=True)
class Rules:
    pii: PiiRedactor
    decontamination: EvalNgramIndex
    classifier: QualityClassifier | None
    toxicity_scores: Callable[[list[str]], Any] | None
    settings: FilterConfig
    _by_language: dict[str, HeuristicRules] = field(default_factory=dict)

    def for_language(self, lang: str) -> HeuristicRules:
        if lang not in self._by_language:
            self._by_language[lang] = heuristic_rules(self.settings, lang)
        return self._by_language[lang]


def scoring_function(reference: str) -> Callable[[list[str]], Any]:
    """`module:function`, imported (filter.toxicity_classifier.function)."""
    import importlib

    module_name, _, name = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"filter.toxicity_classifier.function: cannot load {reference!r}: {exc}") from None


@dataclass(frozen=True)
class RuleInputs:
    """What the rules need besides their settings: the eval items and the classifier model file."""

    eval_items: tuple[tuple[str, str], ...] = ()
    classifier_path: str | None = None
    identity: dict = field(default_factory=dict)  # digests of the eval files and the model, for the version


def resolve_rule_inputs(settings: FilterConfig, store: ObjectStore, base_dir: Path, scratch: Path) -> RuleInputs:
    files = eval_files(settings.decontamination.eval_sets, base_dir)
    items = tuple(load_eval_items(files, settings.decontamination.fields))
    identity: dict[str, Any] = {"eval_sets": {path.name: sha256_file(path) for path in files}}
    classifier_path = None
    if settings.classifier.model:
        path, digest = resolve_classifier_model(store, settings.classifier.model, base_dir, scratch)
        classifier_path, identity["classifier_sha256"] = str(path), digest
    return RuleInputs(items, classifier_path, identity)


_RULES: dict[str, Rules] = {}


def rules_for_job(job: "FilterJob") -> Rules:
    """One set of rules per worker process and artifact (the eval index and the model load once)."""
    if job.prefix not in _RULES:
        _RULES[job.prefix] = build_rules(job.settings, job.inputs)
    return _RULES[job.prefix]


def build_rules(settings: FilterConfig, inputs: RuleInputs = RuleInputs()) -> Rules:
    return Rules(
        settings=settings,
        pii=PiiRedactor(**settings.pii),
        decontamination=EvalNgramIndex.build(inputs.eval_items, settings.decontamination.ngram),
        classifier=QualityClassifier(inputs.classifier_path) if inputs.classifier_path else None,
        toxicity_scores=scoring_function(settings.toxicity_classifier.function)
        if settings.toxicity_classifier.function else None,
    )


def filter_document(text: str, lang: str, names: list[str], rules: Rules, settings: FilterConfig,
                    counts: dict) -> tuple[str, str | None]:
    """(the text to keep, or the reason it is removed). Counts C4 line removals and PII replacements."""
    heuristics = rules.for_language(lang)
    words = None  # text.split(), once for the rules that count words (again only if C4 changes the text)
    for name in names:
        if name == "gopher_quality":
            words = text.split() if words is None else words
            reason = heuristics.gopher_quality.check(text, words)
        elif name == "gopher_repetition":
            words = text.split() if words is None else words
            reason = heuristics.gopher_repetition.check(text, words)
        elif name == "c4":
            cleaned, reason, lines = heuristics.c4.apply(text)
            if reason is None and settings.c4_remove_lines:
                counts["c4_lines_removed"] += lines
                if cleaned != text:
                    text, words = cleaned, None
        elif name == "fineweb":
            words = text.split() if words is None else words
            reason = heuristics.fineweb.check(text, words)
        elif name == "decontamination":
            hits = rules.decontamination.hits(text)
            for item in hits:
                counts["eval_hits"][item] = counts["eval_hits"].get(item, 0) + 1
            reason = "eval_overlap" if hits else None
        elif name == "toxicity_classifier":
            scoring = settings.toxicity_classifier
            reason = None
            if not scoring.languages or lang in scoring.languages:
                assert rules.toxicity_scores is not None, "filter.toxicity_classifier.function is required"
                if float(rules.toxicity_scores([text])[0]) >= scoring.threshold:
                    reason = "toxicity_classifier"
        elif name == "quality_classifier":
            assert rules.classifier is not None, "filter.classifier.model is required by the quality_classifier rule"
            probability = rules.classifier.probability([text])[0]
            reason = "quality_classifier" if probability < settings.classifier.threshold else None
        else:
            reason = heuristics.toxicity.check(text, lang)
        if reason is not None:
            return text, reason
    text, replaced = rules.pii.redact(text)
    for kind, amount in replaced.items():
        counts["pii"][kind] = counts["pii"].get(kind, 0) + amount
    return text, None


@dataclass(frozen=True)
class FilterJob:
    source: str
    settings: FilterConfig
    store: ObjectStore
    upstream: dict  # the dedup manifest (or a langid one)
    prefix: str
    inputs: RuleInputs = RuleInputs()


def new_counts() -> dict[str, Any]:
    return {"documents_in": 0, "documents": 0, "removed": {}, "c4_lines_removed": 0, "pii": {}, "eval_hits": {}}


def filter_shard(job: FilterJob, unit: ShardUnit) -> dict:
    settings = job.settings
    rules = rules_for_job(job)
    counts = new_counts()
    with UnitOutput(job.store, job.prefix, unit.key, settings, STAGE) as out:
        kept = out.writer("data", DEDUP_SCHEMA, "documents", "text",
                          background=resolve_writer_thread("auto", settings.workers))
        removed = out.writer("removed", QUARANTINE_SCHEMA, "removed", "sample")
        for batch in read_shard(job.store, job.upstream, unit.entry, out.scratch):
            for row in batch.to_pylist():
                counts["documents_in"] += 1
                names = settings.rules_for(job.source, row["lang"])
                text, reason = filter_document(row["text"], row["lang"], names, rules, settings, counts)
                if reason is not None:
                    counts["removed"][reason] = counts["removed"].get(reason, 0) + 1
                    removed.add((row["source"], row["id"], reason, f"lang {row['lang']}", len(row["text"]),
                                 row["text"][: settings.removed_sample_bytes].encode()[: settings.removed_sample_bytes]))
                    continue
                counts["documents"] += 1
                # minhash_cluster_size is null where the input did not go through dedup
                kept.add(tuple({**row, "text": text}.get(name) for name in DEDUP_SCHEMA.names))
        files = out.close()
    return {"unit": unit.key, "files": files, "counts": counts}


def filter_spec(source: str, settings: FilterConfig, upstream: dict, inputs: RuleInputs = RuleInputs(),
                rebuild: str | None = None) -> StageSpec:
    config = settings.versioned()
    per_source = config.pop("per_source", {})
    config["source_rules"] = per_source.get(source)
    # the eval files and the model count by content (their digests are inputs), not by name; so do the
    # per-language files
    config["decontamination"].pop("eval_sets")
    config["classifier"].pop("model")
    if settings.language_settings():
        config["language_settings"] = settings.language_settings()
    return StageSpec(stage=STAGE, artifact=f"{STAGE}/{source}", code_version=CODE_VERSION, config=config,
                     inputs={upstream["artifact"]: upstream["version"], **inputs.identity}, rebuild=rebuild)


def run_filter(source: str, settings: FilterConfig, store: ObjectStore, spec: StageSpec, upstream: dict,
               progress: Callable[[str], None] = print, inputs: RuleInputs = RuleInputs()) -> dict:
    """Filter every document shard of `source` in the artifact `upstream` and commit; returns the manifest."""
    writer = ArtifactWriter(store, spec)
    job = FilterJob(source, settings, store, upstream, spec.prefix, inputs)
    return run_shard_stage(writer, upstream, filter_shard, job, settings, new_counts(), name=f"filter[{source}]",
                           progress=progress, source=source)


@stage_task("filter", "filter[{source_name}]")
def filter_task(ctx: RunContext, source_name: str, dedup_result: dict) -> Any:
    """Resolve the version from the dedup artifact and the config, then skip it (Cached) or filter."""
    upstream = upstream_manifest(ctx, dedup_result)
    settings = ctx.config.filter
    with tempfile.TemporaryDirectory(dir=settings.scratch_dir, prefix="filter-model-") as scratch:
        inputs = resolve_rule_inputs(settings, ctx.store, ctx.base_dir, Path(scratch))
        spec = filter_spec(source_name, settings, upstream, inputs, rebuild=ctx.rebuild_token(f"{STAGE}/{source_name}"))
        return execute_stage(ctx, spec, lambda emit: run_filter(source_name, settings, ctx.store, spec, upstream,
                                                                emit, inputs))
