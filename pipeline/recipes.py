"""Recipe files of data-recipe ablations: their schema, loading, validation, and each proxy's config.

A recipe file names a base pipeline.yaml, a list of recipes (each a set of dotted overrides of the data
stages or the mixture), the seeds, one proxy model and one training budget in tokens. What must not vary
between recipes for their scores to be comparable (the tokenizer, the eval tasks and held-out data, the
model, the budget and the optimisation) is fixed by the ablation: a recipe key outside the data stages and
the mixture is rejected at load time, naming the recipe and the key, before any work starts.

`recipe_config(ablation, recipe, seed)` gives the validated PipelineConfig of one proxy: the base config,
the file's base_overrides, the recipe's overrides, then the ablation's fixed settings (the proxy model,
train.seed, train.steps from the budget, proxy_train, eval.tasks, a run that stops after pretraining).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import (DATA_ONLY_HINT, SOURCE_NAME, ConfigError, ModelConfig, PipelineConfig, TrainConfig, apply_overrides,
                     format_error)

# Sections a recipe may override: the data stages and the mixture (pipeline.yaml's section names).
ALLOWED_PREFIXES = ("ingest", "clean", "langid", "dedup", "filter", "tokenize", "mixture")

# Keys inside those sections that are still fixed, and why.
FIXED_KEYS = {
    "tokenize.seq_len": "the proxies' context and the budget's steps depend on it",
    "tokenize.val_fraction": "it defines the documents held out from training",
    "tokenize.loss_mask": "pretraining's loss covers every token",
    "mixture.budget_tokens": "the ablation's budget_tokens sets it for every recipe",
    "mixture.tokens_per_parameter": "the ablation's budget_tokens sets the budget for every recipe",
}

# Every other section is fixed; the reason shown in the error.
FIXED_SECTIONS = {
    "storage": "every recipe shares one artifact store (that is what makes shared stages Cached)",
    "sources": "every recipe reads the same corpus (change what a recipe keeps with the stages, how much of "
               "each source it trains on with mixture.weights)",
    "stop_after": "the ablation runs every recipe through pretraining",
    "quality_model": "it is not a stage of the run",
    "tokenizer": "every proxy uses the same tokenizer settings",
    "model": "every proxy is the ablation's proxy_model",
    "train": "the budget and the optimisation are the ablation's (budget_tokens, proxy_train, seeds)",
    "cpt": "proxies are pretrained only",
    "ift": "proxies are pretrained only",
    "eval": "every proxy is scored on the same tasks and held-out data",
    "refresh": "it is not part of a run",
    "alerts": "it is not part of a run",
    "cluster": "it changes where stages run, not what they produce (set it in base_overrides)",
}

# base_overrides apply to every recipe, so they may set any key but those the ablation sets itself.
SET_BY_ABLATION = {
    "model": "proxy_model",
    "train": "proxy_train (train.seed comes from seeds, train.steps from budget_tokens)",
    "mixture.budget_tokens": "budget_tokens",
    "eval.tasks": "tasks",
    "stop_after": "nothing: the ablation runs every recipe through pretraining",
    "cpt.enabled": "nothing: proxies are pretrained only",
    "ift.enabled": "nothing: proxies are pretrained only",
}

# Keys of proxy_train that the ablation sets from other fields.
TRAIN_SET_BY_ABLATION = {"seed": "seeds", "steps": "budget_tokens"}

# The cost table of tasks/ablation_report.py has a row of this name.
RESERVED_NAMES = {"total"}


class RecipeError(ConfigError):
    """A recipe file is invalid: one line naming the file, the recipe (where one is at fault) and the key."""


@dataclass(frozen=True)
class Recipe:
    name: str
    overrides: dict[str, Any]           # dotted keys -> values
    description: str = ""


@dataclass(frozen=True)
class Ablation:
    path: Path                          # the recipe file
    base_config: Path                   # the pipeline.yaml the recipes start from (absolute)
    base_overrides: dict[str, Any]      # applied to the base before every recipe
    recipes: list[Recipe]               # >= 2, unique names
    seeds: list[int]                    # >= 2 distinct
    proxy_model: dict[str, Any]         # {family, preset, size overrides}: the same for every recipe
    budget_tokens: int                  # training tokens per proxy: the same for every recipe
    proxy_train: dict[str, Any]         # fixed train.* settings of the proxies
    held_out: dict[str, Any]            # how the fixed held-out set is chosen
    tasks: list[str]                    # harness tasks scored on every proxy (may be empty)
    steps: int = 0                      # optimizer steps per proxy (budget_tokens // tokens per step)
    tokens_per_step: int = 0            # micro_batch x grad_accum x processes x seq_len
    _raw_base: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """What the ablation is, as JSON (for a manifest or an artifact version): every field but the path."""
        return {"base_config": str(self.base_config), "base_overrides": self.base_overrides,
                "recipes": [{"name": r.name, "description": r.description, "overrides": r.overrides}
                            for r in self.recipes],
                "seeds": self.seeds, "proxy_model": self.proxy_model, "budget_tokens": self.budget_tokens,
                "proxy_train": self.proxy_train, "held_out": self.held_out, "tasks": self.tasks,
                "steps": self.steps, "tokens_per_step": self.tokens_per_step}

    def recipe(self, name: str) -> Recipe:
        for recipe in self.recipes:
            if recipe.name == name:
                return recipe
        raise KeyError(f"no recipe named {name!r}; recipes: {', '.join(r.name for r in self.recipes)}")


# ---------------------------------------------------------------------------------------------
# The schema of the file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HeldOutSpec(_Strict):
    """The fixed held-out set every proxy is scored on (bits per byte, perplexity): the documents of the base
    config's `stage` whose id the tokenize stage's hash puts in the validation split (`tokenize.val_fraction`,
    fixed), so no recipe trains on them (tasks/heldout.py)."""

    stage: Literal["clean", "langid", "filter"] = Field(
        "langid", description="the base config's stage the held-out text is read from: clean or langid (before "
                              "dedup and the quality filters, so no recipe's filters decide it), or filter")
    max_bytes_per_source: int = Field(200_000, ge=1, description="UTF-8 bytes of held-out text scored per source")


class RecipeSpec(_Strict):
    name: str = Field(pattern=SOURCE_NAME, max_length=64)
    description: str = ""
    overrides: dict[str, Any] = Field({}, description="dotted pipeline.yaml keys of the data stages or the mixture")

    @field_validator("overrides", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class RecipeFile(_Strict):
    base_config: str = Field(min_length=1, description="the pipeline.yaml recipes start from; relative to this file")
    base_overrides: dict[str, Any] = Field({}, description="dotted keys applied to the base before every recipe")
    recipes: list[RecipeSpec] = Field(min_length=2)
    seeds: list[int] = Field(min_length=2, description="one proxy per recipe and seed (train.seed)")
    proxy_model: ModelConfig
    budget_tokens: int = Field(gt=0, description="training tokens per proxy")
    proxy_train: dict[str, Any] = Field({}, description="train.* settings of every proxy (lr, micro_batch, ...)")
    held_out: HeldOutSpec = HeldOutSpec()
    tasks: list[str] = Field([], description="lm-evaluation-harness tasks scored on every proxy")

    @model_validator(mode="before")
    @classmethod
    def _family_from_preset(cls, data: Any) -> Any:
        """`proxy_model: {preset: gpt2-tiny}` needs no family: the preset has one."""
        from model.families import PRESETS

        model = data.get("proxy_model") if isinstance(data, dict) else None
        if isinstance(model, dict) and "family" not in model and model.get("preset") in PRESETS:
            data = {**data, "proxy_model": {**model, "family": PRESETS[model["preset"]]["family"]}}
        return data

    @field_validator("seeds")
    @classmethod
    def _seeds_distinct(cls, seeds: list[int]) -> list[int]:
        negative = [seed for seed in seeds if seed < 0]
        if negative:
            raise ValueError(f"seeds must be >= 0, got {negative}")
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:
            raise ValueError(f"seed {repeated[0]} is listed twice; give at least two distinct seeds")
        return seeds

    @field_validator("recipes")
    @classmethod
    def _names_unique(cls, recipes: list[RecipeSpec]) -> list[RecipeSpec]:
        seen: set[str] = set()
        for recipe in recipes:
            if recipe.name in seen:
                raise ValueError(f"duplicate recipe name {recipe.name!r}; names must be unique")
            if recipe.name in RESERVED_NAMES:
                raise ValueError(f"{recipe.name!r} is reserved (the report's totals row); choose another name")
            seen.add(recipe.name)
        return recipes


# ---------------------------------------------------------------------------------------------
# Loading


def load_ablation(path: str | Path) -> Ablation:
    """Read and validate a recipe file: its schema, every key of every recipe, and each recipe's full
    pipeline config (so a bad value fails here, before any work). Raises RecipeError."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: the top level must be a mapping (base_config, recipes, seeds, proxy_model, "
                          f"budget_tokens, ...)")
    try:
        spec = RecipeFile.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(f"{path}: " + "; ".join(_format(err) for err in exc.errors())) from None

    for key in spec.base_overrides:
        _check_base_key(path, key)
    for key in spec.proxy_train:
        _check_train_key(path, key)
    recipes = [Recipe(r.name, dict(r.overrides), r.description) for r in spec.recipes]
    for recipe in recipes:
        for key in recipe.overrides:
            _check_recipe_key(path, recipe.name, key)
    _check_distinct(path, recipes)

    base_config = (path.resolve().parent / spec.base_config).resolve()
    ablation = Ablation(
        path=path, base_config=base_config, base_overrides=dict(spec.base_overrides), recipes=recipes,
        seeds=list(spec.seeds), proxy_model=spec.proxy_model.model_dump(mode="json", exclude_none=True),
        budget_tokens=spec.budget_tokens, proxy_train=dict(spec.proxy_train),
        held_out=spec.held_out.model_dump(mode="json"), tasks=list(spec.tasks),
        _raw_base=_read_base(path, base_config),
    )
    # The base with the ablation's settings alone (its errors are not a recipe's), then every recipe.
    base = _build(ablation, {}, ablation.seeds[0], None, f"{path}: base_config with base_overrides")
    tokens_per_step = (base.train.micro_batch * base.train.grad_accum * base.train.processes
                       * base.tokenize.seq_len)
    steps = ablation.budget_tokens // tokens_per_step
    if steps < 1:
        raise RecipeError(f"{path}: budget_tokens {ablation.budget_tokens:,} is less than one optimizer step of "
                          f"{tokens_per_step:,} tokens (train.micro_batch x grad_accum x processes x "
                          f"tokenize.seq_len); raise budget_tokens or lower proxy_train.micro_batch")
    ablation = dataclasses.replace(ablation, steps=steps, tokens_per_step=tokens_per_step)
    for recipe in recipes:
        recipe_config(ablation, recipe, ablation.seeds[0])
    return ablation


def recipe_config(ablation: Ablation, recipe: Recipe | str, seed: int, *,
                  fixed_overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """The validated PipelineConfig of the proxy for (recipe, seed). `fixed_overrides` are settings the
    caller fixes for every recipe, applied last (e.g. the path of the one tokenizer all proxies share)."""
    if isinstance(recipe, str):
        recipe = ablation.recipe(recipe)
    if seed not in ablation.seeds:
        raise RecipeError(f"{ablation.path}: seed {seed} is not one of the ablation's seeds {ablation.seeds}")
    config = _build(ablation, recipe.overrides, seed, fixed_overrides, f"{ablation.path}: recipe {recipe.name!r}")
    steps = ablation.steps or 1
    return config.model_copy(update={"train": config.train.model_copy(update={"steps": steps})})


def _read_base(path: Path, base_config: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(base_config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{path}: base_config: no such config file {base_config}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: base_config {base_config} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: base_config {base_config}: the top level must be a mapping of sections")
    return raw


def _build(ablation: Ablation, overrides: dict[str, Any], seed: int, fixed_overrides: dict[str, Any] | None,
           origin: str) -> PipelineConfig:
    try:
        raw = apply_overrides(ablation._raw_base, ablation.base_overrides)
        raw = apply_overrides(raw, overrides)
        raw["model"] = dict(ablation.proxy_model)
        raw["train"] = {**(raw.get("train") or {}), **ablation.proxy_train, "seed": seed, "steps": 1}
        raw["mixture"] = {**(raw.get("mixture") or {}), "budget_tokens": ablation.budget_tokens}
        raw["eval"] = {**(raw.get("eval") or {}), "tasks": list(ablation.tasks)}
        raw["stop_after"] = "pretrain"
        raw["cpt"] = {**(raw.get("cpt") or {}), "enabled": False}
        raw["ift"] = {**(raw.get("ift") or {}), "enabled": False}
        raw = apply_overrides(raw, fixed_overrides)
    except ConfigError as exc:
        raise RecipeError(f"{origin}: {exc}") from None
    try:
        return PipelineConfig.model_validate(raw, context={"base_dir": str(ablation.base_config.parent)})
    except ValidationError as exc:
        raise RecipeError(f"{origin}: " + "; ".join(_format_config(err) for err in exc.errors())) from None


# ---------------------------------------------------------------------------------------------
# Key checks


def _allowed_text() -> str:
    within = {}
    for key in FIXED_KEYS:
        section, _, name = key.partition(".")
        within.setdefault(section, []).append(name)
    return ", ".join(f"{s} (not {', '.join(within[s])})" if s in within else s for s in ALLOWED_PREFIXES)


def _check_recipe_key(path: Path, name: str, key: str) -> None:
    where = f"{path}: recipe {name!r}"
    _check_exists(where, key)
    section = key.split(".")[0]
    if section not in ALLOWED_PREFIXES:
        raise RecipeError(f"{where}: {key} is fixed by the ablation ({FIXED_SECTIONS.get(section, '')}): recipes "
                          f"may change {_allowed_text()}")
    for fixed, why in FIXED_KEYS.items():
        if key == fixed or key.startswith(fixed + "."):
            raise RecipeError(f"{where}: {key} is fixed by the ablation ({why}): recipes may change "
                              f"{_allowed_text()}")


def check_base_key(path: Path, key: str) -> None:
    """A base override (the file's, or the flow's `overrides` parameter) may set any key but those the ablation sets."""
    _check_base_key(path, key)


def _check_base_key(path: Path, key: str) -> None:
    where = f"{path}: base_overrides"
    _check_exists(where, key)
    for fixed, instead in SET_BY_ABLATION.items():
        if key == fixed or key.startswith(fixed + "."):
            raise RecipeError(f"{where}: {key} is set by the ablation; set it with {instead}")


def _check_train_key(path: Path, key: str) -> None:
    if key in TRAIN_SET_BY_ABLATION:
        raise RecipeError(f"{path}: proxy_train: {key} is set by the ablation from {TRAIN_SET_BY_ABLATION[key]}")
    if key not in TrainConfig.model_fields:
        allowed = sorted(set(TrainConfig.model_fields) - set(TRAIN_SET_BY_ABLATION))
        raise RecipeError(f"{path}: proxy_train: {key} is not a train key; allowed: {', '.join(allowed)}")


def _check_exists(where: str, key: str) -> None:
    """The dotted key names a setting of pipeline.yaml's schema (a key inside a mapping setting such as
    mixture.weights.web counts; a whole section does not: its other keys would fall back to defaults)."""
    parts = key.split(".")
    if not all(parts):
        raise RecipeError(f"{where}: {key!r} is not a dotted key such as dedup.near")
    model: Any = PipelineConfig
    for depth, part in enumerate(parts):
        dotted = ".".join(parts[: depth + 1])
        fields = model.model_fields
        if part not in fields:
            here = ".".join(parts[:depth]) or "pipeline.yaml's top level"
            raise RecipeError(f"{where}: {dotted} is not a key of pipeline.yaml; allowed keys under {here}: "
                              f"{', '.join(fields)}")
        annotation = fields[part].annotation
        if _is_section(annotation):
            model = annotation
            continue
        rest = parts[depth + 1:]
        if rest and not _holds_mapping(annotation) and part != "sources":
            raise RecipeError(f"{where}: {key}: {dotted} is a value, not a section")
        return
    example = next(iter(model.model_fields))
    raise RecipeError(f"{where}: {key} is a whole section; set its keys one by one (e.g. {key}.{example})")


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _holds_mapping(annotation: Any) -> bool:
    if typing.get_origin(annotation) is dict:
        return True
    return any(_holds_mapping(arg) for arg in typing.get_args(annotation))


def _check_distinct(path: Path, recipes: list[Recipe]) -> None:
    seen: dict[str, str] = {}
    for recipe in recipes:
        signature = yaml.safe_dump(recipe.overrides, sort_keys=True)
        if signature in seen:
            raise RecipeError(f"{path}: recipes {seen[signature]!r} and {recipe.name!r} have the same overrides; "
                              f"they would train the same proxies")
        seen[signature] = recipe.name


# ---------------------------------------------------------------------------------------------
# Errors in pipeline.yaml's style: `dotted.path: problem (allowed: ...)`


def _format_config(err: dict[str, Any]) -> str:
    """A pipeline config error; a check across sections names its keys itself, and the hint to stop after the
    data stages does not apply to an ablation."""
    return format_error(err).removeprefix("(top level): ").replace(DATA_ONLY_HINT, "")


def _format(err: dict[str, Any]) -> str:
    if err["type"] != "extra_forbidden":
        return format_error(err)
    loc = err["loc"]
    path = ".".join(str(part) for part in loc)
    allowed = _allowed_keys(loc[:-1])
    return f"{path}: unknown key" + (f"; allowed keys here: {', '.join(allowed)}" if allowed else "")


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = RecipeFile
    for part in loc:
        if isinstance(part, int):
            continue
        field_info = model.model_fields.get(part) if _is_section(model) else None
        if field_info is None:
            return []
        model = _model_in(field_info.annotation)
    return list(model.model_fields) if _is_section(model) else []


def _model_in(annotation: Any) -> Any:
    if _is_section(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
