"""The `pretrain-pipeline` CLI against a local-directory store holding a real ingest artifact."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.runs import RunRecorder
from pipeline.sources import list_inputs
from pipeline.storage import open_store
from tasks.ingest import ingest_spec, run_ingest
from tests.raw_inputs import write_jsonl


@pytest.fixture
def built(tmp_path):
    """A config on the local backend, one committed ingest artifact with a quarantine, a run record."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "one"}, "{broken", {"text": "two"}])
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump({
        "storage": {"backend": "local", "local_root": str(tmp_path / "store"), "prefix": "p"},
        "sources": [{"name": "docs", "kind": "jsonl", "location": "in"}],
        "ingest": {"workers": 1},
    }))
    config = load_config(config_path)
    store = open_store(config.storage)
    source = config.sources[0]
    files = list_inputs(source, config.storage, base_dir=tmp_path)
    spec = ingest_spec(source, files, config.ingest)
    manifest = run_ingest(source, config.ingest, config.storage, store, spec, files, progress=lambda _m: None)
    recorder = RunRecorder(store, "run-1", flow="pretrain-pipeline", config=config.model_dump(mode="json"),
                           parameters={})
    recorder.stage("ingest/docs", {"status": "executed", "version": spec.version, "uri": manifest["uri"]})
    recorder.finish("completed")
    return config_path, manifest


def test_artifacts_list_show_and_quarantine(built, capsys):
    config_path, manifest = built
    assert main(["artifacts", "list", "-c", str(config_path)]) == 0
    listed = capsys.readouterr().out
    assert "ingest/docs" in listed and manifest["version"] in listed and "documents=2" in listed

    assert main(["artifacts", "show", "ingest/docs", "-c", str(config_path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == manifest["version"] and shown["counts"]["quarantined"] == {"invalid_json": 1}

    assert main(["artifacts", "quarantine", "ingest/docs", manifest["version"], "-c", str(config_path)]) == 0
    quarantined = capsys.readouterr().out
    assert "invalid_json" in quarantined and "a.jsonl#line=2" in quarantined


def test_runs_show_prints_the_lineage(built, capsys):
    config_path, manifest = built
    assert main(["runs", "list", "-c", str(config_path)]) == 0
    assert "run-1" in capsys.readouterr().out
    assert main(["runs", "show", "run-1", "-c", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert "ingest/docs" in out and manifest["version"] in out and '"fingerprint"' in out


def test_refs_set_show_and_history(built, capsys):
    config_path, manifest = built
    for _ in range(2):
        assert main(["refs", "set", "current", "ingest/docs", "latest", "-c", str(config_path)]) == 0
    capsys.readouterr()
    assert main(["refs", "show", "current", "-c", str(config_path)]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == manifest["version"]
    assert main(["refs", "history", "current", "-c", str(config_path)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_invalid_override_exits_2_naming_the_key(built, capsys):
    config_path, _ = built
    assert main(["validate", "-c", str(config_path), "--set", "ingest.shard_max_mb=-1"]) == 2
    assert "ingest.shard_max_mb" in capsys.readouterr().err
    assert main(["validate", "-c", str(config_path)]) == 0


def test_removal_rows_list_every_reason_in_dag_order():
    from pipeline.cli import removal_rows

    stages = {
        "filter/web": {"counts": {"removed": {"gopher_short_doc": 3, "eval_overlap": 5}}},
        "dedup": {"counts": {"removed": {"near_duplicate": 7}}},
        "ingest/web": {"counts": {"quarantined": {"invalid_json": 1}}},
        "langid/web": {"counts": {"removed": {}}},
    }
    assert removal_rows(stages) == [("ingest/web", "invalid_json", 1), ("dedup", "near_duplicate", 7),
                                    ("filter/web", "eval_overlap", 5), ("filter/web", "gopher_short_doc", 3)]


def test_mixture_table_reads_like_gpt3s():
    from pipeline.cli import mixture_table

    counts = {"sequences": 30, "tokens": 7680, "shortfall_sequences": 0, "sources": {
        "web": {"tokens_available": 5000, "weight": 0.6, "sequences": 20, "tokens": 5120, "epochs": 1.02},
        "docs": {"tokens_available": 1000, "weight": 0.4, "sequences": 10, "tokens": 2560, "epochs": 2.5,
                 "capped": True}}}
    lines = mixture_table(counts)
    assert lines[0].split() == ["source", "tokens", "available", "weight", "sequences", "tokens", "sampled", "epochs"]
    assert lines[1].split() == ["web", "5,000", "60.0%", "20", "5,120", "1.02"]
    assert lines[2].split()[-1] == "(capped)" and lines[3].split() == ["total", "30", "7,680"]


def test_lineage_of_an_ingest_artifact_reaches_its_files(built, capsys, tmp_path):
    from pipeline.artifacts import sha256_file

    config_path, manifest = built
    assert main(["lineage", "ingest/docs", "--json", "-c", str(config_path)]) == 0
    tree = json.loads(capsys.readouterr().out)
    node = tree["nodes"][tree["root"]]
    assert tree["root"] == f"ingest/docs@{manifest['version']}"
    assert node["flow_run_id"] == "run-1"  # built outside a flow: the run record that executed it
    assert node["files"] == [{"path": "a.jsonl", "bytes": (tmp_path / "in" / "a.jsonl").stat().st_size,
                              "fingerprint": sha256_file(tmp_path / "in" / "a.jsonl")}]
    assert node["code_version"] == manifest["code_version"] and len(node["config_sha256"]) == 64

    assert main(["lineage", f"ingest/docs@{manifest['version']}", "-c", str(config_path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"ingest/docs@{manifest['version']}  stage ingest code {manifest['code_version']}")
    assert f"└── file a.jsonl" in text and f"sha256 {sha256_file(tmp_path / 'in' / 'a.jsonl')}" in text

    with pytest.raises(SystemExit, match="'nothing' is neither a ref nor an artifact"):
        main(["lineage", "nothing", "-c", str(config_path)])
