"""`pretrain-pipeline`: run the flow, validate the config, browse artifacts, runs and refs, drive the stack.

    pretrain-pipeline validate [-c pipeline.yaml] [--set KEY=VALUE ...]
    pretrain-pipeline run      [-c ...] [--set ...] [--only STAGE ...] [--force STAGE ...] [--refresh] [--json]
    pretrain-pipeline ablate   RECIPES.yaml [--set KEY=VALUE ...] [--json]
    pretrain-pipeline artifacts list | show ARTIFACT [VERSION] | quarantine ARTIFACT [VERSION]
    pretrain-pipeline runs list | show RUN_ID
    pretrain-pipeline refresh history [--json]
    pretrain-pipeline watch    FLOW_RUN_ID
    pretrain-pipeline lineage  REF | ARTIFACT[@VERSION] [--json]
    pretrain-pipeline refs show NAME | history NAME | set NAME ARTIFACT VERSION
    pretrain-pipeline quality-model train --positive SPEC ... --negative SPEC ... [--name default]
    pretrain-pipeline train-node [-c ...] [--set ...] [--node-rank N] [--idle-timeout S]
    pretrain-pipeline stack up | down | status
    pretrain-pipeline demo [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from .artifacts import fetch_verified, files_with_role, list_artifacts, list_versions, read_manifest
from .config import ConfigError, PipelineConfig, load_config, parse_overrides
from .runs import get_ref, list_runs, read_run, ref_history, run_key, set_ref
from .storage import open_store


def _config(args) -> PipelineConfig:
    return load_config(args.config, args.set)


def _store(args):
    return open_store(_config(args).storage, ensure=False)


def _resolve_version(store, artifact: str, version: str | None) -> dict:
    if version in (None, "latest"):
        versions = list_versions(store, artifact)
        if not versions:
            raise SystemExit(f"no committed version of {artifact} in {store.uri()}")
        return versions[-1]
    manifest = read_manifest(store, artifact, version)
    if manifest is None:
        raise SystemExit(f"{artifact}@{version} is not committed in {store.uri()}")
    return manifest


def cmd_validate(args) -> int:
    """The config, then every source's location: it exists and can be read (a local path, or an s3:// prefix
    that lists objects)."""
    from .sources import SourceError, check_location

    config = _config(args)
    problems = []
    for source in config.sources:
        try:
            check_location(source, config.storage, Path(args.config).resolve().parent)
        except SourceError as exc:
            problems.append(str(exc))
    if problems:
        raise SourceError("; ".join(problems))
    from tasks.checkpoints import check_base_checkpoint

    check_base_checkpoint(config, Path(args.config).resolve().parent)  # the user's checkpoint, if any
    print(f"{args.config}: valid ({len(config.sources)} sources: {', '.join(s.name for s in config.sources)}; "
          f"every location readable)")
    return 0


def cmd_run(args) -> int:
    # Fail fast, before Prefect starts (whose logs would wrap the error in tracebacks): the config and
    # overrides, the stage names, the sources' locations, the store and its credentials.
    from flows.pretrain_pipeline import PipelineFailed, preflight, pretrain_pipeline

    config = _config(args)
    preflight(config, args.config, args.only, args.force, args.refresh)
    open_store(config.storage)
    try:
        result = pretrain_pipeline(config_path=args.config, overrides=parse_overrides(args.set) or None,
                                   only=args.only, force=args.force, refresh=args.refresh)
    except PipelineFailed as exc:  # stages failed: the same summary (or the record), saying which and why
        if exc.run_id is None:
            raise
        store = _store(args)
        result = {"run_id": exc.run_id, "record": store.uri(run_key(exc.run_id)), "status": "failed",
                  "error": str(exc), "stages": read_run(store, exc.run_id)["stages"]}
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        from .report import summary_lines

        print("\n".join(summary_lines(read_run(_store(args), result["run_id"]), result["record"])))
    return 1 if result.get("status") == "failed" else 0


def cmd_ablate(args) -> int:
    """The ablation flow here; the whole recipe file (every recipe's config, every source) is checked first."""
    from flows.ablation import ablation, preflight_ablation
    from tasks.ablation import report_markdown

    overrides = parse_overrides(args.set) or None
    plan = preflight_ablation(args.recipes, overrides)
    open_store(plan.base.storage)
    result = ablation(recipes_path=args.recipes, overrides=overrides)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(report_markdown(result["summary"], Path(args.recipes).name).rstrip())
    print(f"\nablation@{result['artifact']['version']} ({result['artifact']['status']}): {result['uri']}")
    print(f"run record: {result['record']}")
    return 0


def cmd_artifacts(args) -> int:
    store = _store(args)
    if args.action == "list":
        for name in list_artifacts(store):
            for manifest in list_versions(store, name):
                counts = manifest.get("counts", {})
                print(f"{name:32} {manifest['version']}  {manifest['build'].get('committed_at', '')}  "
                      f"documents={counts.get('documents', '-')}  {manifest['uri']}")
        return 0
    manifest = _resolve_version(store, args.artifact, args.version)
    if args.action == "show":
        print(json.dumps(manifest, indent=2))
        return 0
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as scratch:
        # ingest quarantines records; the later stages remove documents (removed/), with the same columns
        for entry in [*files_with_role(manifest, "quarantine"), *files_with_role(manifest, "removed")]:
            table = pq.read_table(fetch_verified(store, manifest, entry, Path(scratch)),
                                  columns=["origin", "reason", "detail", "size"])
            for row in table.to_pylist():
                print(f"{row['reason']:26} {row['origin']:40} {row['size'] or 0:>10}  {row['detail']}")
    return 0


def removal_rows(stages: dict[str, dict]) -> list[tuple[str, str, int]]:
    """(artifact, reason, documents) for every record quarantined or document removed, in DAG order."""
    rows = []
    for artifact, stage in sorted(stages.items(), key=lambda item: _stage_order(item[0])):
        counts = stage.get("counts", {})
        for group in ("quarantined", "removed"):
            for reason, number in sorted(counts.get(group, {}).items(), key=lambda item: (-item[1], item[0])):
                rows.append((artifact, reason, number))
    return rows


def mixture_table(counts: dict) -> list[str]:
    """The mixture as GPT-3's Table 2.2: per source its tokens, weight, what training samples, epochs."""
    lines = [f"{'source':14} {'tokens available':>16} {'weight':>7} {'sequences':>10} {'tokens sampled':>15} "
             f"{'epochs':>7}"]
    for source, row in counts["sources"].items():
        lines.append(f"{source:14} {row['tokens_available']:>16,} {row['weight']:>7.1%} {row['sequences']:>10,} "
                     f"{row['tokens']:>15,} {row['epochs']:>7.2f}{'  (capped)' if row.get('capped') else ''}")
    lines.append(f"{'total':14} {'':>16} {'':>7} {counts['sequences']:>10,} {counts['tokens']:>15,}")
    if counts.get("shortfall_sequences"):
        lines.append(f"every source reached max_epochs: {counts['shortfall_sequences']:,} sequences of the budget "
                     f"are not sampled")
    return lines


def comparison_table(summary: dict) -> list[str]:
    """The eval stage's table (metrics x models, then each model's difference from the base) and the gate."""
    table = summary["table"]
    columns = [key for key in table[0] if key != "metric"]
    width = max(len(row["metric"]) for row in table) + 2
    lines = [f"{'metric':{width}}" + "".join(f"{column:>13}" for column in columns)]
    for row in table:
        cells = "".join(f"{row[c]:>13.4g}" if isinstance(row.get(c), (int, float)) else f"{'-':>13}" for c in columns)
        lines.append(f"{row['metric']:{width}}{cells}")
    gate = summary["gate"]
    verdict = "promoted to" if gate["promote"] and gate["enabled"] else "not promoted to"
    lines.append(f"gate: {gate['candidate_model']} {verdict} `{gate['ref']}` (against "
                 f"{gate['baseline_model'] or 'nothing'}): {gate['reason']}")
    return lines


def cmd_refresh(args) -> int:
    from flows.pretrain_pipeline import FLOW_NAME
    from flows.refresh import refresh_history

    history = refresh_history(_store(args), FLOW_NAME)
    if args.json:
        print(json.dumps(history, indent=2))
        return 0
    if not history:
        print("no refresh run yet (deployment pretrain-pipeline/cpt-refresh, or `pretrain-pipeline run --refresh`)")
    for entry in history:
        print(f"{entry['run_id']}  {entry['status']:9} {entry['finished_at'] or '':25} from {entry['continued_from']}")
        for source, data in entry["data"].items():
            print(f"  data   {source}: ingest@{data['ingest']}, {data['new_documents']} new documents after dedup")
        if entry["model"]:
            print("  model  " + ", ".join(f"{name}@{version}" for name, version in entry["model"].items()))
        if "gate" in entry:
            scores = ", ".join(f"{name}: domain bpb {values['domain_bpb']:.4f}, general {values['general_bpb']:.4f}"
                               for name, values in entry["scores"].items()
                               if values["domain_bpb"] is not None and values["general_bpb"] is not None)
            verdict = "promoted" if entry["gate"]["promote"] else "not promoted"
            print(f"  scores {scores}\n  gate   {entry['gate']['candidate_model']} {verdict}: {entry['gate']['reason']}")
        elif entry.get("note"):
            print(f"  note   {entry['note']}")
    return 0


def cmd_runs(args) -> int:
    store = _store(args)
    if args.action == "list":
        for run in list_runs(store):
            print(f"{run['run_id']}  {run['status']:9} attempt {run['attempt']}  {run['started_at']}  "
                  f"{len(run['stages'])} stages")
        return 0
    run = read_run(store, args.run_id)
    if run is None:
        raise SystemExit(f"no run record {args.run_id} in {store.uri('runs')}")
    print(f"run {run['run_id']} ({run['flow']}): {run['status']}, attempt {run['attempt']}, "
          f"started {run['started_at']}, finished {run['finished_at']}")
    print(f"parameters: {json.dumps(run['parameters'])}")
    print("lineage:")
    for artifact, stage in sorted(run["stages"].items()):
        print(f"  {artifact:30} {stage.get('status', ''):9} {stage.get('version', ''):22} {stage.get('uri', '')}")
        manifest = read_manifest(store, artifact, stage["version"]) if stage.get("version") else None
        if manifest:
            print(f"  {'':30} inputs: {json.dumps(manifest['inputs'])}")
        if stage.get("error"):
            print(f"  {'':30} error: {stage['error']}")
    if args.config_too:
        print(json.dumps(run["config"], indent=2))
    return 0


def cmd_watch(args) -> int:
    from .follow import follow

    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        raise SystemExit("error: PREFECT_API_URL is not set; `. .stack/env` first (or export it for your server)")
    state = follow(api_url, args.flow_run_id, timeout=args.timeout)
    return 0 if state == "Completed" else 1


def cmd_lineage(args) -> int:
    from .lineage import LineageError, lineage, render

    try:
        tree = lineage(_store(args), args.target)
    except LineageError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps(tree, indent=2) if args.json else "\n".join(render(tree)))
    return 0


def cmd_refs(args) -> int:
    store = _store(args)
    if args.action == "show":
        print(json.dumps(get_ref(store, args.name), indent=2))
    elif args.action == "history":
        for entry in ref_history(store, args.name):
            print(json.dumps(entry))
    else:
        manifest = _resolve_version(store, args.artifact, args.version)
        print(json.dumps(set_ref(store, args.name, {"artifact": manifest["artifact"],
                                                    "version": manifest["version"], "uri": manifest["uri"]}), indent=2))
    return 0


def cmd_quality_model(args) -> int:
    from tasks.quality_model import train_quality_model

    config = _config(args)
    store = open_store(config.storage)
    try:
        manifest = train_quality_model(store, args.name, args.positive, args.negative, config.quality_model,
                                       base_dir=Path.cwd())
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"artifact: {manifest['uri']}")
    print(f"ref:      {manifest['artifact']} -> {manifest['version']}  "
          f"(use it with filter.classifier.model: {manifest['artifact']})")
    print(f"metrics:  {json.dumps(manifest['summary'], sort_keys=True)}")
    return 0


def cmd_train_node(args) -> int:
    """Node 1..N-1 of a multi-node training job: join every training launch node 0 writes (model/launch.py)."""
    from model.launch import job_id_from_env, node_rank_from_env, serve_node

    config = _config(args)
    if config.train.nodes == 1 or config.train.work_dir is None:
        raise SystemExit("error: train-node needs train.nodes > 1 and train.work_dir (the directory the nodes share)")
    node_rank = args.node_rank if args.node_rank is not None else node_rank_from_env()
    if node_rank is None:
        raise SystemExit("error: no node rank: pass --node-rank, or run under a scheduler that sets one "
                         "(JOB_COMPLETION_INDEX, SLURM_NODEID, PET_NODE_RANK, NODE_RANK)")
    if not 1 <= node_rank < config.train.nodes:
        raise SystemExit(f"error: node rank {node_rank}: train-node runs on nodes 1..{config.train.nodes - 1} "
                         f"(node 0 runs the training stage)")
    failed = serve_node(config.train.work_dir, job_id_from_env(), node_rank, idle_timeout=args.idle_timeout,
                        log=lambda message: print(message, flush=True))
    return 1 if failed else 0


def cmd_stack(args) -> int:
    from . import stack

    directory = Path(args.dir)
    if args.action == "up":
        running = stack.up(directory, s3_port=args.s3_port, prefect_port=args.prefect_port)
        print(f"Prefect UI:   {running.ui_url}\nS3 endpoint:  {running.s3.endpoint_url}\n"
              f"Then, in your shell (the credentials, PREFECT_API_URL, and {Path(sys.executable).parent} on PATH "
              f"for `prefect` and `pretrain-pipeline`):\n"
              f"  . {directory / 'env'}\n"
              f"  prefect deployment run 'pretrain-pipeline/full' --watch")
    elif args.action == "down":
        stack.down(directory)
    else:
        running = stack.load_stack(directory)
        print(json.dumps({"running": running is not None, "ui": running.ui_url if running else None,
                          "s3": running.s3.endpoint_url if running else None}, indent=2))
    return 0


def _stage_order(artifact: str) -> tuple:
    from flows.dag import STAGES

    stage, _, source = artifact.partition("/")
    return (STAGES.index(stage) if stage in STAGES else len(STAGES), source)


def cmd_demo(args) -> int:
    from . import stack
    from .follow import run_and_follow

    directory = Path(args.dir)
    running = stack.up(directory, s3_port=args.s3_port, prefect_port=args.prefect_port)
    os.environ.update(running.env())
    try:
        print(f"\n== pretrain-pipeline/full on the bundled sample (UI: {running.ui_url}) ==", flush=True)
        overrides = {"storage.endpoint_url": running.s3.endpoint_url}
        run_id, state = run_and_follow(running.api_url, "pretrain-pipeline/full", {"overrides": overrides},
                                       timeout=args.timeout)
        store = open_store(load_config(args.config, overrides).storage, ensure=False)
        run = read_run(store, run_id)
        print(f"\n== flow run {run_id}: {state} ==")
        print(f"Prefect UI:  {running.ui_url}/runs/flow-run/{run_id}")
        if run is None:
            print(f"no run record was written; see {directory / 'worker.log'}")
            return 1
        print(f"Run record:  {store.uri('runs/' + run_id + '.json')}")
        for artifact, stage in sorted(run["stages"].items(), key=lambda item: _stage_order(item[0])):
            print(f"{artifact:22} {stage['status']:9} {stage.get('uri', stage.get('error', ''))}")
            if stage.get("version"):
                counts = dict(stage["counts"])
                languages = counts.pop("languages", None)
                eval_hits = counts.pop("eval_hits", None)
                print(f"{'':22} manifest: {stage['uri']}/manifest.json")
                print(f"{'':22} counts:   {json.dumps(counts)}")
                if languages:
                    ranked = sorted(languages.items(), key=lambda item: (-item[1], item[0]))
                    print(f"{'':22} languages: " + ", ".join(f"{lang} {n}" for lang, n in ranked))
                if eval_hits:
                    print(f"{'':22} eval items found in the data: {len(eval_hits)} "
                          f"({', '.join(sorted(eval_hits)[:5])}{', ...' if len(eval_hits) > 5 else ''})")
        pretrain = run["stages"].get("pretrain", {})
        if pretrain.get("version"):
            counts = pretrain["counts"]
            print(f"\npretraining: loss {counts['first_loss']:.3f} -> {counts['last_loss']:.3f} over {counts['steps']} "
                  f"steps ({counts['tokens']:,} tokens), final perplexity {counts['final_perplexity']:.1f}")
            print(f"loss curve:  {pretrain['uri']}/loss_curve.png")
            print(f"HF model:    {pretrain['uri']}/hf/  (AutoModelForCausalLM.from_pretrained after download)")
        for phase, title in (("cpt", "continued pretraining"), ("ift", "instruction fine-tuning")):
            stage = run["stages"].get(phase, {})
            if stage.get("version"):
                counts = stage["counts"]
                print(f"{title}: loss {counts['first_loss']:.3f} -> {counts['last_loss']:.3f} over "
                      f"{counts['steps']} steps; HF model: {stage['uri']}/hf/")
        evaluation = run["stages"].get("eval", {})
        if evaluation.get("version"):
            manifest = read_manifest(store, "eval", evaluation["version"])
            print(f"\nevaluation ({evaluation['uri']}/results.json):")
            print("\n".join(comparison_table(manifest["summary"])))
        mixture = run["stages"].get("mixture", {}).get("counts", {})
        if mixture.get("sources"):
            print("\n" + "\n".join(mixture_table(mixture)))
        removals = removal_rows(run["stages"])
        if removals:
            print(f"\n{'removed by':22} {'reason':30} {'documents':>9}")
            for artifact, reason, number in removals:
                print(f"{artifact:22} {reason:30} {number:>9,}")
            print("Inspect them: `.venv/bin/pretrain-pipeline artifacts quarantine <artifact>` (e.g. dedup)")
        print(f"\nBrowse later: `make up`, open {running.ui_url}; `. {directory / 'env'}` then "
              f"`.venv/bin/pretrain-pipeline artifacts list` or `.venv/bin/pretrain-pipeline runs show {run_id}`.")
        return 0 if state == "Completed" and run["status"] == "completed" else 1
    finally:
        if not args.keep:
            stack.down(directory)


def build_parser() -> argparse.ArgumentParser:
    from . import stack

    parser = argparse.ArgumentParser(prog="pretrain-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not one line")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p):
        p.add_argument("-c", "--config", default="pipeline.yaml", help="pipeline.yaml to use")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key for this command, e.g. --set ingest.workers=4")
        return p

    with_config(sub.add_parser("validate", help="validate pipeline.yaml (and overrides)")).set_defaults(fn=cmd_validate)
    run = with_config(sub.add_parser("run", help="run the pretrain-pipeline flow here"))
    run.add_argument("--only", action="append", help="execute only this stage (repeatable)")
    run.add_argument("--force", action="append", help="rebuild this stage as a new version (repeatable)")
    run.add_argument("--refresh", action="store_true",
                     help="the CPT refresh (as the cpt-refresh deployment) instead of the whole DAG")
    run.add_argument("--json", action="store_true",
                     help="print the flow's full result (every stage's record) as JSON instead of the summary")
    run.set_defaults(fn=cmd_run)

    ablate = sub.add_parser("ablate", help="compare data recipes with proxy models (the ablation flow, here)")
    ablate.add_argument("recipes", help="the recipe file, e.g. ablations/sample.yaml")
    ablate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the base config of every recipe, e.g. --set storage.prefix=abl")
    ablate.add_argument("--json", action="store_true", help="print the flow's result (summary, runs) as JSON")
    ablate.set_defaults(fn=cmd_ablate)

    artifacts = with_config(sub.add_parser("artifacts", help="list artifacts, show a manifest or a quarantine"))
    artifacts.add_argument("action", choices=["list", "show", "quarantine"])
    artifacts.add_argument("artifact", nargs="?", help="e.g. ingest/web")
    artifacts.add_argument("version", nargs="?", help="a version or 'latest' (default)")
    artifacts.set_defaults(fn=cmd_artifacts)

    runs = with_config(sub.add_parser("runs", help="list run records or show a run's lineage"))
    runs.add_argument("action", choices=["list", "show"])
    runs.add_argument("run_id", nargs="?")
    runs.add_argument("--config-too", action="store_true", help="also print the run's effective config")
    runs.set_defaults(fn=cmd_runs)
    refresh = with_config(sub.add_parser("refresh", help="the history of CPT refreshes: data, model, scores"))
    refresh.add_argument("action", choices=["history"])
    refresh.add_argument("--json", action="store_true", help="as JSON")
    refresh.set_defaults(fn=cmd_refresh)

    watch = sub.add_parser("watch", help="follow a flow run: its logs, then how it ended and why")
    watch.add_argument("flow_run_id", help="the flow run's id (`prefect deployment run` prints it)")
    watch.add_argument("--timeout", type=int, default=3600, help="give up after this many seconds")
    watch.set_defaults(fn=cmd_watch)

    lineage = with_config(sub.add_parser(
        "lineage", help="the tree from an artifact back to the raw input files: versions, config digests, "
                        "code and git versions, the flow run that built each"))
    lineage.add_argument("target", help="a ref (current), an artifact (latest version) or ARTIFACT@VERSION")
    lineage.add_argument("--json", action="store_true", help="as JSON: every node by artifact@version, and the root")
    lineage.set_defaults(fn=cmd_lineage)

    refs = with_config(sub.add_parser("refs", help="movable names pointing at artifact versions"))
    refs.add_argument("action", choices=["show", "history", "set"])
    refs.add_argument("name")
    refs.add_argument("artifact", nargs="?")
    refs.add_argument("version", nargs="?")
    refs.set_defaults(fn=cmd_refs)

    quality = with_config(sub.add_parser("quality-model", help="train the fastText quality classifier"))
    quality.add_argument("action", choices=["train"])
    quality.add_argument("--positive", action="append", required=True, metavar="SPEC",
                         help="high-quality examples: an artifact (filter/docs, filter/docs@VERSION) or a "
                              ".jsonl/.txt file (.gz/.zst too); repeatable")
    quality.add_argument("--negative", action="append", required=True, metavar="SPEC",
                         help="low-quality examples, same forms; repeatable")
    quality.add_argument("--name", default="default", help="artifact and ref quality-model/NAME")
    quality.set_defaults(fn=cmd_quality_model)

    node = with_config(sub.add_parser("train-node", help="on nodes 1..N-1 of a multi-node training job: join the "
                                                         "training runs that node 0 launches"))
    node.add_argument("--node-rank", type=int, default=None,
                      help="this node's index (default: from JOB_COMPLETION_INDEX, SLURM_NODEID, PET_NODE_RANK, "
                           "NODE_RANK)")
    node.add_argument("--idle-timeout", type=float, default=1800.0,
                      help="exit after this many seconds without a new launch")
    node.set_defaults(fn=cmd_train_node)

    for name, fn, help_text in (("stack", cmd_stack, "the local stack: SeaweedFS, Prefect server and worker"),
                                ("demo", cmd_demo, "start the stack, run pretrain-pipeline/full, print where to look")):
        p = sub.add_parser(name, help=help_text)
        if name == "stack":
            p.add_argument("action", choices=["up", "down", "status"])
        else:
            p.add_argument("-c", "--config", default="pipeline.yaml")
            p.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
            p.add_argument("--timeout", type=int, default=3600)
        p.add_argument("--dir", default=str(stack.DEFAULT_DIR), help="where the stack keeps its data")
        p.add_argument("--s3-port", type=int, default=stack.DEFAULT_S3_PORT)
        p.add_argument("--prefect-port", type=int, default=stack.DEFAULT_PREFECT_PORT)
        p.set_defaults(fn=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    # `run` without PREFECT_API_URL starts a temporary Prefect server; 20 s is too short on a busy box.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    args = build_parser().parse_args(argv)
    if getattr(args, "action", None) in ("show", "quarantine") and args.command == "artifacts" and not args.artifact:
        raise SystemExit("artifacts show/quarantine need an ARTIFACT, e.g. ingest/web")
    if args.command == "runs" and args.action == "show" and not args.run_id:
        raise SystemExit("runs show needs a RUN_ID (see `runs list`)")
    if args.command == "refs" and args.action == "set" and not args.artifact:
        raise SystemExit("refs set needs NAME ARTIFACT [VERSION]")
    try:
        return args.fn(args)
    except Exception as exc:
        status = user_error(exc)
        if status is None or args.debug:
            raise
        print(f"error: {one_line(exc)}" + ("" if status == 1 else "  (--debug shows the traceback)"),
              file=sys.stderr)
        return status


NO_CREDENTIALS = ("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile or role); "
                  "for the local stack run `. .stack/env` first")


def user_error(exc: BaseException) -> int | None:
    """The exit status of an error that is the user's to fix (2), or of a failed run (1), both reported in one
    line; None for anything else (a bug: its traceback is shown)."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    from flows.ablation import AblationFailed
    from flows.pretrain_pipeline import PipelineFailed
    from .sources import SourceError
    from .storage import StoreError

    if isinstance(exc, (ConfigError, SourceError, NoCredentialsError, PartialCredentialsError)):
        return 2
    if isinstance(exc, (PipelineFailed, AblationFailed, StoreError)):
        return 1
    return None


def one_line(exc: BaseException) -> str:
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return NO_CREDENTIALS
    return str(exc).replace(":\n  ", ": ").replace("\n  ", "; ").replace("\n", " ")


if __name__ == "__main__":
    sys.exit(main())
