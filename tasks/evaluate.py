"""Eval stage (`eval`): the base, CPT and IFT models side by side on held-out data and benchmark tasks,
and the promotion gate that moves the `current` ref.

For every model (base = the model CPT started from, cpt, ift, and the model the gate's ref points at
if it is another one):
- perplexity on each source's held-out split (`tokens/<source>` val/, at most
  `max_sequences_per_source` rows), and pooled over the general and the domain sources (the
  forgetting check: token-weighted mean loss, exponentiated);
- each multiple-choice JSONL of `eval.multiple_choice`: acc, acc_norm and acc_mutual_info as
  lm-evaluation-harness (the unconditional context is the end-of-text token);
- `cloze` (true continuation among distractors from other held-out documents; the same metrics) and
  `last_word` (LAMBADA-style greedy accuracy), generated from the held-out documents
  (corpus/eval_tasks.py);
- the loss on held-out assistant turns (the IFT artifact's val/ rows, masked as in training).

The results (results.json, a table with the deltas against the base) are committed as the artifact;
then the gate: the candidate (the last phase that ran: ift, else cpt, else the base) becomes the
ref only if it lowers domain perplexity and raises general perplexity by less than
`gate.general_tolerance` (relative) against the ref's current model (or the base if the ref is unset).
With no domain source, general perplexity must improve. The decision and its reason are in the
manifest; the ref's history (`pretrain-pipeline refs history current`) keeps every promotion.

The core (`evaluate_model`, `gate_decision`, `run_eval`, `apply_gate`) knows nothing of Prefect;
`eval_task` is the thin task.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from model.scoring import ChoiceItem, last_word_accuracy, multiple_choice, perplexity, torch_scorer
from pipeline.artifacts import ArtifactWriter, StageSpec, fetch_verified, files_with_role, read_manifest, sha256_file
from pipeline.config import EvalConfig
from corpus.decontamination import eval_files
from corpus.eval_tasks import Document, TextItem, cloze_items, last_word_items, load_multiple_choice
from pipeline.runs import get_ref, set_ref
from pipeline.storage import ObjectStore
from corpus.token_shards import read_tokens, sequences
from pipeline.units import read_shard
from prefect import task
from prefect.cache_policies import NO_CACHE

from .checkpoints import StartingModel, artifact_model, check_base_checkpoint
from .stage import RunContext, execute_stage, upstream_manifest
from .tokenizer import conventions, tokenizer_json
from .tokenize import split_of
from .training import fetch_token_shards

STAGE = "eval"
CODE_VERSION = "1"


def held_out_documents(store: ObjectStore, filters: dict[str, dict], tokens: dict[str, dict], languages: list[str],
                       scratch: Path) -> list[Document]:
    """The filtered documents that the tokenize stage put in its validation split, in the given languages."""
    documents = []
    for source in sorted(filters):
        val_fraction = tokens[source]["config"]["val_fraction"]
        for entry in sorted(files_with_role(filters[source], "documents"), key=lambda e: e["path"]):
            for batch in read_shard(store, filters[source], entry, scratch, columns=["id", "lang", "text"]):
                for doc_id, lang, text in zip(*(batch.column(i).to_pylist() for i in range(3))):
                    if lang in languages and split_of(doc_id, val_fraction) == "val":
                        documents.append(Document(doc_id, lang, text))
    return documents


def val_rows(store: ObjectStore, manifest: dict, limit: int, scratch: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The first `limit` held-out rows of a tokens (or IFT) artifact, with their loss masks if it has them."""
    entries = sorted((e for e in files_with_role(manifest, "tokens") if e["split"] == "val"), key=lambda e: e["path"])
    shards = [{"artifact": manifest["artifact"], "version": manifest["version"], "path": e["path"]} for e in entries]
    rows, masks = [], []
    for path in fetch_token_shards(store, shards, scratch / "val" / manifest["artifact"].replace("/", "_")):
        table = read_tokens(path)
        rows.append(sequences(table))
        if "loss_mask" in table.column_names:
            column = table.column("loss_mask").combine_chunks()
            masks.append(column.values.to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size))
        if sum(len(r) for r in rows) >= limit:
            break
    if not rows:
        return np.zeros((0, 0), dtype=np.int64), None
    return np.concatenate(rows)[:limit], (np.concatenate(masks)[:limit] if masks else None)


def encode_items(tokenizer, items: list[TextItem], bos_id: int) -> list[ChoiceItem]:
    """Token ids of each item: the context after an end-of-text token (as the harness does), each choice."""
    encoded = []
    for item in items:
        context = [bos_id] + tokenizer.encode(item.context, add_special_tokens=False).ids
        choices = [tokenizer.encode(choice, add_special_tokens=False).ids for choice in item.choices]
        encoded.append(ChoiceItem(context, choices, [len(choice) for choice in item.choices], item.gold))
    return encoded


def pooled_perplexity(per_source: dict[str, dict], sources: list[str]) -> float | None:
    scored = [per_source[s] for s in sources if per_source.get(s, {}).get("tokens")]
    tokens = sum(entry["tokens"] for entry in scored)
    return math.exp(sum(entry["loss"] * entry["tokens"] for entry in scored) / tokens) if tokens else None


def evaluate_model(scorer, data: dict, general: list[str], domain: list[str]) -> dict:
    """Every metric of one model on the prepared data (see the module docstring)."""
    per_source = {source: perplexity(scorer, rows, data["pad_id"]) for source, rows in data["val"].items()}
    results: dict[str, Any] = {
        "perplexity": per_source, "general_perplexity": pooled_perplexity(per_source, general),
        "domain_perplexity": pooled_perplexity(per_source, domain), "tasks": {}}
    for name, items in data["multiple_choice"].items():
        results["tasks"][name] = multiple_choice(scorer, items, unconditional=[data["eos_id"]])
    if data["last_word"]:
        results["tasks"]["last_word"] = last_word_accuracy(
            scorer, [(item.context, item.choices[0]) for item in data["last_word"]])
    if data.get("chat") is not None:
        rows, masks = data["chat"]
        results["assistant_loss"] = perplexity(scorer, rows, data["pad_id"], masks)["loss"]
    return results


def metric_rows(results: dict) -> dict[str, float | None]:
    """One model's results as flat, named numbers (the table's rows)."""
    rows = {"perplexity general": results["general_perplexity"], "perplexity domain": results["domain_perplexity"]}
    rows.update({f"perplexity {source}": entry["perplexity"] for source, entry in results["perplexity"].items()})
    for name, scores in results["tasks"].items():
        for metric in ("acc", "acc_norm", "acc_mutual_info", "perplexity"):
            if scores.get(metric) is not None:
                rows[f"{name} {metric}"] = scores[metric]
    if "assistant_loss" in results:
        rows["assistant loss"] = results["assistant_loss"]
    return rows


def results_table(results: dict[str, dict]) -> list[dict]:
    """Rows: metrics; columns: the models, then each model's difference from the base."""
    flat = {name: metric_rows(model) for name, model in results.items()}
    table = []
    for metric in flat[next(iter(flat))]:
        row: dict[str, Any] = {"metric": metric}
        row.update({name: _round(flat[name].get(metric)) for name in flat})
        base = flat.get("base", {}).get(metric)
        for name in flat:
            if name != "base" and base is not None and flat[name].get(metric) is not None:
                row[f"{name} - base"] = _round(flat[name][metric] - base)
        table.append(row)
    return table


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def gate_decision(results: dict[str, dict], candidate: str, baseline: str | None, tolerance: float,
                  has_domain: bool) -> dict:
    """Whether `candidate` may become the ref, against `baseline` (None: no model to beat)."""
    decision = {"candidate": candidate, "baseline": baseline, "general_tolerance": tolerance}
    if baseline is None:
        return {**decision, "promote": True, "reason": "no earlier model to compare with"}
    if baseline == candidate:
        return {**decision, "promote": False, "reason": "the ref already points at the candidate"}
    mine, theirs = results[candidate], results[baseline]
    keys = ["general_perplexity"] + (["domain_perplexity"] if has_domain else [])
    if any(model[key] is None for model in (mine, theirs) for key in keys):
        return {**decision, "promote": False, "reason": "no held-out data to compare on (tokenize.val_fraction)"}
    general_change = mine["general_perplexity"] / theirs["general_perplexity"] - 1
    decision["general_change"] = round(general_change, 6)
    if has_domain:
        domain_change = mine["domain_perplexity"] / theirs["domain_perplexity"] - 1
        decision["domain_change"] = round(domain_change, 6)
        if domain_change >= 0:
            return {**decision, "promote": False, "reason": f"domain perplexity did not improve ({domain_change:+.2%})"}
        if general_change >= tolerance:
            return {**decision, "promote": False, "reason": f"general perplexity rose {general_change:+.2%}, "
                                                            f"the tolerance is {tolerance:.2%}"}
        return {**decision, "promote": True, "reason": f"domain perplexity {domain_change:+.2%}, general "
                                                       f"{general_change:+.2%} (tolerance {tolerance:.2%})"}
    if general_change >= 0:
        return {**decision, "promote": False, "reason": f"general perplexity did not improve ({general_change:+.2%})"}
    return {**decision, "promote": True, "reason": f"general perplexity {general_change:+.2%}"}


def prepare_data(settings: EvalConfig, store: ObjectStore, tokenizer, eos_id: int, pad_id: int, tokens: dict[str, dict],
                 filters: dict[str, dict], ift: dict | None, mc_files: list[Path], scratch: Path) -> dict:
    """Everything the models are scored on, encoded once."""
    generated = settings.generated
    documents = held_out_documents(store, filters, tokens, generated.languages, scratch)
    data: dict[str, Any] = {
        "pad_id": pad_id, "eos_id": eos_id,
        "val": {source: val_rows(store, manifest, settings.max_sequences_per_source, scratch)[0]
                for source, manifest in tokens.items()},
        "multiple_choice": {path.stem: encode_items(tokenizer, load_multiple_choice(
            path, settings.context_field, settings.choices_field, settings.gold_field), eos_id) for path in mc_files},
        "documents": len(documents),
    }
    if generated.cloze_items:
        data["multiple_choice"]["cloze"] = encode_items(tokenizer, cloze_items(
            documents, generated.cloze_items, generated.cloze_choices, generated.cloze_context_words,
            generated.cloze_continuation_words, generated.seed, generated.cloze_stride_words), eos_id)
    data["last_word"] = encode_items(tokenizer, last_word_items(
        documents, generated.last_word_items, generated.last_word_context_words), eos_id)
    if ift is not None:
        data["chat"] = val_rows(store, ift, settings.max_sequences_per_source, scratch)
    return data


def eval_spec(settings: EvalConfig, models: dict[str, StartingModel], candidate: str, baseline: str | None,
              inputs: list[dict], tokenizer: dict, mc_files: list[Path], rebuild: str | None = None) -> StageSpec:
    return StageSpec(stage=STAGE, artifact=STAGE, code_version=CODE_VERSION,
                     config={**settings.versioned(), "candidate": candidate, "baseline": baseline},
                     inputs={"models": {name: model.identity for name, model in models.items()},
                             "tokenizer": tokenizer["version"],
                             "data": {manifest["artifact"]: manifest["version"] for manifest in inputs},
                             "multiple_choice": {path.name: sha256_file(path) for path in mc_files}},
                     rebuild=rebuild)


def run_eval(settings: EvalConfig, store: ObjectStore, spec: StageSpec, models: dict[str, StartingModel],
             candidate: str, baseline: str | None, tokens: dict[str, dict], filters: dict[str, dict],
             tokenizer: dict, ift: dict | None, mc_files: list[Path], general: list[str], domain: list[str],
             threads: int = 1, progress: Callable[[str], None] = print) -> dict:
    """Score every model, compare, decide the gate and commit; returns the manifest."""
    import torch
    from tokenizers import Tokenizer

    from model.checkpoint import load_model
    from model.families import context_length

    started = time.monotonic()
    torch.set_num_threads(threads)
    found = conventions(tokenizer)
    eos_id, pad_id = found["eos_id"], found["pad_id"]
    writer = ArtifactWriter(store, spec)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="eval-") as scratch:
        work = Path(scratch)
        encoder = Tokenizer.from_str(tokenizer_json(store, tokenizer))
        data = prepare_data(settings, store, encoder, eos_id, pad_id, tokens, filters, ift, mc_files, work)
        progress(f"eval: {sum(len(rows) for rows in data['val'].values())} held-out sequences, "
                 f"{data['documents']} held-out documents -> "
                 + ", ".join(f"{name} {len(items)} items" for name, items in data["multiple_choice"].items())
                 + f", last_word {len(data['last_word'])} items")
        for name, model_ref in models.items():
            model = load_model(model_ref.hf_dir(store, work / name)).eval()
            results[name] = evaluate_model(torch_scorer(model, context_length(model_ref.config)), data, general,
                                           domain)
            progress(f"eval: {name:8} ({model_ref.name}) general perplexity {results[name]['general_perplexity']:.2f}"
                     + (f", domain {results[name]['domain_perplexity']:.2f}" if domain else ""))
        path = work / "results.json"
        path.write_text(json.dumps({"models": {name: model.name for name, model in models.items()},
                                    "results": results}, indent=2, sort_keys=True))
        files = [writer.put_file("results.json", path, "results")]
    table = results_table(results)
    gate = gate_decision(results, candidate, baseline, settings.gate.general_tolerance, bool(domain))
    gate.update({"ref": settings.gate.ref, "enabled": settings.gate.enabled,
                 "candidate_model": models[candidate].name,
                 "baseline_model": models[baseline].name if baseline else None})
    progress(f"eval: gate {'PROMOTES' if gate['promote'] else 'keeps'} {gate['candidate_model']}: {gate['reason']}")
    counts = {"models": len(models), "promoted": gate["promote"] and gate["enabled"],
              "items": {name: len(items) for name, items in data["multiple_choice"].items()} |
                       {"last_word": len(data["last_word"])}}
    summary = {"models": {name: model.name for name, model in models.items()}, "gate": gate, "table": table,
               "metrics": {name: metric_rows(model) for name, model in results.items()},
               "seconds": round(time.monotonic() - started, 1)}
    return writer.commit(files, counts, summary=summary)


def apply_gate(store: ObjectStore, manifest: dict, models: dict[str, StartingModel]) -> dict | None:
    """Point the ref at the candidate if the gate says so and the ref still points where the decision
    was made (an eval rerun after an interruption promotes; a stale decision does not)."""
    gate = manifest["summary"]["gate"]
    if not gate["enabled"] or not gate["promote"]:
        return None
    current = get_ref(store, gate["ref"])
    current_name = f"{current['artifact']}@{current['version']}" if current else None
    if current_name == gate["candidate_model"]:
        return current
    if current is not None and current_name != gate["baseline_model"]:
        return None  # the ref moved since this decision was made
    target = models[gate["candidate"]].manifest
    return set_ref(store, gate["ref"], {"artifact": target["artifact"], "version": target["version"],
                                        "uri": target["uri"], "eval": manifest["version"], "reason": gate["reason"]})


def gate_baseline(store: ObjectStore, ref_name: str, candidate: str) -> str | None:
    """The model the candidate is compared with: the one the ref points at — or, if this candidate was
    already promoted by an earlier eval, the one that eval compared it with (so a rerun has the same
    inputs and version as the run that promoted it). None: the ref is unset."""
    ref = get_ref(store, ref_name)
    if ref is None:
        return None
    name = f"{ref['artifact']}@{ref['version']}"
    if name == candidate and ref.get("eval"):
        earlier = read_manifest(store, STAGE, ref["eval"])
        if earlier is not None:
            return earlier["summary"]["gate"]["baseline_model"]
    return name


def models_to_compare(ctx: RunContext, results: dict[str, dict | None]) -> tuple[dict[str, StartingModel], str,
                                                                                str | None]:
    """(models by name, the candidate, the baseline) from the model stages' results (`base`: the model
    artifact CPT started from, `cpt`, `ift`) and the gate's ref."""
    config = ctx.config
    models: dict[str, StartingModel] = {}
    if results.get("base"):
        models["base"] = artifact_model(upstream_manifest(ctx, results["base"]))
    else:  # the user's checkpoint (cpt.init or ift.init)
        models["base"] = check_base_checkpoint(config, ctx.base_dir)
    for phase in ("cpt", "ift"):
        if results.get(phase):
            models[phase] = artifact_model(upstream_manifest(ctx, results[phase]))
    candidate = list(models)[-1]
    baseline_name = gate_baseline(ctx.store, config.eval.gate.ref, models[candidate].name)
    baseline: str | None = "base" if candidate != "base" else None
    if baseline_name is not None:
        same = [key for key, model in models.items() if model.name == baseline_name]
        if same:
            baseline = same[0]
        else:
            artifact, _, version = baseline_name.rpartition("@")
            manifest = read_manifest(ctx.store, artifact, version)
            if manifest is None:
                raise RuntimeError(f"eval.gate.ref {config.eval.gate.ref!r} points at {baseline_name}, which is not "
                                   f"committed")
            models["current"] = StartingModel(baseline_name, version, manifest=manifest)
            baseline = "current"
    return models, candidate, baseline


@task(name="eval", task_run_name="eval", cache_policy=NO_CACHE, persist_result=False)
def eval_task(ctx: RunContext, model_results: dict[str, dict | None], tokens_results: dict[str, dict],
              filter_results: dict[str, dict], tokenizer_result: dict) -> Any:
    """Resolve the version from the models, the data and the config; skip or score; then apply the gate."""
    config = ctx.config
    models, candidate, baseline = models_to_compare(ctx, model_results)
    tokens = {s: upstream_manifest(ctx, r) for s, r in tokens_results.items()}
    filters = {s: upstream_manifest(ctx, r) for s, r in filter_results.items()}
    tokenizer = upstream_manifest(ctx, tokenizer_result)
    ift = models["ift"].manifest if "ift" in models else None
    mc_files = eval_files(config.eval.multiple_choice, ctx.base_dir, key="eval.multiple_choice")
    spec = eval_spec(config.eval, models, candidate, baseline, [*tokens.values(), *filters.values()], tokenizer,
                     mc_files, rebuild=ctx.rebuild_token(STAGE))
    result = execute_stage(ctx, spec, lambda emit: run_eval(
        config.eval, ctx.store, spec, models, candidate, baseline, tokens, filters, tokenizer, ift, mc_files,
        config.general_sources(), config.domain_sources(), config.train.threads_per_process, emit))
    manifest = read_manifest(ctx.store, spec.artifact, spec.version)
    promoted = apply_gate(ctx.store, manifest, models)
    if promoted is not None:
        from prefect.logging import get_run_logger

        get_run_logger().info("gate: %s -> %s@%s", config.eval.gate.ref, promoted["artifact"], promoted["version"])
    return result
