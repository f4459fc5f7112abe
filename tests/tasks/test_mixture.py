"""Mixture arithmetic (weights, exact allocation, epoch caps, temperature, Chinchilla budget), the
global order's determinism and coverage, and the stage on the sample's token shards."""

from __future__ import annotations

from model.families import resolve_size
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.artifacts import fetch_verified, files_with_role
from pipeline.config import MixtureConfig, TokenizeConfig
from tasks.mixture import allocate, largest_remainder, mixture_spec, mixture_weights, run_mixture, sample_order
from tests.tasks import chain

TINY = resolve_size("gpt2-tiny", {"n_layer": 2, "n_head": 2, "d_model": 32, "n_positions": 64})


def test_weights_given_uniform_and_by_temperature():
    tokens = {"web": 900, "books": 100, "empty": 0}
    assert mixture_weights(MixtureConfig(weights={"web": 3, "books": 1}), tokens) == {"web": 0.75, "books": 0.25,
                                                                                         "empty": 0.0}
    assert mixture_weights(MixtureConfig(), tokens) == {"web": 0.5, "books": 0.5, "empty": 0.0}
    proportional = mixture_weights(MixtureConfig(method="temperature", alpha=1.0), tokens)
    assert proportional["web"] == pytest.approx(0.9)
    flatter = mixture_weights(MixtureConfig(method="temperature", alpha=0.5), tokens)
    assert flatter["web"] == pytest.approx(30 / 40)  # sqrt(900) : sqrt(100)
    with pytest.raises(ValueError, match="no source with a positive weight"):
        mixture_weights(MixtureConfig(weights={"empty": 1}), tokens)


def test_largest_remainder_adds_up_exactly():
    shares = largest_remainder(10, {"a": 1, "b": 1, "c": 1})
    assert sum(shares.values()) == 10 and sorted(shares.values()) == [3, 3, 4]
    assert largest_remainder(7, {"a": 0.5, "b": 0.3, "c": 0.2}) == {"a": 4, "b": 2, "c": 1}


def test_allocation_caps_epochs_and_gives_the_rest_to_the_others():
    available = {"big": 1000, "small": 10}
    # small wants 50 % of 400 = 200 sequences = 20 epochs; the cap of 4 epochs leaves it 40
    allocation, shortfall = allocate(400, available, {"big": 0.5, "small": 0.5}, max_epochs=4)
    assert allocation == {"big": 360, "small": 40} and shortfall == 0
    # everyone capped: the shortfall is reported, nothing is sampled beyond the caps
    allocation, shortfall = allocate(10_000, available, {"big": 0.5, "small": 0.5}, max_epochs=2)
    assert allocation == {"big": 2000, "small": 20} and shortfall == 10_000 - 2020


def test_the_order_is_a_seeded_global_permutation_that_covers_the_sample():
    shards = [{"source": "a", "sequences": 5}, {"source": "b", "sequences": 3}, {"source": "a", "sequences": 2}]
    order = sample_order({"a": 14, "b": 2}, shards, seed=7)
    assert np.array_equal(order, sample_order({"a": 14, "b": 2}, shards, seed=7))
    assert not np.array_equal(order, sample_order({"a": 14, "b": 2}, shards, seed=8))
    pairs = [tuple(row) for row in order.tolist()]
    a_rows = [(0, r) for r in range(5)] + [(2, r) for r in range(2)]
    # a: 14 = two full passes over its 7 sequences; b: 2 distinct of its 3
    assert sorted(p for p in pairs if p[0] != 1) == sorted(a_rows * 2)
    b_rows = [p for p in pairs if p[0] == 1]
    assert len(b_rows) == 2 and len(set(b_rows)) == 2 and all(0 <= r < 3 for _, r in b_rows)
    # globally shuffled: source a does not arrive in one block
    sources = ["b" if shard == 1 else "a" for shard, _ in pairs]
    assert sources != sorted(sources) and sources != sorted(sources, reverse=True)


def test_stage_on_the_sample(filtered_sample, tmp_path):
    store, inputs = filtered_sample
    tokenizer = chain.tokenizer(store, inputs)
    settings = TokenizeConfig(workers=1, seq_len=64, val_fraction=0.05)
    tokens = {source: chain.tokenize(store, source, inputs[source], tokenizer, settings) for source in inputs}
    config = MixtureConfig(weights={"web": 0.7, "docs": 0.3}, budget_tokens=1_000_000, max_epochs=3)
    spec = mixture_spec(config, tokens, TINY)
    manifest = run_mixture(config, store, spec, tokens, TINY, progress=lambda _m: None)
    table = {row["source"]: row for row in manifest["summary"]["table"]}
    wanted = math.ceil(1_000_000 / 64)
    assert manifest["counts"]["sequences"] + manifest["counts"]["shortfall_sequences"] == wanted
    for source, row in table.items():
        assert row["epochs"] == pytest.approx(row["sequences"] / row["sequences_available"], abs=1e-3)
        assert row["sequences"] <= 3 * row["sequences_available"]
    [entry] = list(files_with_role(manifest, "order"))
    order = pa.ipc.open_file(str(fetch_verified(store, manifest, entry, Path(tmp_path)))).read_all()
    assert order.num_rows == manifest["counts"]["sequences"]
    shards = manifest["summary"]["shards"]
    assert max(order.column("shard").to_pylist()) < len(shards)
    assert all(row < shards[shard]["sequences"] for shard, row in zip(order.column("shard").to_pylist(),
                                                                     order.column("row").to_pylist()))
    # the Chinchilla budget follows the model: 20 tokens per parameter
    chinchilla = MixtureConfig(budget_tokens="chinchilla", max_epochs=1000)
    planned = run_mixture(chinchilla, store, mixture_spec(chinchilla, tokens, TINY), tokens, TINY,
                          progress=lambda _m: None)
    assert planned["summary"]["budget_tokens"] == 20 * planned["summary"]["parameters"]
