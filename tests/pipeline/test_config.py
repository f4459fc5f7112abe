"""pipeline.yaml: loading, validation errors that name the dotted key path, overrides, versioned()."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    ConfigError,
    HtmlSource,
    IngestConfig,
    JsonlSource,
    PipelineConfig,
    StorageConfig,
    WarcSource,
    apply_overrides,
    load_config,
    parse_overrides,
    validate_config,
)

MINIMAL = """\
storage:
  backend: local
  local_root: /tmp/artifacts
sources:
  - name: web
    kind: warc
    location: data/crawl
  - name: books
    kind: jsonl
    location: s3://raw/books/
    text_field: body
ingest:
  workers: 3
"""

INGEST_KEYS = sorted(IngestConfig.model_fields)
JSONL_KEYS = sorted(JsonlSource.model_fields)


def write_config(tmp_path: Path, text: str | dict) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text if isinstance(text, str) else yaml.safe_dump(text), encoding="utf-8")
    return path


def raw_minimal() -> dict:
    return yaml.safe_load(MINIMAL)


def config_error(tmp_path: Path, raw: dict, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, raw), overrides)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# Loading


def test_minimal_config_loads(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL))
    assert isinstance(config, PipelineConfig)
    assert config.storage.backend == "local" and config.storage.local_root == "/tmp/artifacts"
    assert config.storage.bucket == "pretrain-pipeline"  # defaults fill the rest
    assert config.ingest.workers == 3 and config.ingest.shard_max_mb == 64
    web, books = config.sources
    assert isinstance(web, WarcSource) and web.location == "data/crawl"
    assert isinstance(books, JsonlSource) and books.text_field == "body" and books.url_field == "url"
    assert config.source("books") is books
    with pytest.raises(KeyError, match="web, books"):
        config.source("nope")


def test_all_three_source_kinds_load(tmp_path):
    raw = {"sources": [
        {"name": "w", "kind": "warc", "location": "a"},
        {"name": "j", "kind": "jsonl", "location": "b", "content_type": "text/html"},
        {"name": "h", "kind": "html", "location": "c", "base_url": "https://example.org/docs", "charset": "utf-8"},
    ]}
    config = load_config(write_config(tmp_path, raw))
    assert [type(s) for s in config.sources] == [WarcSource, JsonlSource, HtmlSource]
    assert config.sources[2].base_url == "https://example.org/docs"
    assert config.storage.backend == "s3"  # the default storage section


def test_config_is_frozen(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL))
    with pytest.raises(Exception):
        config.ingest.workers = 5  # type: ignore[misc]


def test_storage_prefix_is_normalised(tmp_path):
    raw = raw_minimal()
    raw["storage"]["prefix"] = "/team/pipeline/"
    assert load_config(write_config(tmp_path, raw)).storage.prefix == "team/pipeline"


# ---------------------------------------------------------------------------------------------
# Validation errors name the dotted path


def test_unknown_top_level_key(tmp_path):
    raw = raw_minimal()
    raw["ingets"] = {"workers": 2}
    message = config_error(tmp_path, raw)
    assert "ingets: unknown key" in message
    assert "allowed keys here: alerts, clean, cluster, cpt, dedup, eval, filter, ift, ingest, langid, mixture, " \
           "model, quality_model, refresh, sources, stop_after, storage, tokenize, tokenizer, train" in message
    assert str(tmp_path / "pipeline.yaml") in message


def test_unknown_key_inside_ingest(tmp_path):
    raw = raw_minimal()
    raw["ingest"]["worker"] = 2
    message = config_error(tmp_path, raw)
    assert "ingest.worker: unknown key" in message
    assert "allowed keys here: " + ", ".join(INGEST_KEYS) in message


def test_unknown_key_inside_a_source(tmp_path):
    raw = raw_minimal()
    raw["sources"][1]["txt_field"] = "body"
    message = config_error(tmp_path, raw)
    assert "sources.1.txt_field: unknown key" in message
    assert "allowed keys here: " + ", ".join(JSONL_KEYS) in message


def test_key_of_another_source_kind_is_unknown(tmp_path):
    raw = raw_minimal()
    raw["sources"][0]["text_field"] = "body"  # a jsonl key on a warc source
    message = config_error(tmp_path, raw)
    assert "sources.0.text_field: unknown key" in message
    assert "allowed keys here: " + ", ".join(sorted(WarcSource.model_fields)) in message


def test_wrong_type(tmp_path):
    raw = raw_minimal()
    raw["ingest"]["workers"] = "many"
    message = config_error(tmp_path, raw)
    assert "ingest.workers:" in message
    assert "valid integer" in message and "'many'" in message


def test_out_of_range_value(tmp_path):
    raw = raw_minimal()
    raw["ingest"]["workers"] = 0
    message = config_error(tmp_path, raw)
    assert "ingest.workers:" in message
    assert "greater than or equal to 1" in message and "(got 0)" in message


def test_bad_source_kind(tmp_path):
    raw = raw_minimal()
    raw["sources"][0]["kind"] = "pdf"
    message = config_error(tmp_path, raw)
    assert "sources.0:" in message
    assert "'pdf'" in message and "'warc', 'jsonl', 'html'" in message


def test_missing_required_key(tmp_path):
    raw = raw_minimal()
    del raw["sources"][1]["location"]
    message = config_error(tmp_path, raw)
    assert "sources.1.location: required key is missing" in message


def test_missing_sources(tmp_path):
    message = config_error(tmp_path, {"ingest": {"workers": 1}})
    assert "sources: required key is missing" in message


def test_duplicate_source_names(tmp_path):
    raw = raw_minimal()
    raw["sources"][1]["name"] = "web"
    message = config_error(tmp_path, raw)
    assert "sources" in message and "duplicate source name 'web'" in message


def test_bad_bucket_name(tmp_path):
    raw = raw_minimal()
    raw["storage"]["bucket"] = "My_Bucket"
    message = config_error(tmp_path, raw)
    assert "storage.bucket:" in message and "'My_Bucket'" in message


def test_bad_source_name(tmp_path):
    raw = raw_minimal()
    raw["sources"][0]["name"] = "Web Crawl"
    message = config_error(tmp_path, raw)
    assert "sources.0.name:" in message


def test_every_error_is_reported_at_once(tmp_path):
    raw = raw_minimal()
    raw["ingest"]["workers"] = 0
    raw["storage"]["bucket"] = "X"
    raw["sources"][1]["txt_field"] = "x"
    message = config_error(tmp_path, raw)
    for path in ("ingest.workers:", "storage.bucket:", "sources.1.txt_field:"):
        assert path in message


def test_unknown_key_named_like_a_source_kind_keeps_its_name(tmp_path):
    raw = raw_minimal()
    raw["ingest"]["html"] = True
    assert "ingest.html: unknown key" in config_error(tmp_path, raw)


# ---------------------------------------------------------------------------------------------
# Overrides


def test_override_list_form(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL), ["ingest.workers=4", "ingest.max_record_mb=0.5",
                                                            "storage.prefix=run/x"])
    assert config.ingest.workers == 4
    assert config.ingest.max_record_mb == 0.5
    assert config.storage.prefix == "run/x"


def test_override_dict_form(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL), {"ingest.workers": 6, "ingest.html_content_types": ["text/html"]})
    assert config.ingest.workers == 6
    assert config.ingest.html_content_types == ["text/html"]


def test_override_creates_a_missing_section(tmp_path):
    raw = raw_minimal()
    del raw["ingest"]
    config = load_config(write_config(tmp_path, raw), ["ingest.workers=8"])
    assert config.ingest.workers == 8


def test_override_source_by_name_and_by_index(tmp_path):
    path = write_config(tmp_path, MINIMAL)
    by_name = load_config(path, ["sources.web.location=s3://bucket/crawl/"])
    assert by_name.source("web").location == "s3://bucket/crawl/"
    assert by_name.source("books").location == "s3://raw/books/"
    by_index = load_config(path, ["sources.1.text_field=content"])
    assert by_index.source("books").text_field == "content"
    assert by_index.source("web").location == "data/crawl"


def test_overrides_do_not_change_the_raw_config():
    raw = raw_minimal()
    result = apply_overrides(raw, ["ingest.workers=9", "sources.web.location=x"])
    assert result["ingest"]["workers"] == 9
    assert raw == raw_minimal()


def test_override_values_are_parsed_as_yaml():
    assert parse_overrides(["a=4", "b=true", "c=[1, 2]", "d=text", "e=", "f.g=null"]) == {
        "a": 4, "b": True, "c": [1, 2], "d": "text", "e": None, "f.g": None,
    }
    assert parse_overrides({"a.b": "4"}) == {"a.b": "4"}  # dict values are taken as they are
    assert parse_overrides(None) == {} and parse_overrides([]) == {}


@pytest.mark.parametrize("item", ["ingest.workers", "=4", " =4"])
def test_malformed_override_is_refused(item):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides([item])


def test_override_of_unknown_key_fails_with_its_path(tmp_path):
    message = config_error(tmp_path, raw_minimal(), ["ingest.wrokers=4"])
    assert "ingest.wrokers: unknown key" in message
    assert "workers" in message
    message = config_error(tmp_path, raw_minimal(), ["sources.web.bogus=1"])
    assert "sources.0.bogus: unknown key" in message


def test_override_of_unknown_source_name_or_index(tmp_path):
    message = config_error(tmp_path, raw_minimal(), ["sources.nope.location=x"])
    assert "sources.nope" in message and "'web'" in message and "'books'" in message
    message = config_error(tmp_path, raw_minimal(), ["sources.5.location=x"])
    assert "sources.5" in message and "out of range" in message


def test_override_with_an_invalid_value_fails_validation_with_its_path(tmp_path):
    message = config_error(tmp_path, raw_minimal(), ["ingest.workers=0"])
    assert "ingest.workers:" in message and "greater than or equal to 1" in message
    message = config_error(tmp_path, raw_minimal(), {"sources.books.content_type": "application/pdf"})
    assert "sources.1.content_type:" in message


def test_override_into_a_value_is_refused():
    with pytest.raises(ConfigError, match="storage.backend is a value"):
        apply_overrides(raw_minimal(), ["storage.backend.x=1"])


# ---------------------------------------------------------------------------------------------
# Bad files


def test_yaml_that_is_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write_config(tmp_path, "- a\n- b\n"))


def test_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write_config(tmp_path, "sources: [\n  name: {\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file") as info:
        load_config(tmp_path / "absent.yaml")
    assert "absent.yaml" in str(info.value)


def test_empty_file_reports_missing_sources(tmp_path):
    with pytest.raises(ConfigError, match="sources: required key is missing"):
        load_config(write_config(tmp_path, ""))


def test_validate_config_names_its_origin():
    with pytest.raises(ConfigError, match=r"^flow parameters is invalid"):
        validate_config({"sources": []}, origin="flow parameters")


# ---------------------------------------------------------------------------------------------
# versioned()


def test_versioned_drops_unversioned_fields():
    ingest = IngestConfig(workers=7, scratch_dir="/scratch", progress_every_seconds=1.0, shard_max_mb=8)
    versioned = ingest.versioned()
    assert "workers" not in versioned
    assert "scratch_dir" not in versioned and "progress_every_seconds" not in versioned
    assert versioned["shard_max_mb"] == 8 and versioned["max_record_mb"] == 10.0
    assert set(versioned) == set(IngestConfig.model_fields) - {"workers", "scratch_dir", "progress_every_seconds",
                                                              "writer_thread"}
    # Changing only unversioned fields leaves versioned() equal.
    assert IngestConfig(workers=1, shard_max_mb=8).versioned() == versioned


def test_versioned_source_drops_location_keeps_the_rest():
    source = JsonlSource(name="books", kind="jsonl", location="/data/books", text_field="body",
                         endpoint_url="http://elsewhere:9000")
    versioned = source.versioned()
    assert "location" not in versioned and "endpoint_url" not in versioned
    assert versioned["name"] == "books" and versioned["kind"] == "jsonl" and versioned["text_field"] == "body"
    moved = JsonlSource(name="books", kind="jsonl", location="s3://b/books/", text_field="body")
    assert moved.versioned() == versioned


def test_versioned_storage_keeps_everything():
    storage = StorageConfig(backend="local", local_root="/x")
    assert storage.versioned() == storage.model_dump(mode="json")


def test_config_file_round_trips_through_model_dump(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL))
    again = load_config(write_config(tmp_path, config.model_dump(mode="json")))
    assert again == config


def test_flow_style_yaml_loads(tmp_path):
    """A config written the way the docs show it (nested, indented) loads."""
    text = textwrap.dedent("""
        sources:
          - {name: site, kind: html, location: ./pages, base_url: "https://example.org/"}
        ingest: {unit_max_mb: 1}
    """)
    config = load_config(write_config(tmp_path, text))
    assert config.ingest.unit_max_mb == 1 and config.sources[0].kind == "html"


def test_dedup_and_classifier_settings_are_checked(tmp_path):
    raw = raw_minimal()
    raw["dedup"] = {"num_perm": 100}
    assert "dedup: bands x rows must equal num_perm: 14 x 8 != 100" in config_error(tmp_path, raw)
    raw = raw_minimal()
    raw["filter"] = {"rules": ["c4", "quality_classifier"]}
    assert "quality_classifier rule is listed but filter.classifier.model is not set" in config_error(tmp_path, raw)
    raw = raw_minimal()
    raw["dedup"] = {"scheme": "legacy"}
    assert "dedup.scheme" in config_error(tmp_path, raw)


# ---------------------------------------------------------------------------------------------
# Training phases after pretraining: sources' roles, cpt, ift, eval


def test_the_later_phases_need_their_data(tmp_path):
    raw = raw_minimal()
    raw["cpt"] = {"enabled": True}
    assert "cpt.enabled: continued pretraining needs at least one source with role: domain" in \
        config_error(tmp_path, raw)
    raw = raw_minimal()
    raw["ift"] = {"enabled": True}
    assert "ift.chat_files: instruction fine-tuning needs at least one chat JSONL" in config_error(tmp_path, raw)
    raw = raw_minimal()
    for source in raw["sources"]:
        source["role"] = "domain"
    assert "at least one source needs role: general" in config_error(tmp_path, raw)


def test_pretraining_weights_name_general_sources_only(tmp_path):
    raw = raw_minimal()
    raw["sources"].append({**raw["sources"][0], "name": "manuals", "role": "domain"})
    raw["mixture"] = {"weights": {raw["sources"][0]["name"]: 1.0, "manuals": 1.0}}
    assert "mixture.weights: ['manuals'] have role: domain" in config_error(tmp_path, raw)
    raw["mixture"] = {"weights": {raw["sources"][0]["name"]: 1.0}}
    raw["cpt"] = {"enabled": True, "replay_fraction": 1.0}
    assert "cpt.replay_fraction" in config_error(tmp_path, raw)
    raw["cpt"] = {"enabled": True, "replay_fraction": 0.1}
    config = load_config(write_config(tmp_path, raw))
    assert config.domain_sources() == ["manuals"] and config.cpt.train_settings(config.train).lr == config.cpt.lr


def test_bad_ift_and_eval_settings_name_the_key(tmp_path):
    raw = raw_minimal()
    raw["ift"] = {"method": "qlora"}
    assert "ift.method" in config_error(tmp_path, raw)
    raw["ift"] = {"lora": {"targets": ["not a module"]}}
    assert "ift.lora.targets" in config_error(tmp_path, raw)
    raw = raw_minimal()
    raw["eval"] = {"gate": {"general_tolerance": -0.1}}
    assert "eval.gate.general_tolerance" in config_error(tmp_path, raw)
    raw["eval"] = {"heldout": {"window": 128, "stride": 256}}
    assert "eval.heldout: stride (256) must not exceed window (128)" in config_error(tmp_path, raw)
    raw["eval"] = {"tasks": ["hellaswag"], "gate": {"tasks": [{"task": "arc_easy", "metric": "acc"}]}}
    assert "gate.tasks.0.task: 'arc_easy' is not evaluated" in config_error(tmp_path, raw)
    raw["eval"] = {"dtype": "int8"}
    assert "eval.dtype" in config_error(tmp_path, raw)


def test_the_refresh_schedule_is_validated(tmp_path):
    raw = raw_minimal()
    raw["refresh"] = {"cron": "61 * * * *"}
    assert "refresh: not a valid cron schedule ('61 * * * *'" in config_error(tmp_path, raw)
    raw["refresh"] = {"timezone": "Mars/Olympus"}
    assert "Invalid timezone" in config_error(tmp_path, raw)


def test_the_refresh_minimum_and_the_alerts_are_validated(tmp_path):
    raw = raw_minimal()
    raw["refresh"] = {"min_new_tokens": -1}
    assert "refresh.min_new_tokens" in config_error(tmp_path, raw)
    raw["refresh"] = {}
    raw["alerts"] = {"notify": "https://hooks.example/secret"}
    assert "alerts.notify" in config_error(tmp_path, raw) and "<block type slug>/<block name>" in config_error(tmp_path, raw)
    raw["alerts"] = {"late_refresh": {"within_seconds": 5}}
    assert "alerts.late_refresh.within_seconds" in config_error(tmp_path, raw)
    raw["alerts"] = {"notify": "slack-webhook/data-eng", "failed_run": {"enabled": False}}
    config = load_config(write_config(tmp_path, raw))
    assert config.alerts.notify == "slack-webhook/data-eng" and not config.alerts.failed_run.enabled
    assert config.refresh.min_new_tokens == 100_000 and config.alerts.late_refresh.within_seconds == 3600


def test_multi_node_settings_name_the_key_and_one_route(tmp_path):
    raw = raw_minimal()
    raw["train"] = {"nodes": 2, "processes": 16, "rdzv_endpoint": "train-0.train:29400", "work_dir": "/shared/train"}
    train = load_config(write_config(tmp_path, raw)).train
    assert (train.nodes, train.processes // train.nodes) == (2, 8)
    raw["train"] = {"nodes": 2, "processes": 3, "launcher": "deepspeed"}
    message = config_error(tmp_path, raw)
    for expected in ("train.rdzv_endpoint (host:port of node 0) is required", "train.launcher must be auto or torchrun",
                     "train.processes (ranks in all, 3) must be a multiple of train.nodes (2)",
                     "train.work_dir is required with train.nodes > 1"):
        assert expected in message, message
    (tmp_path / "hosts").write_text("a slots=1\nb slots=1\n")
    raw["train"] = {"nodes": 2, "processes": 2, "hostfile": str(tmp_path / "hosts"), "rdzv_endpoint": "a:29400",
                    "work_dir": "/shared"}
    assert "train.hostfile and train.nodes > 1 are two routes" in config_error(tmp_path, raw)
    raw["train"] = {"rdzv_endpoint": "a:29400"}
    assert "train.rdzv_endpoint is set but train.nodes is 1" in config_error(tmp_path, raw)
    raw["train"] = {"nodes": 2, "rdzv_endpoint": "node-0", "work_dir": "/shared", "processes": 2}
    assert "train.rdzv_endpoint" in config_error(tmp_path, raw) and "host:port" in config_error(tmp_path, raw)
    raw["train"] = {"nodes": 0}
    assert "train.nodes" in config_error(tmp_path, raw)
