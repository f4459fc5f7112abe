"""Continued pretraining: the domain/replay mixture, the starting model (the pretrain artifact or a
GPT-2-format checkpoint), and the target — CPT lowers domain held-out perplexity relative to the base."""

from __future__ import annotations

import json

import pytest

from pipeline.config import CptConfig, MixtureConfig
from tasks.cpt import check_fits, cpt_spec, cpt_weights, resolve_init, run_cpt
from tests.tasks import chain
from tests.tasks.conftest import PHASE_SIZE


def test_cpt_lowers_domain_perplexity_relative_to_the_base(model_phases, tmp_path):
    phases = model_phases
    base = chain.held_out_loss(phases.store, phases.pretrain, phases.tokens["docs"], tmp_path)["perplexity"]
    after = chain.held_out_loss(phases.store, phases.cpt, phases.tokens["docs"], tmp_path)["perplexity"]
    assert after < base * 0.95, (base, after)
    cpt = phases.cpt
    assert cpt["summary"]["init"] == f"pretrain@{phases.pretrain['version']}"
    roles = {row["source"]: row["role"] for row in cpt["summary"]["table"]}
    assert roles == {"docs": "domain", "web": "replay"}
    replay = cpt["counts"]["replay_sequences"] / (cpt["counts"]["replay_sequences"] + cpt["counts"]["domain_sequences"])
    assert replay == pytest.approx(0.2, abs=0.01)
    assert {"weights", "config", "hf", "order", "metrics", "plot"} <= {entry["role"] for entry in cpt["files"]}
    [metrics] = [e for e in cpt["files"] if e["role"] == "metrics"]
    from pipeline.artifacts import fetch_verified

    lrs = [json.loads(line)["lr"] for line in fetch_verified(phases.store, cpt, metrics, tmp_path).read_text().splitlines()]
    assert lrs[0] < lrs[1] <= max(lrs) == pytest.approx(3e-3) and lrs[-1] < lrs[2]  # re-warmed, then decayed


def test_cpt_weights_split_domain_by_size_and_replay_by_mixture_weight():
    weights = cpt_weights({"a": 300, "b": 100}, {"web": 0.75, "wiki": 0.25}, replay=0.2)
    assert weights == pytest.approx({"a": 0.6, "b": 0.2, "web": 0.15, "wiki": 0.05})
    with pytest.raises(ValueError, match="no training tokens"):
        cpt_weights({"a": 0}, {}, 0.0)


def test_cpt_from_a_gpt2_format_checkpoint_directory(model_phases, tmp_path):
    """Start from an HF GPT-2 directory (here the pretrain artifact's hf/ export) instead of the artifact."""
    phases = model_phases
    hf = chain.hf_directory(phases.store, phases.pretrain, tmp_path / "checkpoint")
    start = resolve_init(str(hf), None, tmp_path)
    assert start.manifest is None and "model.safetensors:" in start.identity
    settings = CptConfig(enabled=True, init=str(hf), budget_tokens=2_000, steps=3, warmup_steps=1)
    domain, general = {"docs": phases.tokens["docs"]}, {"web": phases.tokens["web"]}
    mixture = MixtureConfig(weights={"web": 1.0})
    spec = cpt_spec(settings, phases.train, mixture, start, {**domain, **general}, phases.tokenizer)
    manifest = chain.committed(phases.store, spec) or run_cpt(settings, phases.train, mixture, phases.store, spec,
                                                              start, domain, general, phases.tokenizer, lambda _m: None)
    assert manifest["counts"]["steps"] == 3 and manifest["summary"]["init"] == str(hf)


def test_starting_model_errors(tmp_path):
    with pytest.raises(ValueError, match="no pretrain artifact"):
        resolve_init("pretrain", None, tmp_path)
    with pytest.raises(ValueError, match="neither `pretrain` nor a GPT-2 checkpoint"):
        resolve_init("missing/dir", None, tmp_path)
    model = {"vocab_size": 1000, **PHASE_SIZE}
    with pytest.raises(ValueError, match="tokenizer has 2048 ids"):
        check_fits(model, 2048, 64, "cpt.init")
    with pytest.raises(ValueError, match="exceeds the model's n_positions"):
        check_fits(model, 500, 1024, "cpt.init")
