"""Artifacts (pipeline/artifacts.py) and run records / refs (pipeline/runs.py), on both backends."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from pipeline.artifacts import (
    MANIFEST,
    MANIFEST_SCHEMA,
    VERSION_RE,
    AlreadyCommitted,
    ArtifactWriter,
    IntegrityError,
    StageSpec,
    artifact_prefix,
    fetch_verified,
    files_with_role,
    list_artifacts,
    list_versions,
    read_manifest,
)
from pipeline.runs import RunRecorder, get_ref, list_runs, read_run, ref_history, set_ref
from pipeline.storage import join_key


def make_spec(**changes) -> StageSpec:
    base = dict(
        stage="ingest",
        artifact="ingest/web",
        code_version="1",
        config={"source": {"name": "web", "kind": "warc"}, "ingest": {"shard_max_mb": 64, "types": ["a", "b"]}},
        inputs={"files": 2, "bytes": 100, "fingerprint": "abc"},
        rebuild=None,
    )
    base.update(changes)
    return StageSpec(**base)


def write_local(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------
# StageSpec versions


def test_version_is_deterministic_and_well_formed():
    first, second = make_spec(), make_spec()
    assert first.version == second.version
    assert VERSION_RE.match(first.version)
    # Key order in the config does not matter (canonical JSON).
    reordered = make_spec(config={"ingest": {"types": ["a", "b"], "shard_max_mb": 64},
                                  "source": {"kind": "warc", "name": "web"}})
    assert reordered.version == first.version
    assert first.prefix == f"artifacts/ingest/web/{first.version}"
    assert artifact_prefix("ingest/web", first.version) == first.prefix


def test_version_is_a_known_hash_of_the_identity():
    """Pinned: a change of the hashing scheme would silently orphan every existing artifact."""
    spec = StageSpec("s", "s", "1", {"a": 1}, {"b": [1, 2]})
    identity = b'{"artifact":"s","code_version":"1","config":{"a":1},"inputs":{"b":[1,2]},"stage":"s"}'
    assert spec.version == hashlib.sha256(identity).hexdigest()[:20]


@pytest.mark.parametrize(
    "change",
    [
        {"stage": "ingest2"},
        {"artifact": "ingest/books"},
        {"code_version": "2"},
        {"config": {"source": {"name": "web", "kind": "warc"}, "ingest": {"shard_max_mb": 65, "types": ["a", "b"]}}},
        {"config": {"source": {"name": "web", "kind": "warc"}, "ingest": {"shard_max_mb": 64, "types": ["b", "a"]}}},
        {"inputs": {"files": 2, "bytes": 100, "fingerprint": "abd"}},
        {"inputs": {"files": 3, "bytes": 100, "fingerprint": "abc"}},
        {"rebuild": "run:123"},
    ],
    ids=["stage", "artifact", "code_version", "config-value", "config-list-order", "inputs-fingerprint",
         "inputs-files", "rebuild"],
)
def test_any_change_of_identity_changes_the_version(change):
    assert make_spec(**change).version != make_spec().version


def test_different_rebuild_tokens_give_different_versions():
    assert make_spec(rebuild="run:a").version != make_spec(rebuild="run:b").version


# ---------------------------------------------------------------------------------------------
# Writing and committing


def test_write_then_commit_makes_the_artifact_visible(store, tmp_path):
    spec = make_spec()
    writer = ArtifactWriter(store, spec)
    data = write_local(tmp_path, "d.parquet", b"document shard bytes" * 10)
    quarantine = write_local(tmp_path, "q.parquet", b"quarantined")
    files = [
        writer.put_file("quarantine/u00000-0000.parquet", quarantine, "quarantine", rows=1),
        writer.put_file("data/u00000-0000.parquet", data, "documents", rows=7),
    ]
    # Uploaded but uncommitted: the version does not exist for readers.
    assert store.exists(join_key(spec.prefix, "data/u00000-0000.parquet"))
    assert read_manifest(store, spec.artifact, spec.version) is None
    assert list_versions(store, spec.artifact) == []

    counts = {"documents": 7, "quarantined": {"invalid_json": 1}}
    manifest = writer.commit(files, counts, summary={"units": 1})

    stored = read_manifest(store, spec.artifact, spec.version)
    assert stored == manifest
    assert stored["schema"] == MANIFEST_SCHEMA
    assert stored["version"] == spec.version
    assert (stored["stage"], stored["artifact"], stored["code_version"]) == ("ingest", "ingest/web", "1")
    assert stored["config"] == spec.config and stored["inputs"] == spec.inputs
    assert stored["uri"] == store.uri(spec.prefix)
    assert stored["counts"] == counts
    assert stored["summary"]["units"] == 1 and stored["summary"]["cpu_s"] >= 0  # the CPU its build spent
    assert "committed_at" in stored["build"]
    # Files sorted by path, each with size, sha256, role and extras.
    assert [f["path"] for f in stored["files"]] == ["data/u00000-0000.parquet", "quarantine/u00000-0000.parquet"]
    by_path = {f["path"]: f for f in stored["files"]}
    entry = by_path["data/u00000-0000.parquet"]
    assert entry["bytes"] == data.stat().st_size
    assert entry["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert entry["role"] == "documents" and entry["rows"] == 7
    assert by_path["quarantine/u00000-0000.parquet"]["role"] == "quarantine"
    assert [f["path"] for f in files_with_role(stored, "quarantine")] == ["quarantine/u00000-0000.parquet"]
    # The manifest is the key MANIFEST under the prefix, valid JSON.
    assert json.loads(store.get_bytes(join_key(spec.prefix, MANIFEST)))["version"] == spec.version
    assert [m["version"] for m in list_versions(store, spec.artifact)] == [spec.version]


def test_writer_on_a_committed_version_raises(store):
    spec = make_spec()
    ArtifactWriter(store, spec).commit([], {"documents": 0})
    with pytest.raises(AlreadyCommitted):
        ArtifactWriter(store, spec)
    # Another version of the same artifact is still writable.
    ArtifactWriter(store, make_spec(code_version="2"))


def test_second_commit_of_same_version_keeps_the_first_manifest(store):
    spec = make_spec()
    first = ArtifactWriter(store, spec)
    second = ArtifactWriter(store, spec)  # created before anything is committed
    committed = first.commit([], {"documents": 1}, summary={"writer": "first"})
    returned = second.commit([], {"documents": 2}, summary={"writer": "second"})
    assert returned == committed
    assert returned["counts"] == {"documents": 1}
    stored = read_manifest(store, spec.artifact, spec.version)
    assert stored["summary"]["writer"] == "first" and stored["counts"] == {"documents": 1}
    assert len(list_versions(store, spec.artifact)) == 1


def test_list_versions_ignores_uncommitted_and_foreign_prefixes(store, tmp_path):
    committed = make_spec()
    ArtifactWriter(store, committed).commit([], {})
    uncommitted = make_spec(code_version="9")
    ArtifactWriter(store, uncommitted).put_file("data/x", write_local(tmp_path, "x", b"x"), "documents")
    store.put_bytes(join_key("artifacts", "ingest/web", "not-a-version", "manifest.json"), b"{}")
    assert [m["version"] for m in list_versions(store, "ingest/web")] == [committed.version]


def test_finished_unit_round_trip(store, tmp_path):
    spec = make_spec()
    writer = ArtifactWriter(store, spec)
    assert writer.finished_unit("u00000") is None
    entry = writer.put_file("data/u00000-0000.parquet", write_local(tmp_path, "a", b"a" * 100), "documents", rows=3)
    record = {"unit": "u00000", "files": [entry], "counts": {"documents": 3}}
    writer.finish_unit("u00000", record)
    assert writer.finished_unit("u00000") == record
    # A new writer (the next attempt) sees it too.
    assert ArtifactWriter(store, spec).finished_unit("u00000") == record
    assert writer.finished_unit("u00001") is None


def test_finished_unit_is_none_when_a_file_is_missing(store, tmp_path):
    writer = ArtifactWriter(store, make_spec())
    entry = writer.put_file("data/u00000-0000.parquet", write_local(tmp_path, "a", b"a" * 100), "documents")
    writer.finish_unit("u00000", {"unit": "u00000", "files": [entry], "counts": {}})
    store.delete(join_key(writer.prefix, "data/u00000-0000.parquet"))
    assert writer.finished_unit("u00000") is None


def test_finished_unit_is_none_when_a_file_has_the_wrong_size(store, tmp_path):
    writer = ArtifactWriter(store, make_spec())
    entry = writer.put_file("data/u00000-0000.parquet", write_local(tmp_path, "a", b"a" * 100), "documents")
    writer.finish_unit("u00000", {"unit": "u00000", "files": [entry], "counts": {}})
    store.put_bytes(join_key(writer.prefix, "data/u00000-0000.parquet"), b"a" * 60)  # a half-written upload
    assert writer.finished_unit("u00000") is None


def test_fetch_verified_returns_the_file(store, tmp_path):
    spec = make_spec()
    writer = ArtifactWriter(store, spec)
    payload = b"verified payload " * 50
    writer_files = [writer.put_file("data/u00000-0000.parquet", write_local(tmp_path, "p", payload), "documents")]
    manifest = writer.commit(writer_files, {})
    dest_dir = tmp_path / "fetched"
    dest_dir.mkdir()
    path = fetch_verified(store, manifest, manifest["files"][0], dest_dir)
    assert path.parent == dest_dir
    assert path.read_bytes() == payload


@pytest.mark.parametrize("tampered", [b"VERIFIED payload " * 50, b"short"], ids=["same-size", "other-size"])
def test_fetch_verified_detects_tampering(store, tmp_path, tampered):
    spec = make_spec()
    writer = ArtifactWriter(store, spec)
    payload = b"verified payload " * 50
    files = [writer.put_file("data/u00000-0000.parquet", write_local(tmp_path, "p", payload), "documents")]
    manifest = writer.commit(files, {})
    store.put_bytes(join_key(spec.prefix, "data/u00000-0000.parquet"), tampered)
    dest_dir = tmp_path / "fetched"
    dest_dir.mkdir()
    with pytest.raises(IntegrityError, match="data/u00000-0000.parquet"):
        fetch_verified(store, manifest, manifest["files"][0], dest_dir)
    assert list(dest_dir.iterdir()) == []  # the bad copy is not left behind


def test_list_artifacts_names_stages_and_partitions(store):
    assert list_artifacts(store) == []
    for artifact, stage in [("ingest/web", "ingest"), ("ingest/books", "ingest"), ("tokenize", "tokenize")]:
        ArtifactWriter(store, make_spec(stage=stage, artifact=artifact)).commit([], {})
    assert sorted(list_artifacts(store)) == ["ingest/books", "ingest/web", "tokenize"]


# ---------------------------------------------------------------------------------------------
# Run records


def test_run_recorder_writes_the_run_record(store):
    recorder = RunRecorder(store, "run-1", flow="pretrain-pipeline", config={"ingest": {"workers": 2}},
                           parameters={"only": None})
    assert store.exists("runs/run-1.json")
    record = read_run(store, "run-1")
    assert record["run_id"] == "run-1" and record["attempt"] == 1 and record["status"] == "running"
    assert record["config"] == {"ingest": {"workers": 2}} and record["parameters"] == {"only": None}
    recorder.stage("ingest/web", {"version": "v1", "status": "built"})
    recorder.stage_failed("tokenize", "boom")
    final = recorder.finish("failed")
    stored = read_run(store, "run-1")
    assert stored == json.loads(json.dumps(final))
    assert stored["status"] == "failed" and stored["finished_at"]
    assert stored["stages"]["ingest/web"]["version"] == "v1"
    assert stored["stages"]["tokenize"] == {**stored["stages"]["tokenize"], "status": "failed", "error": "boom"}
    assert read_run(store, "run-unknown") is None


def test_run_recorder_retry_increments_attempt_and_keeps_stages(store):
    first = RunRecorder(store, "run-2", flow="f", config={}, parameters={})
    first.stage("ingest/web", {"version": "v1", "status": "built"})
    first.finish("failed")
    started = read_run(store, "run-2")["started_at"]

    second = RunRecorder(store, "run-2", flow="f", config={}, parameters={})
    record = read_run(store, "run-2")
    assert record["attempt"] == 2
    assert record["status"] == "running" and record["finished_at"] is None
    assert record["started_at"] == started
    assert record["stages"]["ingest/web"]["version"] == "v1"
    assert record["stages"]["ingest/web"]["attempt"] == 1
    second.stage("tokenize", {"version": "t1", "status": "built"})
    record = read_run(store, "run-2")
    assert set(record["stages"]) == {"ingest/web", "tokenize"}
    assert record["stages"]["tokenize"]["attempt"] == 2
    assert RunRecorder(store, "run-2", flow="f", config={}, parameters={}).record["attempt"] == 3
    assert [run["run_id"] for run in list_runs(store)] == ["run-2"]


# ---------------------------------------------------------------------------------------------
# Refs


def test_set_get_ref_and_history(store):
    assert get_ref(store, "promoted") is None
    assert ref_history(store, "promoted") == []
    targets = [{"artifact": "train", "version": f"v{i}"} for i in range(1, 4)]
    for target in targets:
        body = set_ref(store, "promoted", target)
        assert body["name"] == "promoted" and body["version"] == target["version"]
    current = get_ref(store, "promoted")
    assert current["version"] == "v3" and current["artifact"] == "train" and current["updated_at"]
    history = ref_history(store, "promoted")
    assert [entry["version"] for entry in history] == ["v3", "v2", "v1"]
    assert all(entry["version_id"] for entry in history)
    assert len({entry["version_id"] for entry in history}) == 3
    # Refs are independent of each other.
    set_ref(store, "latest-refresh", {"artifact": "ingest/web", "version": "x"})
    assert get_ref(store, "promoted")["version"] == "v3"
    assert [e["version"] for e in ref_history(store, "latest-refresh")] == ["x"]


def test_stage_spec_is_frozen():
    spec = make_spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.stage = "other"  # type: ignore[misc]
