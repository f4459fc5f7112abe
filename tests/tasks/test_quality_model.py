"""`quality-model/<name>`: trained from a document artifact and local files, committed with its metrics,
found again by version, and resolved for the filter by ref, name@version or path; and the CLI command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import tasks.quality_model as quality_model
from pipeline.artifacts import files_with_role, list_versions, sha256_file
from pipeline.cli import main
from pipeline.config import JsonlSource, QualityModelConfig
from pipeline.runs import get_ref, ref_history
from pipeline.storage import LocalStore
from tasks.quality_model import resolve_classifier_model, train_quality_model
from tests.corpus.test_quality_classifier import curated_paragraphs, spam_documents
from tests.raw_inputs import write_jsonl
from tests.tasks import chain

SETTINGS = QualityModelConfig(dim=8, epoch=10, holdout_fraction=0.2)


def quiet(_message: str) -> None:
    pass


@pytest.fixture
def examples(tmp_path) -> Path:
    """Curated paragraphs in a JSONL file and spam split over a JSONL and a .txt file, under tmp_path."""
    curated = list(curated_paragraphs())[:200]
    spam = spam_documents(200)
    write_jsonl(tmp_path / "curated" / "part-0.jsonl", [{"text": text} for text in curated])
    write_jsonl(tmp_path / "crawl.jsonl.zst", [{"text": text} for text in spam[:120]])
    (tmp_path / "crawl.txt").write_text("".join(text + "\n" for text in spam[120:]))
    return tmp_path


def curated_artifact(store, examples: Path) -> dict:
    """`clean/curated`: the curated paragraphs as a document artifact (ingest has no text column yet)."""
    source = JsonlSource(name="curated", kind="jsonl", location=str(examples / "curated"))
    return chain.clean(store, "curated", chain.ingest(store, source))


def test_train_commits_model_metrics_and_ref_then_finds_it_again(store, examples, tmp_path, monkeypatch):
    curated = curated_artifact(store, examples)
    negative = ["crawl.jsonl.zst", "crawl.txt"]
    manifest = train_quality_model(store, "default", ["clean/curated"], negative, SETTINGS, examples, quiet)

    assert manifest["artifact"] == "quality-model/default" and manifest["stage"] == "quality-model"
    assert manifest["inputs"] == {
        "positive": [{"artifact": "clean/curated", "version": curated["version"]}],
        "negative": [{"file": "crawl.jsonl.zst", "sha256": sha256_file(examples / "crawl.jsonl.zst")},
                     {"file": "crawl.txt", "sha256": sha256_file(examples / "crawl.txt")}],
    }
    assert {entry["path"]: entry["role"] for entry in manifest["files"]} == {"model.bin": "model",
                                                                            "metrics.json": "metrics"}
    kept_by_clean = curated["counts"]["documents"]  # clean removes paragraphs under 200 characters
    assert kept_by_clean > 100 and manifest["counts"] == {"positive": kept_by_clean, "negative": 200}
    assert manifest["summary"]["accuracy"] >= 0.9
    assert get_ref(store, "quality-model/default")["version"] == manifest["version"]
    model_sha256 = next(files_with_role(manifest, "model"))["sha256"]
    assert resolve_classifier_model(store, manifest["version"], tmp_path, tmp_path)[1] == model_sha256

    def no_training(*_args, **_kwargs):
        raise AssertionError("the committed version was trained again")

    monkeypatch.setattr(quality_model, "train_classifier", no_training)
    pinned = f"clean/curated@{curated['version']}"
    again = train_quality_model(store, "default", [pinned], negative, SETTINGS, examples, quiet)
    assert again["version"] == manifest["version"] and again["uri"] == manifest["uri"]
    assert [m["version"] for m in list_versions(store, "quality-model/default")] == [manifest["version"]]
    if isinstance(store, LocalStore):  # the ref is not rewritten when it already points there
        assert len(ref_history(store, "quality-model/default")) == 1


def test_resolve_model_by_ref_name_at_version_and_path(store, examples, tmp_path):
    curated_artifact(store, examples)
    manifest = train_quality_model(store, "web", ["clean/curated"], ["crawl.jsonl.zst", "crawl.txt"], SETTINGS,
                                   examples, quiet)
    model_entry = next(files_with_role(manifest, "model"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    for reference in ("quality-model/web", f"quality-model/web@{manifest['version']}"):
        path, digest = resolve_classifier_model(store, reference, tmp_path, scratch)
        assert digest == model_entry["sha256"] == sha256_file(path)
    local = path.rename(tmp_path / "local.bin")
    assert resolve_classifier_model(store, "local.bin", tmp_path, scratch) == (local, model_entry["sha256"])

    for reference, message in [
        ("quality-model/nope", "'quality-model/nope': no ref of that name"),
        ("quality-model/web@0123456789abcdef0123", "quality-model/web@0123456789abcdef0123 is not committed"),
        ("quality-model/web@latest", "quality-model/web@latest is not committed"),
        ("missing.ftz", "'missing.ftz': no such file"),
    ]:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            resolve_classifier_model(store, reference, tmp_path, scratch)


def test_bad_names_and_example_sources_fail_clearly(local_store, examples):
    with pytest.raises(ValueError, match="quality model name 'a/b'"):
        train_quality_model(local_store, "a/b", ["crawl.txt"], ["crawl.txt"], SETTINGS, examples, quiet)
    source = JsonlSource(name="curated", kind="jsonl", location=str(examples / "curated"))
    chain.ingest(local_store, source)
    with pytest.raises(ValueError, match="'ingest/curated': .* has no text column"):
        train_quality_model(local_store, "default", ["ingest/curated"], ["crawl.txt"], SETTINGS, examples, quiet)
    with pytest.raises(ValueError, match="'filter/absent': no committed artifact filter/absent"):
        train_quality_model(local_store, "default", ["filter/absent"], ["crawl.txt"], SETTINGS, examples, quiet)
    with pytest.raises(FileNotFoundError, match="'nowhere.jsonl': no such file"):
        train_quality_model(local_store, "default", ["nowhere.jsonl"], ["crawl.txt"], SETTINGS, examples, quiet)


def test_cli_trains_and_prints_artifact_ref_and_metrics(examples, capsys, monkeypatch):
    config_path = examples / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump({
        "storage": {"backend": "local", "local_root": str(examples / "store"), "prefix": "p"},
        "sources": [{"name": "docs", "kind": "jsonl", "location": "curated"}],
        "quality_model": {"dim": 8, "epoch": 10},
    }))
    monkeypatch.chdir(examples)
    args = ["quality-model", "train", "-c", str(config_path), "--positive", "curated/part-0.jsonl",
            "--negative", "crawl.jsonl.zst", "--negative", "crawl.txt", "--name", "docs",
            "--set", "quality_model.seed=1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    store = LocalStore(examples / "store", "p")
    [manifest] = list_versions(store, "quality-model/docs")
    assert manifest["config"]["seed"] == 1
    assert f"artifact: {manifest['uri']}" in out
    assert f"quality-model/docs -> {manifest['version']}" in out
    metrics = json.loads(out.split("metrics:", 1)[1])
    assert metrics == manifest["summary"] and metrics["documents"]["hq"]["available"] == 200

    with pytest.raises(SystemExit, match="error: training examples 'absent.txt': no such file"):
        main(["quality-model", "train", "-c", str(config_path), "--positive", "absent.txt", "--negative", "crawl.txt"])
