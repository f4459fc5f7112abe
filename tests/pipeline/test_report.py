"""The run report (pipeline/report.py): the funnel from a run record, in DAG order, with removals by
reason; the terminal summary."""

from __future__ import annotations

from pipeline.report import funnel_lines, funnel_rows, summary_lines

RECORD = {
    "run_id": "r1", "status": "completed", "config": {"sources": [{"name": "web"}, {"name": "docs"}]},
    "stages": {
        "tokens/web": {"status": "executed", "version": "v7", "counts": {
            "documents_in": 70, "documents": 70, "splits": {"train": {"tokens": 9000}, "val": {"tokens": 1000}}}},
        "ingest/web": {"status": "cached", "version": "v1", "counts": {
            "records": 120, "documents": 110, "quarantined": {"invalid_json": 4}, "skipped": {"not_html": 6}}},
        "ingest/docs": {"status": "executed", "version": "v2", "counts": {"records": 5, "documents": 5,
                                                                          "quarantined": {}, "skipped": {}}},
        "clean/web": {"status": "executed", "version": "v3", "counts": {
            "documents_in": 110, "documents": 100, "removed": {"empty_text": 10}}},
        "langid/web": {"status": "executed", "version": "v3b", "counts": {
            "documents_in": 100, "documents": 97, "removed": {"lang_not_kept": 1}, "routed": {"und": 2}}},
        "dedup": {"status": "executed", "version": "v4", "counts": {
            "documents_in": 105, "documents": 80, "removed": {"near_duplicate": 20, "exact_duplicate": 5},
            "sources": {"web": {"documents_in": 100, "documents": 76}, "docs": {"documents_in": 5, "documents": 4}}}},
        "filter/web": {"status": "executed", "version": "v5", "counts": {
            "documents_in": 76, "documents": 70, "removed": {"gopher_short_doc": 2, "eval_overlap": 4}}},
        "mixture": {"status": "executed", "version": "v8", "counts": {
            "sources": {"web": {"tokens_available": 9000, "tokens": 20000, "weight": 1.0}}}},
        "pretrain": {"status": "executed", "version": "v9", "counts": {"tokens": 20000, "steps": 10}},
        "eval": {"status": "not_run", "error": "an upstream stage failed"},
    },
}


def test_the_funnel_follows_the_dag_per_source_with_removals_by_reason():
    rows = funnel_rows(RECORD)
    assert [(row["stage"], row["source"]) for row in rows] == [
        ("ingest", "web"), ("ingest", "docs"), ("clean", "web"), ("langid", "web"), ("dedup", "web"), ("dedup", "docs"),
        ("dedup", "(all)"), ("filter", "web"), ("tokens", "web"), ("mixture", "web"), ("pretrain", "")]
    by = {(row["stage"], row["source"]): row for row in rows}
    assert by["ingest", "web"] == {**by["ingest", "web"], "documents_in": 120, "documents_out": 110, "removed": 10,
                                   "removed_by_reason": "not_html 6, invalid_json 4", "status": "cached"}
    assert by["langid", "web"]["removed_by_reason"] == "routed:und 2, lang_not_kept 1"
    assert by["dedup", "web"]["removed"] == 24 and by["dedup", "docs"]["removed"] == 1
    assert by["dedup", "(all)"]["removed_by_reason"] == "near_duplicate 20, exact_duplicate 5"
    assert by["filter", "web"]["removed_by_reason"] == "eval_overlap 4, gopher_short_doc 2"
    assert by["tokens", "web"]["tokens_out"] == 10_000
    assert (by["mixture", "web"]["tokens_in"], by["mixture", "web"]["tokens_out"]) == (9000, 20_000)
    assert by["pretrain", ""]["tokens_in"] == 20_000
    # every document that leaves a stage is either out or removed with a reason
    for row in rows:
        if row["removed_by_reason"]:
            assert row["documents_in"] - row["documents_out"] == row["removed"], row


def test_the_summary_is_short_and_in_dag_order():
    lines = summary_lines({**RECORD, "note": "not trained: because"}, "s3://b/p/runs/r1.json")
    assert lines[0] == "run r1: completed (not trained: because)"
    names = [line.split()[0] for line in lines[2:2 + len(RECORD["stages"])]]
    assert names == ["ingest/docs", "ingest/web", "clean/web", "langid/web", "dedup", "filter/web", "tokens/web", "mixture",
                     "pretrain", "eval"]
    assert "eval                   not_run                         an upstream stage failed" in lines
    assert funnel_lines(funnel_rows(RECORD))[0] in lines
    assert lines[-1].startswith("run record: s3://b/p/runs/r1.json")
    assert len(lines) < 40
