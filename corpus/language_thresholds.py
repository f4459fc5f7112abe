"""Per-language thresholds and word lists of the quality rules: a folder of `<lang>.yaml` files.

Each file is named by the language code langid gives (`de.yaml`, `pt.yaml`, ...) and maps rule names
to settings that override, for documents of that language, the rule's defaults and pipeline.yaml's
own overrides (`filter.gopher_quality`, ...):

    gopher_quality:    {min_avg_word_length: 0, max_avg_word_length: 15, stop_words: [der, und, die]}
    gopher_repetition: {max_dup_line_frac: 0.263, top_ngrams: [[2, 0.169], [3, 0.153], [4, 0.137]]}
    fineweb:           {line_punct_thr: 0.0, new_line_ratio: 0.152}

A language's `gopher_quality.stop_words` switch the stop-word check on for it. An unknown rule or
setting, or a value the rule refuses, fails validation naming the file. data/language_thresholds/
ships FineWeb-2's values for the sample's languages (scripts/fineweb2_thresholds.py converts them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from .quality_rules import C4Quality, FineWebQuality, GopherQuality, GopherRepetition
from .toxicity import WordListToxicity

RULES = {"gopher_quality": GopherQuality, "gopher_repetition": GopherRepetition, "c4": C4Quality,
         "fineweb": FineWebQuality, "toxicity": WordListToxicity}


def rule_settings(rule: str, values: dict[str, Any], factory: Any = None) -> dict[str, Any]:
    """Check settings of a rule (of RULES, or built by `factory`) by building it: unknown names and refused
    values raise ValueError."""
    factory = factory or RULES[rule]
    allowed = sorted(field.name for field in dataclasses.fields(factory))
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"{rule}: unknown setting(s) {unknown}; allowed: {', '.join(allowed)}")
    try:
        build(rule, values) if rule in RULES else factory(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{rule}: {exc}") from None
    return values


def build(rule: str, values: dict[str, Any]) -> Any:
    """The rule with these settings (YAML lists of n-gram thresholds become the tuples the rule holds)."""
    if rule == "gopher_repetition":
        values = {key: tuple(map(tuple, value)) if isinstance(value, list) else value for key, value in values.items()}
    return RULES[rule](**values)


def load_language_thresholds(folder: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """{lang: {rule: settings}} from every <lang>.yaml (or .yml) in the folder, each checked."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    languages: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path.name}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path.name}: expected a mapping of rule names to settings")
        unknown = sorted(set(raw) - set(RULES))
        if unknown:
            raise ValueError(f"{path.name}: unknown rule(s) {unknown}; allowed: {', '.join(RULES)}")
        for rule, values in raw.items():
            if not isinstance(values, dict):
                raise ValueError(f"{path.name}: {rule}: expected a mapping of settings")
            try:
                rule_settings(rule, values)
            except ValueError as exc:
                raise ValueError(f"{path.name}: {exc}") from None
        languages[path.stem] = raw
    return languages
