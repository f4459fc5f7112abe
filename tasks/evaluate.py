"""Eval stage (`eval`): the base, CPT and IFT models side by side on lm-evaluation-harness tasks and
held-out text, and the promotion gate that moves the `current` ref.

Every model — base (the model CPT started from), cpt, ift, and the model the gate's ref points at if it
is another one — is read only as a Hugging Face directory (tasks/checkpoints.py), whatever its family
and tokenizer, and gets:
- the harness's numbers (tasks/harness.py) for `eval.tasks` (harness task names, and tasks defined by
  the YAMLs of `eval.include_path`) plus the tasks generated from the held-out documents
  (`heldout_cloze`, `heldout_last_word`: corpus/eval_tasks.py), with per-sample logs;
- the CORE-style aggregate of those tasks: mean centred accuracy (acc - chance) / (1 - chance);
- bits per byte and perplexity on each source's held-out documents — the filtered documents whose id
  the tokenize stage put in its validation split, at most `heldout.max_bytes_per_source` bytes per
  source, tokenized by the model's own tokenizer (model/scoring.py) — and pooled over the general and
  the domain sources (summed nats / (ln 2 x summed bytes));
- with an IFT model, the loss on its held-out assistant turns (the IFT artifact's val/ rows, masked as
  in training), for the models whose tokenizer is the IFT model's.

The artifact: results.json (every number of every model), harness/<model>/results.json and
samples_<task>.jsonl (the harness's own output and per-sample logs), tasks/ (the generated task
folder: YAMLs, data, loader; `lm_eval --include_path tasks/` reruns them). The manifest holds the table
(metric x model, with each model's difference from the base and, when the gate compared with another
model, the candidate's difference from that one), the harness version and every task's version, and
the gate's decision with its checks (tasks/gate.py). The table and the gate card are in the Prefect UI
and `make demo` prints them.

The core (`evaluate_model`, `run_eval`) knows nothing of Prefect; `eval_task` is the thin task.
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from corpus.eval_tasks import Document, cloze_items, last_word_items, write_task_folder
from corpus.token_shards import read_tokens, sequences
from model.scoring import Loss, row_loss, text_loss
from pipeline.artifacts import ArtifactWriter, StageSpec, fetch_verified, files_with_role, read_manifest, sha256_file
from pipeline.config import EvalConfig
from pipeline.storage import ObjectStore
from pipeline.units import read_shard

from . import harness
from .checkpoints import StartingModel, artifact_model, check_base_checkpoint
from .gate import apply_gate, gate_baseline, gate_decision, gate_markdown
from .stage import RunContext, artifact_key, execute_stage, stage_task, upstream_manifest
from .tokenize import split_of

STAGE = "eval"
CODE_VERSION = "2"


def held_out_documents(store: ObjectStore, filters: dict[str, dict], tokens: dict[str, dict], max_bytes: int,
                       scratch: Path) -> dict[str, list[Document]]:
    """Per source, the filtered documents the tokenize stage put in its validation split (same rule:
    tasks/tokenize.py split_of), in shard order, up to `max_bytes` of UTF-8 text (the last one cut)."""
    documents: dict[str, list[Document]] = {}
    for source in sorted(filters):
        val_fraction = tokens[source]["config"]["val_fraction"]
        kept, budget = documents.setdefault(source, []), max_bytes
        for entry in sorted(files_with_role(filters[source], "documents"), key=lambda e: e["path"]):
            for batch in read_shard(store, filters[source], entry, scratch, columns=["id", "lang", "text"]):
                for doc_id, lang, text in zip(*(batch.column(i).to_pylist() for i in range(3))):
                    if budget <= 0:
                        break
                    if split_of(doc_id, val_fraction) != "val" or not text:
                        continue
                    encoded = text.encode("utf-8")
                    if len(encoded) > budget:
                        text = encoded[:budget].decode("utf-8", errors="ignore")
                    kept.append(Document(doc_id, lang, text))
                    budget -= len(encoded)
            if budget <= 0:
                break
    return documents


def val_rows(store: ObjectStore, manifest: dict, limit: int, scratch: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The first `limit` held-out rows of a token artifact (the IFT model's), with their loss masks if any."""
    entries = sorted((e for e in files_with_role(manifest, "tokens") if e["split"] == "val"), key=lambda e: e["path"])
    directory = scratch / "val" / manifest["artifact"].replace("/", "_")
    directory.mkdir(parents=True, exist_ok=True)
    rows, masks = [], []
    for entry in entries:
        table = read_tokens(fetch_verified(store, manifest, entry, directory))
        rows.append(sequences(table))
        if "loss_mask" in table.column_names:
            column = table.column("loss_mask").combine_chunks()
            masks.append(column.values.to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size))
        if sum(len(r) for r in rows) >= limit:
            break
    if not rows:
        return np.zeros((0, 0), dtype=np.int64), None
    return np.concatenate(rows)[:limit], (np.concatenate(masks)[:limit] if masks else None)


def pooled(per_source: dict[str, Loss], sources: list[str]) -> Loss | None:
    """The sources' losses summed (nats, tokens, bytes): a token- and byte-weighted pool."""
    scored = [per_source[source] for source in sources if per_source.get(source) and per_source[source].tokens]
    if not scored:
        return None
    total = Loss()
    for loss in scored:
        total = total.add(loss)
    return total


def generate_tasks(documents: dict[str, list[Document]], settings: EvalConfig, directory: Path) -> list[str]:
    """The cloze and last-word tasks of the held-out documents in `generated.languages`, as a harness task
    folder; their names."""
    generated = settings.generated
    chosen = [doc for source in sorted(documents) for doc in documents[source] if doc.lang in generated.languages]
    cloze = cloze_items(chosen, generated.cloze_items, generated.cloze_choices, generated.cloze_context_words,
                        generated.cloze_continuation_words, generated.seed, generated.cloze_stride_words) \
        if generated.cloze_items else []
    last_word = last_word_items(chosen, generated.last_word_items, generated.last_word_context_words) \
        if generated.last_word_items else []
    return write_task_folder(directory, cloze, last_word)


def evaluate_model(lm, manager, settings: EvalConfig, task_names: list[str], documents: dict[str, list[Document]],
                   general: list[str], domain: list[str], chat: dict | None) -> tuple[dict, dict]:
    """(every number of one loaded model, the harness's raw output)."""
    raw = harness.run_tasks(lm, manager, task_names, settings.limit, settings.num_fewshot, settings.bootstrap_iters) \
        if task_names else {"results": {}, "samples": {}, "configs": {}, "versions": {}}
    per_source = {source: text_loss(lm.model, lm.tokenizer, (doc.text for doc in docs), settings.heldout.window,
                                    settings.heldout.stride, settings.batch_size)
                  for source, docs in documents.items()}
    general_loss, domain_loss = pooled(per_source, general), pooled(per_source, domain)
    results: dict[str, Any] = {
        "heldout": {source: loss.as_dict() for source, loss in per_source.items()},
        "general": general_loss.as_dict() if general_loss else None,
        "domain": domain_loss.as_dict() if domain_loss else None,
        "tasks": harness.task_metrics(raw),
        "higher_is_better": raw.get("higher_is_better", {}),
        "core": harness.core_score(raw, task_names, settings.core_metric),
    }
    if chat is not None:
        same_tokenizer = lm.tokenizer.get_vocab() == chat["vocab"]
        results["assistant_loss"] = row_loss(lm.model, chat["rows"], chat["pad_id"], chat["masks"],
                                             settings.batch_size).loss if same_tokenizer else None
    return results, raw


def metric_rows(results: dict) -> dict[str, float | None]:
    """One model's results as flat, named numbers (the table's rows)."""
    rows: dict[str, float | None] = {}
    for measure, key in (("bpb", "bits_per_byte"), ("perplexity", "perplexity")):
        rows[f"{measure} general"] = (results["general"] or {}).get(key)
        rows[f"{measure} domain"] = (results["domain"] or {}).get(key)
        rows.update({f"{measure} {source}": entry[key] for source, entry in results["heldout"].items()})
    rows["CORE"] = results["core"]["core"]
    for name, metrics in results["tasks"].items():
        rows.update({f"{name} {metric}": value for metric, value in metrics.items()})
    if "assistant_loss" in results:
        rows["assistant loss"] = results["assistant_loss"]
    return rows


def results_table(results: dict[str, dict], candidate: str | None = None, baseline: str | None = None) -> list[dict]:
    """Rows: metrics; columns: the models, each model's difference from the base, and (when the gate
    compared with another model) the candidate's difference from that baseline."""
    flat = {name: metric_rows(model) for name, model in results.items()}
    deltas = [(name, "base") for name in flat if name != "base" and "base" in flat]
    if candidate and baseline and baseline != "base" and (candidate, baseline) not in deltas:
        deltas.append((candidate, baseline))
    metrics = list(dict.fromkeys(metric for rows in flat.values() for metric in rows))
    table = []
    for metric in metrics:
        row: dict[str, Any] = {"metric": metric}
        row.update({name: _round(flat[name].get(metric)) for name in flat})
        for name, reference in deltas:
            mine, theirs = flat[name].get(metric), flat[reference].get(metric)
            row[f"{name} - {reference}"] = _round(mine - theirs) if mine is not None and theirs is not None else None
        table.append(row)
    return table


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def include_paths(settings: EvalConfig, base_dir: Path) -> list[Path]:
    paths = []
    for name in settings.include_path:
        path = Path(name) if Path(name).is_absolute() else base_dir / name
        if not path.is_dir():
            raise FileNotFoundError(f"eval.include_path: {name!r} is not a folder (in {base_dir})")
        paths.append(path)
    return paths


def folder_files(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file of the task folders (what a local task's numbers depend on)."""
    return {f"{index}/{path.relative_to(folder)}": sha256_file(path)
            for index, folder in enumerate(paths) for path in sorted(folder.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts}


def eval_spec(settings: EvalConfig, models: dict[str, StartingModel], candidate: str, baseline: str | None,
              inputs: list[dict], task_folders: list[Path], rebuild: str | None = None) -> StageSpec:
    return StageSpec(stage=STAGE, artifact=STAGE, code_version=CODE_VERSION,
                     config={**settings.versioned(), "candidate": candidate, "baseline": baseline},
                     inputs={"models": {name: model.identity for name, model in models.items()},
                             "data": {manifest["artifact"]: manifest["version"] for manifest in inputs},
                             "task_files": folder_files(task_folders), "harness": harness.harness_version()},
                     rebuild=rebuild)


def chat_data(store: ObjectStore, ift: StartingModel, settings: EvalConfig, work: Path) -> dict:
    """The IFT artifact's held-out rows and the vocabulary they are in (its model's tokenizer)."""
    from transformers import AutoTokenizer

    rows, masks = val_rows(store, ift.manifest, settings.max_chat_sequences, work)
    vocab = AutoTokenizer.from_pretrained(str(ift.hf_dir(store, work / "models"))).get_vocab()
    return {"rows": rows, "masks": masks, "pad_id": ift.manifest["summary"].get("pad_id", -100), "vocab": vocab}


def run_eval(settings: EvalConfig, store: ObjectStore, spec: StageSpec, models: dict[str, StartingModel],
             candidate: str, baseline: str | None, tokens: dict[str, dict], filters: dict[str, dict],
             task_folders: list[Path], general: list[str], domain: list[str],
             progress: Callable[[str], None] = print) -> dict:
    """Score every model, compare, decide the gate and commit; returns the manifest."""
    started = time.monotonic()
    writer = ArtifactWriter(store, spec)
    results: dict[str, dict] = {}
    raws: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="eval-") as scratch:
        work = Path(scratch)
        documents = held_out_documents(store, filters, tokens, settings.heldout.max_bytes_per_source, work)
        generated = generate_tasks(documents, settings, work / "tasks")
        task_names = list(dict.fromkeys(settings.tasks + generated))
        manager = harness.task_manager(task_folders + ([work / "tasks"] if generated else []), task_names)
        harness.check_tasks(manager, task_names)
        chat = chat_data(store, models["ift"], settings, work) if "ift" in models else None
        progress(f"eval: lm-evaluation-harness {harness.harness_version()}, tasks {task_names}; held-out text "
                 + ", ".join(f"{source} {len(docs)} documents" for source, docs in documents.items())
                 + (f"; {len(chat['rows'])} held-out chat rows" if chat else ""))
        files = []
        for name, model in models.items():
            lm = harness.load_model(model.hf_dir(store, work / "models"), settings.dtype, settings.device,
                                    settings.batch_size)
            results[name], raws[name] = evaluate_model(lm, manager, settings, task_names, documents, general, domain,
                                                       chat)
            del lm
            gc.collect()
            for path in harness.write_outputs(raws[name], work / "harness" / name):
                files.append(writer.put_file(f"harness/{name}/{path.name}", path, "harness"))
            rows = metric_rows(results[name])
            progress(f"eval: {name:8} ({model.name}) bpb general {_shown(rows['bpb general'])}, domain "
                     f"{_shown(rows['bpb domain'])}, CORE {_shown(rows['CORE'])}")
        for path in sorted((work / "tasks").glob("*")) if generated else []:
            if path.is_file():  # not the loader's __pycache__
                files.append(writer.put_file(f"tasks/{path.name}", path, "tasks"))
        path = work / "results.json"
        path.write_text(json.dumps({"models": {name: model.name for name, model in models.items()},
                                    "results": results}, indent=2, sort_keys=True))
        files.append(writer.put_file("results.json", path, "results"))
    gate = gate_decision(results, candidate, baseline, settings.gate, bool(domain))
    gate.update({"ref": settings.gate.ref, "enabled": settings.gate.enabled,
                 "candidate_model": models[candidate].name,
                 "baseline_model": models[baseline].name if baseline else None})
    progress(f"eval: gate {'PROMOTES' if gate['promote'] else 'keeps'} {gate['candidate_model']}: {gate['reason']}")
    first = next(iter(raws.values()))
    counts = {"models": len(models), "promoted": gate["promote"] and gate["enabled"],
              "items": {task: entry["items"] for task, entry in harness.task_versions(first).items()},
              "heldout_documents": {source: len(docs) for source, docs in documents.items()}}
    summary = {"models": {name: model.name for name, model in models.items()}, "gate": gate,
               "table": results_table(results, candidate, baseline),
               "metrics": {name: metric_rows(model) for name, model in results.items()},
               "harness": {"version": harness.harness_version(), "tasks": harness.task_versions(first),
                           "generated_tasks": generated},
               "heldout": {"window": settings.heldout.window, "stride": settings.heldout.stride},
               "seconds": round(time.monotonic() - started, 1)}
    return writer.commit(files, counts, summary=summary)


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def models_to_compare(ctx: RunContext, results: dict[str, dict | None]) -> tuple[dict[str, StartingModel], str,
                                                                                str | None]:
    """(models by name, the candidate, the baseline) from the model stages' results (`base`: the model
    artifact CPT started from, `cpt`, `ift`) and the gate's ref."""
    config = ctx.config
    models: dict[str, StartingModel] = {}
    if results.get("base"):  # the pretrain artifact, or in a refresh the model CPT continued from
        models["base"] = artifact_model(upstream_manifest(ctx, results["base"]))
    elif (checkpoint := check_base_checkpoint(config, ctx.base_dir)) is not None:  # cpt.init / ift.init
        models["base"] = checkpoint
    else:
        raise ValueError("eval: there is no base model to evaluate (no pretrain artifact, cpt.init: pretrain)")
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
            models["current"] = artifact_model(manifest)
            baseline = "current"
    return models, candidate, baseline


def publish_gate(manifest: dict, moved: dict | None) -> None:
    from prefect.artifacts import create_markdown_artifact

    gate = manifest["summary"]["gate"]
    create_markdown_artifact(key=f"{artifact_key(STAGE)}-gate", markdown=gate_markdown(gate, moved),
                             description=f"eval @ {manifest['version']}: the gate's decision on {gate['candidate_model']}")


# log_prints off: dill (under datasets, under the harness) captures the stdout of `dis` to find a function's
# globals, and Prefect's print-to-log would send that disassembly to the run's log instead.
@stage_task("eval", "eval", log_prints=False)
def eval_task(ctx: RunContext, model_results: dict[str, dict | None], tokens_results: dict[str, dict],
              filter_results: dict[str, dict]) -> Any:
    """Resolve the version from the models, the data, the task files and the config; skip or score; then
    apply the gate."""
    from prefect.logging import get_run_logger

    config = ctx.config
    folders = include_paths(config.eval, ctx.base_dir)
    models, candidate, baseline = models_to_compare(ctx, model_results)
    tokens = {s: upstream_manifest(ctx, r) for s, r in tokens_results.items()}
    filters = {s: upstream_manifest(ctx, r) for s, r in filter_results.items()}
    spec = eval_spec(config.eval, models, candidate, baseline, [*tokens.values(), *filters.values()], folders,
                     rebuild=ctx.rebuild_token(STAGE))
    result = execute_stage(ctx, spec, lambda emit: run_eval(
        config.eval, ctx.store, spec, models, candidate, baseline, tokens, filters, folders,
        config.general_sources(), config.domain_sources(), emit))
    manifest = read_manifest(ctx.store, spec.artifact, spec.version)
    moved = apply_gate(ctx.store, manifest, models[candidate].manifest)
    logger = get_run_logger()
    gate = manifest["summary"]["gate"]
    if moved is not None:
        logger.info("gate: %s -> %s@%s (%s)", gate["ref"], moved["artifact"], moved["version"], gate["reason"])
    else:
        logger.info("gate: %s does not move (%s)", gate["ref"], gate["reason"] if not gate["promote"] else
                    "it already points at the candidate, or moved since this decision" if gate["enabled"] else
                    "eval.gate.enabled is false")
    publish_gate(manifest, moved)
    return result
