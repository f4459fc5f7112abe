"""What a finished flow run reports about itself, from its run record: the funnel (documents and tokens
in and out of every stage, per source, removals by reason), a short summary for a terminal
(`pretrain-pipeline run`), and the flow run's own Prefect artifacts (a summary and the funnel table,
keys `00-run-summary` and `00-run-funnel`, which the UI lists before the stages' cards).
"""

from __future__ import annotations

from typing import Any

from .artifacts import STAGES

SUMMARY_KEY = "00-run-summary"
FUNNEL_KEY = "00-run-funnel"
PER_SOURCE = ("ingest", "clean", "langid", "dedup", "filter", "tokens", "mixture")
TRAINING = ("pretrain", "cpt", "ift")


def _reasons(*groups: dict | None) -> dict[str, int]:
    merged: dict[str, int] = {}
    for group in groups:
        for reason, number in (group or {}).items():
            merged[reason] = merged.get(reason, 0) + number
    return dict(sorted(merged.items(), key=lambda item: (-item[1], item[0])))


def _row(stage: str, source: str, documents_in=None, documents_out=None, tokens_in=None, tokens_out=None,
         reasons: dict | None = None, status: str = "") -> dict[str, Any]:
    removed = sum((reasons or {}).values()) if reasons else None
    if removed is None and documents_in is not None and documents_out is not None:
        removed = documents_in - documents_out
    return {"stage": stage, "source": source, "status": status,
            "documents_in": documents_in, "documents_out": documents_out, "removed": removed,
            "removed_by_reason": ", ".join(f"{reason} {number:,}" for reason, number in (reasons or {}).items()),
            "tokens_in": tokens_in, "tokens_out": tokens_out}


def funnel_rows(record: dict) -> list[dict[str, Any]]:
    """One row per stage and source in DAG order (then the training phases), from the run record."""
    stages = record.get("stages", {})
    sources = [source["name"] for source in record.get("config", {}).get("sources", [])]
    sources += sorted({name.split("/", 1)[1] for name in stages if "/" in name} - set(sources))
    rows = []
    for stage in STAGES:
        if stage == "dedup" and "dedup" in stages:
            entry = stages["dedup"]
            counts = entry.get("counts", {})
            for source in sources:
                per_source = counts.get("sources", {}).get(source)
                if per_source:
                    rows.append(_row("dedup", source, per_source.get("documents_in"), per_source.get("documents"),
                                     status=entry.get("status", "")))
            rows.append(_row("dedup", "(all)", counts.get("documents_in"), counts.get("documents"),
                             reasons=_reasons(counts.get("removed")), status=entry.get("status", "")))
        elif stage == "mixture" and "mixture" in stages:
            entry = stages["mixture"]
            for source, row in entry.get("counts", {}).get("sources", {}).items():
                rows.append(_row("mixture", source, tokens_in=row.get("tokens_available"), tokens_out=row.get("tokens"),
                                 status=entry.get("status", "")))
        elif stage in PER_SOURCE:
            for source in sources:
                if f"{stage}/{source}" in stages:
                    rows.append(_stage_row(stage, source, stages[f"{stage}/{source}"]))
        elif stage in TRAINING and stage in stages:
            entry = stages[stage]
            rows.append(_row(stage, "", tokens_in=entry.get("counts", {}).get("tokens"), status=entry.get("status", "")))
    return rows


def _stage_row(stage: str, source: str, entry: dict) -> dict[str, Any]:
    counts, status = entry.get("counts", {}), entry.get("status", "")
    if stage == "ingest":
        return _row(stage, source, counts.get("records"), counts.get("documents"),
                    reasons=_reasons(counts.get("quarantined"), counts.get("skipped")), status=status)
    if stage == "tokens":
        tokens = sum(split.get("tokens", 0) for split in counts.get("splits", {}).values()) if counts else None
        return _row(stage, source, counts.get("documents_in"), counts.get("documents"), tokens_out=tokens,
                    status=status)
    routed = {f"routed:{lang}": number for lang, number in counts.get("routed", {}).items()}  # langid's route
    return _row(stage, source, counts.get("documents_in"), counts.get("documents"),
                reasons=_reasons(counts.get("removed"), routed) if counts else None, status=status)


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def funnel_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The funnel as a plain-text table."""
    lines = [f"{'stage':9} {'source':10} {'docs in':>9} {'docs out':>9} {'removed':>8} {'tokens in':>11} "
             f"{'tokens out':>11}  removed by reason"]
    for row in rows:
        lines.append(f"{row['stage']:9} {row['source']:10} {_cell(row['documents_in']):>9} "
                     f"{_cell(row['documents_out']):>9} {_cell(row['removed']):>8} {_cell(row['tokens_in']):>11} "
                     f"{_cell(row['tokens_out']):>11}  {row['removed_by_reason']}".rstrip())
    return lines


def ordered_stages(record: dict) -> list[tuple[str, dict]]:
    """The run record's stages in DAG order."""
    order = {stage: position for position, stage in enumerate(STAGES)}
    return sorted(record.get("stages", {}).items(),
                  key=lambda item: (order.get(item[0].split("/")[0], len(order)), item[0]))


def stage_lines(record: dict) -> list[str]:
    """Every stage of the run in DAG order: status, version, and the error of one that failed."""
    return [f"{name:22} {stage.get('status', ''):9} {stage.get('version') or '':21} "
            f"{stage.get('uri') or stage.get('error') or ''}".rstrip() for name, stage in ordered_stages(record)]


def summary_lines(record: dict, record_uri: str) -> list[str]:
    """What `pretrain-pipeline run` prints at the end (the full record: `--json`)."""
    head = f"run {record['run_id']}: {record['status']}"
    if record.get("note"):
        head += f" ({record['note']})"
    lines = [head, ""] + stage_lines(record)
    rows = funnel_rows(record)
    if rows:
        lines += ["", *funnel_lines(rows)]
    lines += ["", f"run record: {record_uri}  (the full record: --json; lineage: pretrain-pipeline lineage <artifact>)"]
    return lines


def summary_markdown(record: dict, record_uri: str) -> str:
    lines = [f"### Run {record['run_id']}: {record['status']}", ""]
    if record.get("note"):
        lines += [f"**{record['note']}**", ""]
    lines += [f"- run record: `{record_uri}`", f"- attempt {record.get('attempt')}, started {record.get('started_at')}",
              "", "| artifact | status | version |", "|---|---|---|"]
    for name, stage in ordered_stages(record):
        error = f" — {stage['error']}" if stage.get("error") else ""
        lines.append(f"| {name} | {stage.get('status', '')} | `{stage.get('version') or ''}`{error} |")
    lines += ["", "The funnel (documents and tokens per stage and source): the `00-run-funnel` table."]
    return "\n".join(lines)


def publish_run_report(record: dict, record_uri: str) -> None:
    """The flow run's own artifacts: its summary and the funnel table (inside a flow run only)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(key=SUMMARY_KEY, markdown=summary_markdown(record, record_uri),
                             description=f"run {record['run_id']}: {record['status']}")
    rows = funnel_rows(record)
    if rows:
        create_table_artifact(key=FUNNEL_KEY, table=[{key: "" if value is None else value for key, value in row.items()}
                                                     for row in rows],
                              description="documents and tokens in and out of every stage, per source; removals by "
                                          "reason")
