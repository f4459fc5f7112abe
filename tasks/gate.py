"""The promotion gate of the eval stage: whether the candidate model becomes the ref (`eval.gate.ref`,
`current`), and its card in the Prefect UI.

The candidate (the last phase that ran: ift, else cpt, else the base) is compared with the baseline —
the model the ref points at, or the base when the ref is unset — on the criteria of `eval.gate`:
- the held-out domain text holds at least `min_domain_tokens` tokens (the candidate's tokenizer): less
  is not enough to judge, and the gate says so;
- domain bits per byte must fall;
- general bits per byte may rise at most `general_tolerance` (relative) — the forgetting check; with no
  domain source, general bits per byte must fall;
- each metric of `tasks` may worsen by at most its tolerance (absolute; worse is lower, or higher for a
  metric the harness marks lower-is-better, such as perplexity).
Every criterion is a check with both values, the change and the limit; the decision promotes only if
all pass, and its reasons name every failed one. The ref moves only if it still points where the
decision was made (a rerun after an interruption completes a promotion, a stale decision does not),
and its history (`pretrain-pipeline refs history current`) keeps each promotion with its reasons.
"""

from __future__ import annotations

from typing import Any

from pipeline.artifacts import read_manifest
from pipeline.config import GateConfig
from pipeline.runs import get_ref, set_ref
from pipeline.storage import ObjectStore

STAGE = "eval"


def _check(metric: str, baseline: float | None, candidate: float | None, limit: str, passed: bool, reason: str,
           change: float | None = None) -> dict[str, Any]:
    return {"metric": metric, "baseline": baseline, "candidate": candidate, "change": change, "limit": limit,
            "passed": passed, "reason": reason}


def _bpb(result: dict, pool: str) -> float | None:
    return (result.get(pool) or {}).get("bits_per_byte")


def bpb_checks(mine: dict, theirs: dict, settings: GateConfig, has_domain: bool) -> list[dict]:
    checks = []
    pools = (("domain", "must fall", lambda change: change < 0),) if has_domain else ()
    general_limit = (f"rise <= {settings.general_tolerance:.2%}", lambda change: change <= settings.general_tolerance) \
        if has_domain else ("must fall", lambda change: change < 0)
    for pool, limit, ok in (*pools, ("general", *general_limit)):
        metric = f"bpb {pool}"
        before, after = _bpb(theirs, pool), _bpb(mine, pool)
        if before is None or after is None:
            checks.append(_check(metric, before, after, limit, False,
                                 f"no held-out {pool} text to compare on (tokenize.val_fraction)"))
            continue
        change = after / before - 1
        passed = ok(change)
        if passed:
            reason = f"{pool} bits per byte {change:+.2%}"
        elif limit == "must fall":
            reason = f"{pool} bits per byte did not fall ({change:+.2%})"
        else:
            reason = f"general bits per byte rose {change:+.2%}, the tolerance is {settings.general_tolerance:.2%}"
        checks.append(_check(metric, before, after, limit, passed, reason, round(change, 6)))
    return checks


def task_checks(mine: dict, theirs: dict, settings: GateConfig) -> list[dict]:
    checks = []
    for wanted in settings.tasks:
        metric = f"{wanted.task} {wanted.metric}"
        before = theirs["tasks"].get(wanted.task, {}).get(wanted.metric)
        after = mine["tasks"].get(wanted.task, {}).get(wanted.metric)
        limit = f"worsen <= {wanted.tolerance:g}"
        if before is None or after is None:
            checks.append(_check(metric, before, after, limit, False,
                                 f"{metric} is not among the harness's results (eval.gate.tasks)"))
            continue
        higher_is_better = mine.get("higher_is_better", {}).get(wanted.task, {}).get(wanted.metric, True)
        worse = (before - after) if higher_is_better else (after - before)
        passed = worse <= wanted.tolerance
        reason = f"{metric} {after - before:+.4f}" if passed else \
            f"{metric} worsened by {worse:.4f} ({before:.4f} -> {after:.4f}), the tolerance is {wanted.tolerance:g}"
        checks.append(_check(metric, before, after, limit, passed, reason, round(after - before, 6)))
    return checks


def gate_decision(results: dict[str, dict], candidate: str, baseline: str | None, settings: GateConfig,
                  has_domain: bool) -> dict:
    """Whether `candidate` may become the ref, against `baseline` (None: no model to beat)."""
    decision: dict[str, Any] = {"candidate": candidate, "baseline": baseline, "checks": [],
                                "general_tolerance": settings.general_tolerance}
    if baseline is None:
        return {**decision, "promote": True, "reason": "no earlier model to compare with",
                "reasons": ["no earlier model to compare with"]}
    if baseline == candidate:
        reason = "the ref already points at the candidate"
        return {**decision, "promote": False, "reason": reason, "reasons": [reason]}
    mine, theirs = results[candidate], results[baseline]
    checks = []
    if has_domain:
        tokens = (mine.get("domain") or {}).get("tokens", 0)
        enough = tokens >= settings.min_domain_tokens
        checks.append(_check("held-out domain tokens", None, tokens, f">= {settings.min_domain_tokens}", enough,
                             f"{tokens} held-out domain tokens" if enough else
                             f"only {tokens} held-out domain tokens, eval.gate.min_domain_tokens is "
                             f"{settings.min_domain_tokens}: not enough to judge"))
    checks += bpb_checks(mine, theirs, settings, has_domain) + task_checks(mine, theirs, settings)
    promote = all(check["passed"] for check in checks)
    if promote:  # what improved, and by how much
        tolerance = f" (tolerance {settings.general_tolerance:.2%})" if has_domain else ""
        reasons = [check["reason"] + (tolerance if check["metric"] == "bpb general" else "") for check in checks
                   if check["metric"] != "held-out domain tokens"]
    else:  # every criterion that failed
        reasons = [check["reason"] for check in checks if not check["passed"]]
    return {**decision, "checks": checks, "promote": promote, "reasons": reasons,
            "reason": ", ".join(reasons) if promote else "; ".join(reasons)}


def apply_gate(store: ObjectStore, manifest: dict, candidate_manifest: dict | None) -> dict | None:
    """Point the ref at the candidate if the gate says so and the ref still points where the decision
    was made; returns the new ref only if it moved (None when it stays)."""
    gate = manifest["summary"]["gate"]
    if not gate["enabled"] or not gate["promote"] or candidate_manifest is None:
        return None
    current = get_ref(store, gate["ref"])
    current_name = f"{current['artifact']}@{current['version']}" if current else None
    if current_name == gate["candidate_model"]:
        return None  # already there (an earlier run of this eval promoted it)
    if current is not None and current_name != gate["baseline_model"]:
        return None  # the ref moved since this decision was made
    return set_ref(store, gate["ref"], {"artifact": candidate_manifest["artifact"],
                                        "version": candidate_manifest["version"], "uri": candidate_manifest["uri"],
                                        "eval": manifest["version"], "previous": current_name,
                                        "reason": gate["reason"], "reasons": gate["reasons"]})


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


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def gate_markdown(gate: dict, moved: dict | None) -> str:
    """The gate card: decision, reasons, baseline, and every check with both values."""
    if not gate["enabled"]:
        verdict = f"gate disabled (would {'promote' if gate['promote'] else 'not promote'})"
    else:
        verdict = "PROMOTED" if gate["promote"] else "NOT PROMOTED"
    ref = f"`{gate['ref']}`"
    if moved is not None:
        where = f"{ref} moved {moved.get('previous') or '(unset)'} -> {gate['candidate_model']}"
    elif gate["enabled"] and gate["promote"]:
        where = f"{ref} does not move (it already points at the candidate, or moved since this decision)"
    else:
        where = f"{ref} stays at {gate['baseline_model'] or '(unset)'}"
    baseline = gate["baseline_model"] or "none"
    lines = [f"### eval gate: {verdict}", "",
             f"- candidate: `{gate['candidate_model']}` ({gate['candidate']})",
             f"- baseline: `{baseline}` ({gate['baseline'] or 'the ref is unset'})",
             f"- ref: {where}",
             f"- reason: {gate['reason']}"]
    if gate["checks"]:
        lines += ["", "| check | baseline | candidate | change | limit | passed |", "|---|---:|---:|---:|---|---|"]
        for check in gate["checks"]:
            change = check["change"]
            shown = "-" if change is None else (f"{change:+.2%}" if check["metric"].startswith("bpb") else
                                                f"{change:+.4f}")
            lines.append(f"| {check['metric']} | {_cell(check['baseline'])} | {_cell(check['candidate'])} | {shown} | "
                         f"{check['limit']} | {'yes' if check['passed'] else '**no**'} |")
    return "\n".join(lines)
