"""Recipe files of data-recipe ablations: loading, each kind of rejection (naming the recipe and the key),
the proxy's steps from the budget, and recipe_config's overrides and fixed settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError
from pipeline.recipes import RecipeError, load_ablation, recipe_config

REPO = Path(__file__).resolve().parents[2]


def _valid() -> dict:
    return {
        "base_config": str(REPO / "pipeline.yaml"),
        "recipes": [
            {"name": "base", "overrides": {}},
            {"name": "no-c4", "overrides": {"filter.rules": ["gopher_quality", "fineweb"]}},
        ],
        "seeds": [0, 1],
        "proxy_model": {"family": "llama", "preset": "llama-tiny"},
        "budget_tokens": 20480,
    }


def _write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "recipes.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _error(tmp_path: Path, spec: dict) -> str:
    with pytest.raises(RecipeError) as caught:
        load_ablation(_write(tmp_path, spec))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(tmp_path / "recipes.yaml"))
    return message


def _with_recipe(overrides: dict, name: str = "bad") -> dict:
    spec = _valid()
    spec["recipes"].append({"name": name, "overrides": overrides})
    return spec


def test_the_sample_recipe_file_loads():
    ablation = load_ablation(REPO / "ablations" / "sample.yaml")
    assert [recipe.name for recipe in ablation.recipes] == ["base", "no-c4", "dedup-off", "more-pages"]
    assert ablation.seeds == [0, 1]
    assert ablation.base_config == REPO / "pipeline.yaml"
    # pipeline.yaml: micro_batch 8 x grad_accum 1 x 1 process x seq_len 256 = 2048 tokens per step.
    assert ablation.tokens_per_step == 2048 and ablation.steps == 262144 // 2048 == 128
    described = ablation.to_json()
    assert json.loads(json.dumps(described)) == described
    assert described["recipes"][2] == {"name": "dedup-off", "description": "neither exact nor near-duplicate removal",
                                       "overrides": {"dedup.exact": False, "dedup.near": False}}
    assert described["held_out"] == {"stage": "langid", "max_bytes_per_source": 200000}
    config = recipe_config(ablation, "no-c4", 1)
    assert "c4" not in config.filter.rules and config.filter.rules[0] == "gopher_quality"
    assert recipe_config(ablation, "dedup-off", 0).dedup.near is False
    assert recipe_config(ablation, "more-pages", 0).mixture.weights == {"web": 0.5, "pages": 0.5}


def test_recipe_config_applies_the_overrides_and_the_fixed_settings(tmp_path):
    spec = _valid()
    spec["base_overrides"] = {"dedup.workers": 1, "dedup.near": True, "tokenize.seq_len": 128}
    spec["recipes"][1]["overrides"]["dedup.near"] = False
    spec["proxy_model"] = {"preset": "gpt2-tiny", "n_layer": 2}        # the family comes from the preset
    spec["proxy_train"] = {"lr": 0.004, "micro_batch": 4, "grad_accum": 2, "processes": 2}
    spec["tasks"] = ["debian_cloze"]
    spec["budget_tokens"] = 10_000
    ablation = load_ablation(_write(tmp_path, spec))
    # 4 sequences x 2 micro-steps x 2 ranks x 128 tokens = 2048 tokens per step; 10,000 // 2048 = 4 steps.
    assert ablation.tokens_per_step == 2048 and ablation.steps == 4

    base, no_c4 = recipe_config(ablation, "base", 0), recipe_config(ablation, ablation.recipes[1], 1)
    assert base.filter.rules == ["gopher_quality", "gopher_repetition", "c4", "fineweb", "toxicity",
                                 "decontamination"]                  # pipeline.yaml's
    assert no_c4.filter.rules == ["gopher_quality", "fineweb"]
    assert base.dedup.workers == no_c4.dedup.workers == 1             # base_overrides reach every recipe
    assert base.dedup.near is True and no_c4.dedup.near is False      # a recipe's override wins over them
    for seed, config in ((0, base), (1, no_c4)):
        assert config.train.seed == seed
        assert config.train.steps == 4 and config.train.lr == 0.004 and config.train.micro_batch == 4
        assert config.train.warmup_steps == 20                        # pipeline.yaml's, not overridden
        assert config.model.family == "gpt2" and config.model.preset == "gpt2-tiny" and config.model.n_layer == 2
        assert config.mixture.budget_tokens == 10_000
        assert config.eval.tasks == ["debian_cloze"]
        assert config.stop_after == "pretrain" and not config.cpt.enabled and not config.ift.enabled
    # The caller's fixed settings come last.
    pinned = recipe_config(ablation, "base", 0, fixed_overrides={"tokenizer.path": "tok.json"})
    assert pinned.tokenizer.path == "tok.json"
    with pytest.raises(RecipeError, match="seed 7 is not one of"):
        recipe_config(ablation, "base", 7)
    with pytest.raises(KeyError, match="no recipe named 'nope'"):
        recipe_config(ablation, "nope", 0)


def test_the_base_models_size_fields_do_not_leak_into_the_proxy(tmp_path):
    base = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    base["model"] = {"family": "llama", "preset": "llama-125m", "n_layer": 3}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(base))
    spec = {**_valid(), "base_config": "pipeline.yaml"}               # relative to the recipe file
    for key in ("filter.language_thresholds", "filter.decontamination.eval_sets", "eval.include_path",
                "ift.chat_files"):
        spec.setdefault("base_overrides", {})[key] = None if key == "filter.language_thresholds" else []
    spec["base_overrides"].pop("ift.chat_files")
    ablation = load_ablation(_write(tmp_path, spec))
    assert ablation.base_config == tmp_path / "pipeline.yaml"
    model = recipe_config(ablation, "base", 0).model
    assert (model.preset, model.n_layer) == ("llama-tiny", None)


@pytest.mark.parametrize("key, value, reason", [
    ("tokenizer.vocab_size", 4096, "same tokenizer"),
    ("tokenizer.path", "gpt2.json", "same tokenizer"),
    ("eval.tasks", ["hellaswag"], "same tasks and held-out data"),
    ("eval.heldout.max_bytes_per_source", 10, "same tasks and held-out data"),
    ("model.preset", "llama-125m", "proxy_model"),
    ("model.n_layer", 2, "proxy_model"),
    ("train.lr", 0.1, "budget_tokens, proxy_train, seeds"),
    ("train.seed", 3, "budget_tokens, proxy_train, seeds"),
    ("sources.web.location", "elsewhere", "same corpus"),
    ("storage.prefix", "other", "artifact store"),
    ("tokenize.seq_len", 128, "the budget's steps"),
    ("tokenize.val_fraction", 0.2, "held out from training"),
    ("mixture.budget_tokens", 5, "budget_tokens"),
])
def test_a_recipe_may_not_change_what_the_ablation_fixes(tmp_path, key, value, reason):
    message = _error(tmp_path, _with_recipe({key: value}, name="sneaky"))
    assert f"recipe 'sneaky': {key} is fixed by the ablation" in message
    assert reason in message
    assert "recipes may change ingest, clean, langid, dedup, filter, tokenize (not seq_len" in message


@pytest.mark.parametrize("key, value", [
    ("ingest.max_record_mb", 5), ("clean.min_chars", 100), ("langid.threshold", 0.5), ("dedup.near", False),
    ("filter.gopher_quality.min_doc_words", 30), ("tokenize.shard_max_sequences", 64),
    ("mixture.weights.pages", 0.6), ("mixture.rehydration.enabled", True),
])
def test_a_recipe_may_change_the_data_stages_and_the_mixture(tmp_path, key, value):
    ablation = load_ablation(_write(tmp_path, _with_recipe({key: value}, name="ok")))
    config = recipe_config(ablation, "ok", 0).model_dump()
    node = config
    for part in key.split("."):
        node = node[part]
    assert node == value


def test_unknown_keys_name_what_is_allowed(tmp_path):
    message = _error(tmp_path, _with_recipe({"dedup.nearr": False}))
    assert "recipe 'bad': dedup.nearr is not a key of pipeline.yaml; allowed keys under dedup:" in message
    assert "near" in message and "exact" in message
    message = _error(tmp_path, _with_recipe({"dedupe.near": False}))
    assert "dedupe is not a key of pipeline.yaml" in message and "dedup" in message
    message = _error(tmp_path, _with_recipe({"dedup.near.x": False}))
    assert "dedup.near is a value, not a section" in message
    message = _error(tmp_path, _with_recipe({"dedup": {"near": False}}))
    assert "dedup is a whole section; set its keys one by one" in message

    spec = {**_valid(), "seed": 3}
    message = _error(tmp_path, spec)
    assert "seed: unknown key; allowed keys here: base_config, base_overrides, recipes, seeds" in message
    spec = _valid()
    spec["held_out"] = {"fraction": 0.1}
    assert "held_out.fraction: unknown key; allowed keys here: stage, max_bytes_per_source" in _error(tmp_path, spec)
    spec = _valid()
    spec["held_out"] = {"stage": "dedup"}
    assert "held_out.stage" in _error(tmp_path, spec)
    spec = _valid()
    spec["recipes"][1]["override"] = {}
    assert "recipes.1.override: unknown key; allowed keys here: name, description, overrides" \
        in _error(tmp_path, spec)
    spec = _valid()
    spec["proxy_model"]["layers"] = 2
    assert "proxy_model.layers: unknown key; allowed keys here: family, preset, n_layer" in _error(tmp_path, spec)


def test_a_bad_value_in_a_recipe_names_the_recipe_and_key(tmp_path):
    message = _error(tmp_path, _with_recipe({"dedup.near": "maybe"}, name="odd"))
    assert "recipe 'odd': dedup.near: Input should be a valid boolean" in message
    message = _error(tmp_path, _with_recipe({"filter.rules": ["c5"]}, name="odd"))
    assert "recipe 'odd': filter.rules.0:" in message and "'c4'" in message
    message = _error(tmp_path, _with_recipe({"mixture.weights": {"nosuch": 1.0}}, name="odd"))
    assert "recipe 'odd': mixture.weights: no source named ['nosuch']" in message


@pytest.mark.parametrize("change, expected", [
    (lambda s: s.update(seeds=[0]), "seeds: List should have at least 2 items"),
    (lambda s: s.update(seeds=[3, 3]), "seeds: seed 3 is listed twice; give at least two distinct seeds"),
    (lambda s: s.update(seeds=[0, -1]), "seeds must be >= 0"),
    (lambda s: s.update(recipes=s["recipes"][:1]), "recipes: List should have at least 2 items"),
    (lambda s: s["recipes"].append({"name": "base"}), "duplicate recipe name 'base'; names must be unique"),
    (lambda s: s["recipes"].append({"name": "total", "overrides": {"dedup.near": False}}), "'total' is reserved"),
    (lambda s: s["recipes"].append({"name": "Bad Name"}), "recipes.2.name: String should match pattern"),
    (lambda s: s["recipes"].append({"name": "again", "overrides": {"filter.rules": ["gopher_quality", "fineweb"]}}),
     "recipes 'no-c4' and 'again' have the same overrides"),
    (lambda s: s.update(budget_tokens=0), "budget_tokens: Input should be greater than 0"),
    (lambda s: s.update(budget_tokens=2047), "budget_tokens 2,047 is less than one optimizer step of 2,048 tokens"),
    (lambda s: s.pop("budget_tokens"), "budget_tokens: required key is missing"),
    (lambda s: s.pop("proxy_model"), "proxy_model: required key is missing"),
    (lambda s: s.update(proxy_model={"preset": "llama-huge"}), "preset 'llama-huge' is unknown; allowed: gpt2-tiny"),
    (lambda s: s.update(proxy_model={"family": "gpt2", "preset": "llama-tiny"}),
     "preset 'llama-tiny' is of family 'llama', not 'gpt2'"),
    (lambda s: s.update(base_overrides={"model.preset": "llama-125m"}),
     "base_overrides: model.preset is set by the ablation; set it with proxy_model"),
    (lambda s: s.update(base_overrides={"train.lr": 0.1}), "base_overrides: train.lr is set by the ablation; set it "
                                                          "with proxy_train"),
    (lambda s: s.update(base_overrides={"eval.tasks": []}), "eval.tasks is set by the ablation; set it with tasks"),
    (lambda s: s.update(base_overrides={"dedup.nope": 1}), "base_overrides: dedup.nope is not a key of pipeline.yaml"),
    (lambda s: s.update(base_overrides={"tokenize.seq_len": 4096}),
     "base_config with base_overrides: tokenize.seq_len 4096 exceeds the model's n_positions 256"),
    (lambda s: s.update(proxy_train={"seed": 1}), "proxy_train: seed is set by the ablation from seeds"),
    (lambda s: s.update(proxy_train={"steps": 10}), "proxy_train: steps is set by the ablation from budget_tokens"),
    (lambda s: s.update(proxy_train={"learning_rate": 1}), "proxy_train: learning_rate is not a train key; allowed:"),
    (lambda s: s.update(proxy_train={"lr": -1}), "base_config with base_overrides: train.lr: Input should be "
                                                 "greater than 0"),
    (lambda s: s.update(base_config="missing.yaml"), "base_config: no such config file"),
])
def test_invalid_recipe_files_are_rejected(tmp_path, change, expected):
    spec = _valid()
    change(spec)
    assert expected in _error(tmp_path, spec)


def test_file_level_errors(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_ablation(tmp_path / "absent.yaml")
    (tmp_path / "recipes.yaml").write_text("recipes: [\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_ablation(tmp_path / "recipes.yaml")
    (tmp_path / "recipes.yaml").write_text("- a\n")
    with pytest.raises(RecipeError, match="the top level must be a mapping"):
        load_ablation(tmp_path / "recipes.yaml")
    assert issubclass(RecipeError, ConfigError)   # the CLI reports it as one line, like a bad pipeline.yaml
