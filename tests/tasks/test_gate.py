"""The promotion gate on crafted results: it promotes, rejects for forgetting, for a domain that did not
improve and for a task regression, refuses on too little held-out domain text; its card; and the ref
moves only where the decision was made (and is not reported as moving when it stays)."""

from __future__ import annotations

import pytest

from pipeline.config import GateConfig, GateTaskCheck
from pipeline.runs import get_ref, set_ref
from pipeline.storage import LocalStore
from tasks.gate import apply_gate, gate_decision, gate_markdown


def results(general: float | None, domain: float | None, tasks: dict | None = None,
            domain_tokens: int = 10_000) -> dict:
    """One model's results as the eval stage keeps them (bits per byte pooled over general / domain)."""
    return {"general": {"bits_per_byte": general, "tokens": 50_000} if general is not None else None,
            "domain": {"bits_per_byte": domain, "tokens": domain_tokens} if domain is not None else None,
            "heldout": {}, "tasks": tasks or {}, "core": {"core": None},
            "higher_is_better": {"hellaswag": {"acc_norm": True}, "lambada": {"perplexity": False}}}


BASE = results(1.00, 2.00, {"hellaswag": {"acc_norm": 0.40}, "lambada": {"perplexity": 30.0}})
CHECKS = GateConfig(tasks=[GateTaskCheck(task="hellaswag", metric="acc_norm", tolerance=0.02),
                           GateTaskCheck(task="lambada", metric="perplexity", tolerance=5.0)])


def decide(candidate: dict, settings: GateConfig = CHECKS, has_domain: bool = True) -> dict:
    return gate_decision({"base": BASE, "ift": candidate}, "ift", "base", settings, has_domain)


def test_promotes_when_domain_falls_general_stays_within_tolerance_and_tasks_hold():
    decision = decide(results(1.04, 1.60, {"hellaswag": {"acc_norm": 0.39}, "lambada": {"perplexity": 33.0}}))
    assert decision["promote"] and all(check["passed"] for check in decision["checks"])
    assert decision["reason"] == ("domain bits per byte -20.00%, general bits per byte +4.00% (tolerance 5.00%), "
                                  "hellaswag acc_norm -0.0100, lambada perplexity +3.0000")
    assert [check["metric"] for check in decision["checks"]] == [
        "held-out domain tokens", "bpb domain", "bpb general", "hellaswag acc_norm", "lambada perplexity"]


@pytest.mark.parametrize("candidate, reason", [
    (results(1.06, 1.60, {"hellaswag": {"acc_norm": 0.40}, "lambada": {"perplexity": 30.0}}),
     "general bits per byte rose +6.00%, the tolerance is 5.00%"),  # forgetting
    (results(0.90, 2.00, {"hellaswag": {"acc_norm": 0.40}, "lambada": {"perplexity": 30.0}}),
     "domain bits per byte did not fall (+0.00%)"),
    (results(1.00, 1.60, {"hellaswag": {"acc_norm": 0.37}, "lambada": {"perplexity": 30.0}}),
     "hellaswag acc_norm worsened by 0.0300 (0.4000 -> 0.3700), the tolerance is 0.02"),  # task regression
    (results(1.00, 1.60, {"hellaswag": {"acc_norm": 0.45}, "lambada": {"perplexity": 36.0}}),
     "lambada perplexity worsened by 6.0000 (30.0000 -> 36.0000), the tolerance is 5"),  # lower is better
    (results(1.00, 1.60, {"hellaswag": {"acc_norm": 0.45}}),
     "lambada perplexity is not among the harness's results (eval.gate.tasks)"),
    (results(1.00, 1.60, {"hellaswag": {"acc_norm": 0.45}, "lambada": {"perplexity": 30.0}}, domain_tokens=322),
     "only 322 held-out domain tokens, eval.gate.min_domain_tokens is 2000: not enough to judge"),
    (results(None, 1.60, {"hellaswag": {"acc_norm": 0.45}, "lambada": {"perplexity": 30.0}}),
     "no held-out general text to compare on (tokenize.val_fraction)"),
])
def test_rejects(candidate, reason):
    decision = decide(candidate)
    assert not decision["promote"] and decision["reasons"] == [reason] and decision["reason"] == reason


def test_every_failed_criterion_is_a_reason():
    decision = decide(results(1.10, 2.10, {"hellaswag": {"acc_norm": 0.30}, "lambada": {"perplexity": 30.0}}, 100))
    assert len(decision["reasons"]) == 4 and decision["reason"] == "; ".join(decision["reasons"])


def test_without_domain_sources_general_must_fall_and_a_first_model_is_promoted():
    settings = GateConfig()
    assert decide(results(0.99, None), settings, has_domain=False)["reason"] == "general bits per byte -1.00%"
    assert not decide(results(1.01, None), settings, has_domain=False)["promote"]
    first = gate_decision({"base": BASE}, "base", None, settings, has_domain=True)
    assert first["promote"] and first["reason"] == "no earlier model to compare with"
    same = gate_decision({"ift": BASE}, "ift", "ift", settings, has_domain=True)
    assert not same["promote"] and same["reason"] == "the ref already points at the candidate"


def test_the_ref_moves_only_where_the_decision_was_made(tmp_path):
    store = LocalStore(tmp_path, "p")
    candidate = {"artifact": "ift", "version": "b" * 20, "uri": "file:///ift"}
    manifest = {"version": "e" * 20, "summary": {"gate": {
        "enabled": True, "promote": True, "ref": "current", "candidate": "ift", "reason": "better",
        "reasons": ["better"], "candidate_model": f"ift@{'b' * 20}", "baseline_model": f"ift@{'a' * 20}"}}}
    set_ref(store, "current", {"artifact": "ift", "version": "c" * 20})  # moved by someone else since
    assert apply_gate(store, manifest, candidate) is None and get_ref(store, "current")["version"] == "c" * 20
    set_ref(store, "current", {"artifact": "ift", "version": "a" * 20})  # where the decision was made
    moved = apply_gate(store, manifest, candidate)
    assert moved["version"] == "b" * 20 and moved["previous"] == f"ift@{'a' * 20}" and moved["reasons"] == ["better"]
    assert get_ref(store, "current")["eval"] == "e" * 20
    assert apply_gate(store, manifest, candidate) is None  # already there: reported as not moving
    manifest["summary"]["gate"]["promote"] = False
    set_ref(store, "current", {"artifact": "ift", "version": "a" * 20})
    assert apply_gate(store, manifest, candidate) is None and get_ref(store, "current")["version"] == "a" * 20


def card(decision: dict, moved: dict | None = None) -> str:
    decision.update({"enabled": True, "ref": "current", "candidate_model": "ift@b", "baseline_model": "ift@a"})
    return gate_markdown(decision, moved)


def test_gate_card_shows_the_decision_the_baseline_and_every_check():
    rejected = card(gate_decision({"current": results(1.0, 2.0), "ift": results(1.1, 1.5)}, "ift", "current",
                                  GateConfig(), has_domain=True))
    assert "NOT PROMOTED" in rejected and "baseline: `ift@a` (current)" in rejected and "stays at ift@a" in rejected
    assert "| bpb general | 1 | 1.1 | +10.00% | rise <= 5.00% | **no** |" in rejected
    assert "| held-out domain tokens | - | 10000 | - | >= 2000 | yes |" in rejected
    assert "reason: general bits per byte rose +10.00%, the tolerance is 5.00%" in rejected
    promoted = gate_decision({"current": results(1.0, 2.0), "ift": results(1.01, 1.5)}, "ift", "current",
                             GateConfig(), has_domain=True)
    assert "### eval gate: PROMOTED" in card(dict(promoted), {"previous": "ift@a"})
    assert "`current` moved ift@a -> ift@b" in card(dict(promoted), {"previous": "ift@a"})
    assert "does not move" in card(dict(promoted), None)
