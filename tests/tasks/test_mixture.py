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
from pipeline.config import ConfigError, MixtureConfig, RehydrationConfig, TokenizeConfig, validate_config
from tasks.mixture import (allocate, largest_remainder, mixture_spec, mixture_weights, rehydration_weights, run_mixture,
                           sample_order)
from tasks.tokenize import RowOwners
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


# ---------------------------------------------------------------------------------------------
# Rehydration (FineWeb-2's upsampling by cluster size)


def test_fineweb2_rehydration_table():
    settings = RehydrationConfig(enabled=True)
    sizes = np.array([1, 2, 3, 4, 5, 99, 100, 999, 1000, 50_000])
    assert rehydration_weights(settings.weights, sizes).tolist() == [1, 2, 3, 3, 5, 5, 8, 8, 1, 1]
    assert rehydration_weights({10: 4, 1: 1}, np.array([1, 9, 10, 11])).tolist() == [1, 1, 4, 4]
    for weights, message in (({2: 2}, "cluster size 1"), ({1: 1, 0: 3}, ">= 1"), ({1: 0}, "positive")):
        with pytest.raises(ConfigError, match=message):
            validate_config({"sources": [{"name": "w", "kind": "warc", "location": "x"}],
                             "mixture": {"rehydration": {"weights": weights}}})


def test_a_full_pass_over_the_rehydrated_pool_repeats_each_row_by_its_weight():
    shards = [{"source": "a", "sequences": 3}, {"source": "a", "sequences": 2}]
    repeats = {0: np.array([1, 3, 0]), 1: np.array([2, 1])}
    order = sample_order({"a": 7}, shards, seed=3, repeats=repeats)
    counted = {}
    for shard, row in order.tolist():
        counted[(shard, row)] = counted.get((shard, row), 0) + 1
    assert counted == {(0, 0): 1, (0, 1): 3, (1, 0): 2, (1, 1): 1}
    # more than a pass: whole passes, then a subset of the pool
    assert len(sample_order({"a": 9}, shards, seed=3, repeats=repeats)) == 9


def test_each_packed_row_counts_with_the_document_that_fills_most_of_it():
    owners = RowOwners(width=10)
    for tag, tokens in ((5, 4), (2, 12), (7, 3), (9, 2)):  # rows: [5x4, 2x6] [2x6, 7x3, 9x1] [9x1 + padding]
        owners.add(tag, tokens)
    assert owners.take(2).tolist() == [2, 2]
    assert owners.take(1).tolist() == [9]


def test_stage_rehydrates_the_sample(filtered_sample):
    store, inputs = filtered_sample
    tokenizer = chain.tokenizer(store, inputs)
    settings = TokenizeConfig(workers=1, seq_len=64, val_fraction=0.05)
    tokens = {source: chain.tokenize(store, source, inputs[source], tokenizer, settings) for source in inputs}
    assert all(files_with_role(manifest, "cluster_sizes") for manifest in tokens.values())
    # the sample did not go through dedup: every row counts as a singleton, which this table doubles
    config = MixtureConfig(weights={"web": 1.0}, budget_tokens=64 * 100_000, max_epochs=1,
                           rehydration=RehydrationConfig(enabled=True, weights={1: 2, 2: 3}))
    manifest = run_mixture(config, store, mixture_spec(config, tokens, TINY), tokens, TINY, progress=lambda _m: None)
    row = manifest["counts"]["sources"]["web"]
    assert row["sequences_rehydrated"] == 2 * row["sequences_available"] == row["sequences"]
    plain = MixtureConfig(weights={"web": 1.0}, budget_tokens=64 * 100_000, max_epochs=1)
    assert run_mixture(plain, store, mixture_spec(plain, tokens, TINY), tokens, TINY,
                       progress=lambda _m: None)["counts"]["sources"]["web"]["sequences"] == row["sequences_available"]
