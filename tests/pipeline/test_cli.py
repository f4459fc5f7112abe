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


# ---------------------------------------------------------------------------------------------
# A user's mistakes: one line on stderr, exit 2, no traceback (--debug shows it)


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err + captured.out
    return lines[0]


def test_validate_checks_that_every_source_location_can_be_read(built, capsys, tmp_path):
    config_path, _ = built
    assert main(["validate", "-c", str(config_path), "--set", "sources.docs.location=missing/"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: sources.docs.location: missing/ does not exist") and str(tmp_path) in line
    assert main(["validate", "-c", str(config_path)]) == 0
    assert "every location readable" in capsys.readouterr().out


def test_validate_lists_an_s3_prefix(built, capsys, seaweed, s3_store):
    config_path, _ = built
    s3_store.client.put_object(Bucket=s3_store.bucket, Key="crawl/a.warc.gz", Body=b"x")
    endpoint = f"storage.endpoint_url={seaweed.endpoint_url}"
    for location, problem in ((f"s3://{s3_store.bucket}/crawl/", None),
                              (f"s3://{s3_store.bucket}/empty/", "no objects under this prefix"),
                              ("s3://no-such-bucket-here/x/", "the bucket 'no-such-bucket-here' does not exist")):
        status = main(["validate", "-c", str(config_path), "--set", endpoint, "--set", f"sources.docs.location={location}"])
        if problem is None:
            assert status == 0, capsys.readouterr()
            capsys.readouterr()
        else:
            assert status == 2 and one_error_line(capsys) == f"error: sources.docs.location: {location}: {problem}  " \
                                                                "(--debug shows the traceback)"


def test_run_stops_before_any_work_on_an_unknown_stage_or_a_missing_input(built, capsys):
    config_path, _ = built
    assert main(["run", "-c", str(config_path), "--only", "ingest/nope"]) == 2
    assert "parameter only: unknown stage(s) ['ingest/nope']" in one_error_line(capsys)
    assert main(["run", "-c", str(config_path), "--set", "sources.docs.location=gone", "--only", "ingest"]) == 2
    assert one_error_line(capsys).startswith("error: sources.docs.location: gone does not exist")
    with pytest.raises(Exception, match="does not exist"):
        main(["--debug", "run", "-c", str(config_path), "--set", "sources.docs.location=gone", "--only", "ingest"])


def test_missing_s3_credentials_are_one_line(built, seaweed):
    """Forgetting `. .stack/env`: boto3 finds no credentials."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    config_path, _ = built
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "-c", str(config_path), "--only", "ingest",
                           "--set", "storage.backend=s3", "--set", f"storage.endpoint_url={seaweed.endpoint_url}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile or role); for the "
        "local stack run `. .stack/env` first  (--debug shows the traceback)"]


def test_a_data_only_config_needs_no_edits_of_the_model_phases(tmp_path):
    """A copy of pipeline.yaml with other sources: mixture.weights and cpt name sources it no longer has, which
    `stop_after` (the data stages only) leaves unchecked."""
    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    raw["sources"] = [{"name": "crawl", "kind": "warc", "location": str(REPO / "data" / "sample" / "web")}]
    raw["filter"]["language_thresholds"] = str(REPO / "data" / "language_thresholds")  # relative to the copy
    copy = tmp_path / "pipeline.yaml"
    copy.write_text(yaml.safe_dump(raw))
    with pytest.raises(Exception, match=r"mixture.weights: no source named \['pages', 'web'\].*set stop_after"):
        load_config(copy)
    for last in ("filter", "tokens"):
        config = load_config(copy, [f"stop_after={last}"])
        assert config.runs("dedup") and not config.runs("mixture")
    raw["stop_after"] = "tokens"
    copy.write_text(yaml.safe_dump(raw))
    assert main(["validate", "-c", str(copy)]) == 0


def test_validate_checks_the_checkpoint_cpt_starts_from(built, tmp_path, capsys):
    """`validate --set cpt.init=DIR` inspects the checkpoint before any work; a bad one is one line naming the key."""
    from tests.checkpoints import make_checkpoint

    config_path, _ = built
    raw = yaml.safe_load(config_path.read_text())
    raw["sources"][0]["role"] = "domain"
    raw["sources"].append({"name": "web", "kind": "jsonl", "location": "in"})
    raw["cpt"] = {"enabled": True}
    raw["tokenize"] = {"seq_len": 256}
    config_path.write_text(yaml.safe_dump(raw))
    make_checkpoint("qwen2", tmp_path / "checkpoints" / "Qwen2-tiny")
    assert main(["validate", "-c", str(config_path), "--set", "cpt.init=checkpoints/Qwen2-tiny"]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["validate", "-c", str(config_path), "--set", "cpt.init=checkpoints/Qwen2-tiny",
                 "--set", "tokenize.seq_len=1024"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: cpt.init: ") and "shorter than tokenize.seq_len 1024" in error
    assert len(error.splitlines()) == 1


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
    assert "└── file a.jsonl" in text and f"sha256 {sha256_file(tmp_path / 'in' / 'a.jsonl')}" in text

    with pytest.raises(SystemExit, match="'nothing' is neither a ref nor an artifact"):
        main(["lineage", "nothing", "-c", str(config_path)])


def test_ablate_checks_the_whole_recipe_file_before_any_work(built, capsys, tmp_path):
    """A recipe changing a fixed key, a missing source of a recipe's config: one line, exit 2, no flow run (the
    ablation flow would start a Prefect server; these return before)."""
    config_path, _ = built
    recipes = {"base_config": str(config_path), "base_overrides": {"tokenize.seq_len": 64}, "seeds": [0, 1],
               "proxy_model": {"preset": "llama-tiny"},
               "budget_tokens": 4096, "recipes": [{"name": "base"}, {"name": "big-vocab",
                                                                       "overrides": {"tokenizer.vocab_size": 512}}]}
    path = tmp_path / "recipes.yaml"
    path.write_text(yaml.safe_dump(recipes))
    assert main(["ablate", str(path)]) == 2
    line = one_error_line(capsys)
    assert "recipe 'big-vocab': tokenizer.vocab_size is fixed by the ablation" in line
    recipes["recipes"][1] = {"name": "no-dedup", "overrides": {"dedup.exact": False}}
    path.write_text(yaml.safe_dump(recipes))
    assert main(["ablate", str(path), "--set", "sources.docs.location=gone"]) == 2
    assert one_error_line(capsys).startswith("error: sources.docs.location: gone does not exist")
    assert main(["ablate", str(path), "--set", "train.lr=0.1"]) == 2
    assert "train.lr is set by the ablation" in one_error_line(capsys)
