"""The eval stage: every model scored on held-out perplexity (general and domain), the multiple-choice,
cloze and last-word tasks and the held-out assistant turns; the comparison table with deltas; and the
promotion gate (its rule, and that the ref moves only where the decision was made)."""

from __future__ import annotations

import pytest

from pipeline.config import EvalConfig, GeneratedTasksConfig
from pipeline.runs import get_ref, set_ref
from pipeline.storage import LocalStore
from tasks.cpt import StartingModel, artifact_model
from tasks.evaluate import apply_gate, eval_spec, gate_decision, results_table, run_eval
from tests.conftest import SAMPLE
from tests.tasks import chain


def model(manifest: dict) -> StartingModel:
    return artifact_model(manifest)


def test_eval_scores_every_model_and_the_tuned_models_win_where_they_should(model_phases):
    phases = model_phases
    models = {"base": model(phases.pretrain), "cpt": model(phases.cpt), "ift": model(phases.ift)}
    settings = EvalConfig(multiple_choice=[str(SAMPLE / "eval" / "debian_cloze.jsonl")],
                          generated=GeneratedTasksConfig(languages=["en", "de", "fr", "es", "it", "pt", "ca", "nl"],
                                                         cloze_items=60, last_word_items=30))
    mc_files = [SAMPLE / "eval" / "debian_cloze.jsonl"]
    spec = eval_spec(settings, models, "ift", "base", [*phases.tokens.values(), *phases.filters.values()],
                     phases.tokenizer, mc_files)
    manifest = chain.committed(phases.store, spec) or run_eval(
        settings, phases.store, spec, models, "ift", "base", phases.tokens, phases.filters, phases.tokenizer,
        phases.ift, mc_files, general=["web"], domain=["docs"], progress=lambda _m: None)
    metrics = manifest["summary"]["metrics"]
    assert metrics["cpt"]["perplexity domain"] < metrics["base"]["perplexity domain"]
    assert metrics["ift"]["assistant loss"] < metrics["base"]["assistant loss"]
    assert metrics["base"]["debian_cloze acc"] is not None and metrics["base"]["cloze acc_mutual_info"] is not None
    assert metrics["base"]["last_word perplexity"] > 1 and metrics["base"]["last_word acc"] in \
        {hits / 30 for hits in range(31)}  # greedy hits out of the 30 items
    assert manifest["counts"]["items"] == {"debian_cloze": 40, "cloze": 60, "last_word": 30}
    rows = {row["metric"]: row for row in manifest["summary"]["table"]}
    domain = rows["perplexity domain"]
    assert domain["cpt - base"] == pytest.approx(domain["cpt"] - domain["base"], abs=2e-4)
    assert {"base", "cpt", "ift", "cpt - base", "ift - base"} <= set(domain)
    gate = manifest["summary"]["gate"]
    assert gate["candidate_model"] == f"ift@{phases.ift['version']}" and gate["baseline"] == "base"
    ift, base = metrics["ift"], metrics["base"]
    assert gate["promote"] is (ift["perplexity domain"] < base["perplexity domain"] and
                               ift["perplexity general"] < base["perplexity general"] * 1.05)
    assert [e["role"] for e in manifest["files"]] == ["results"]


def test_a_single_model_without_a_ref_is_promoted_as_the_first(model_phases):
    phases = model_phases
    models = {"base": model(phases.pretrain)}
    settings = EvalConfig(generated=GeneratedTasksConfig(cloze_items=0, last_word_items=5))
    spec = eval_spec(settings, models, "base", None, [*phases.tokens.values(), *phases.filters.values()],
                     phases.tokenizer, [])
    manifest = chain.committed(phases.store, spec) or run_eval(
        settings, phases.store, spec, models, "base", None, phases.tokens, phases.filters, phases.tokenizer,
        None, [], general=["web"], domain=["docs"], progress=lambda _m: None)
    gate = manifest["summary"]["gate"]
    assert gate["promote"] and gate["baseline"] is None and gate["reason"] == "no earlier model to compare with"
    assert manifest["counts"]["items"] == {"last_word": 5}


def results(general: float, domain: float) -> dict:
    return {"general_perplexity": general, "domain_perplexity": domain, "perplexity": {}, "tasks": {}}


@pytest.mark.parametrize("candidate, promote, reason", [
    (results(104.0, 80.0), True, "domain perplexity -20.00%"),
    (results(106.0, 80.0), False, "general perplexity rose +6.00%"),
    (results(90.0, 100.0), False, "domain perplexity did not improve"),
])
def test_gate_rule(candidate, promote, reason):
    decision = gate_decision({"base": results(100.0, 100.0), "ift": candidate}, "ift", "base", 0.05, has_domain=True)
    assert decision["promote"] is promote and reason in decision["reason"]


def test_gate_without_domain_sources_or_baseline():
    assert gate_decision({"base": results(100, 0)}, "base", None, 0.05, has_domain=False)["promote"]
    decision = gate_decision({"base": results(100, 0), "cpt": results(99, 0)}, "cpt", "base", 0.05, has_domain=False)
    assert decision["promote"] and decision["reason"].startswith("general perplexity -1.00%")
    assert not gate_decision({"cpt": results(99, 0)}, "cpt", "cpt", 0.05, has_domain=False)["promote"]


def test_the_ref_moves_only_where_the_decision_was_made(tmp_path):
    store = LocalStore(tmp_path, "p")
    candidate = {"artifact": "ift", "version": "b" * 20, "uri": "file:///ift"}
    models = {"ift": StartingModel(f"ift@{'b' * 20}", "b" * 20, manifest=candidate)}
    manifest = {"version": "e" * 20, "summary": {"gate": {
        "enabled": True, "promote": True, "ref": "current", "candidate": "ift", "reason": "better",
        "candidate_model": f"ift@{'b' * 20}", "baseline_model": f"ift@{'a' * 20}"}}}
    set_ref(store, "current", {"artifact": "ift", "version": "c" * 20})  # moved by someone else since
    assert apply_gate(store, manifest, models) is None and get_ref(store, "current")["version"] == "c" * 20
    set_ref(store, "current", {"artifact": "ift", "version": "a" * 20})  # where the decision was made
    assert apply_gate(store, manifest, models)["version"] == "b" * 20
    assert get_ref(store, "current")["eval"] == "e" * 20
    manifest["summary"]["gate"]["promote"] = False
    set_ref(store, "current", {"artifact": "ift", "version": "a" * 20})
    assert apply_gate(store, manifest, models) is None and get_ref(store, "current")["version"] == "a" * 20


def test_results_table_has_deltas_against_the_base():
    table = results_table({"base": results(10.0, 20.0), "cpt": results(11.0, 15.0)})
    assert table[0] == {"metric": "perplexity general", "base": 10.0, "cpt": 11.0, "cpt - base": 1.0}
    assert table[1]["cpt - base"] == -5.0
