"""Fault injection on the data stages, against real SeaweedFS servers:

- SIGKILL in the middle of each data stage, then a rerun: it resumes, and the committed artifact equals
  (version, files, bytes, counts) the one of an uninterrupted run; nothing was visible as committed before;
- the S3 server stopped and restarted mid-stage: retries with backoff carry the stage through; an outage
  longer than the retry budget fails the stage clearly, commits nothing, and the rerun resumes;
- a corrupted object (checksum mismatch) is detected on read and never used;
- two concurrent runs of the same stage: one committed manifest, identical bytes, nothing corrupted.

The stages run through their cores as the flow's tasks call them (tests/reliability/stages.py), in a
subprocess where a process has to be killed. The reference is one uninterrupted build of every data
stage, made once for the module; each test copies the inputs of the stage it disturbs into a fresh prefix.
"""

from __future__ import annotations

import logging
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from pipeline.artifacts import (
    MANIFEST, ArtifactWriter, IntegrityError, StageSpec, artifact_prefix, fetch_verified, files_with_role,
    list_versions, read_manifest,
)
from pipeline.config import load_config
from pipeline.seaweed import restart_seaweed, start_seaweed, stop_seaweed
from pipeline.storage import S3Store, StoreError, join_key, open_store
from tests.conftest import REPO
from tests.flows.helpers import write_config
from tests.raw_inputs import Page, write_warc
from tests.reliability.stages import DATA_STAGES, kill_once_parts_appear, plan, spec_of

FILES = 6            # WARC files = ingest units = document shards = units of every later stage
PAGES_PER_FILE = 25
VOCABULARY = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more can out up into do any your "
    "what some time than them could only other new may these two then first people like over such after also "
    "system network disk install package kernel server user file directory configuration boot partition debian "
    "manual section chapter example command option default value machine software hardware support version"
).split()


def write_corpus(directory: Path) -> Path:
    """FILES gzip WARCs of English-like pages, every page different (so dedup keeps them)."""
    for index in range(FILES):
        rng = random.Random(index)
        pages = []
        for page in range(PAGES_PER_FILE):
            paragraphs = ["<p>" + " ".join(rng.choice(VOCABULARY) for _ in range(60)) + ".</p>" for _ in range(5)]
            body = f"<html><head><title>Page {index}.{page}</title></head><body>{''.join(paragraphs)}</body></html>"
            pages.append(Page(f"https://example.org/f{index}/p{page}.html", body.encode()))
        write_warc(directory / f"crawl{index}.warc.gz", pages)
    return directory


def fault_config(path: Path, endpoint: str, bucket: str, prefix: str, corpus: Path, **storage) -> Path:
    write_config(path, endpoint=endpoint, bucket=bucket, prefix=prefix,
                 sources=[{"name": "web", "kind": "warc", "location": str(corpus)}],
                 clean={"workers": 1}, langid={"workers": 1})
    if storage:
        config = yaml.safe_load(path.read_text())
        config["storage"].update(storage)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Reference:
    """Every data stage built once, uninterrupted, under prefix `ref` of a bucket on the session server."""

    def __init__(self, root: Path, endpoint: str):
        self.root, self.endpoint = root, endpoint
        self.bucket = "faults-" + uuid.uuid4().hex[:12]
        self.corpus = write_corpus(root / "corpus")
        S3Store(self.bucket, "ref", endpoint_url=endpoint).ensure_bucket()
        self.config_path = self.config("ref")
        config = load_config(self.config_path)
        self.store = open_store(config.storage)
        self.manifests = plan(config, self.store, root, DATA_STAGES[-1])

    def config(self, prefix: str, directory: Path | None = None, endpoint: str | None = None, bucket: str | None = None,
               **storage) -> Path:
        return fault_config((directory or self.root) / f"{prefix}.yaml", endpoint or self.endpoint,
                            bucket or self.bucket, prefix, self.corpus, **storage)

    def copy_into(self, store: S3Store, upto: str) -> None:
        """The committed artifacts before `upto`, copied into `store` (manifest last, as a commit writes)."""
        for artifact in DATA_STAGES[: DATA_STAGES.index(upto)]:
            manifest = self.manifests[artifact]
            prefix = artifact_prefix(artifact, manifest["version"])
            for relpath in [entry["path"] for entry in manifest["files"]] + [MANIFEST]:
                key = join_key(prefix, relpath)
                if store.endpoint_url == self.store.endpoint_url:
                    store.client.copy_object(Bucket=store.bucket, Key=store._key(key),
                                             CopySource={"Bucket": self.store.bucket, "Key": self.store._key(key)})
                else:
                    store.put_bytes(key, self.store.get_bytes(key))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, seaweed) -> Reference:
    return Reference(tmp_path_factory.mktemp("faults"), seaweed.endpoint_url)


def assert_same_artifact(store, manifest: dict, expected: dict, scratch: Path) -> None:
    """Same version, files (paths, sizes, sha256, rows) and counts as the uninterrupted build; the stored
    bytes verify; and the version prefix holds nothing but those files, manifest.json and parts/."""
    assert manifest["version"] == expected["version"]
    assert manifest["files"] == expected["files"]
    assert manifest["counts"] == expected["counts"]
    prefix = artifact_prefix(manifest["artifact"], manifest["version"])
    stored = {key[len(prefix) + 1:] for key in store.list(prefix + "/")}
    assert {key for key in stored if not key.startswith("parts/")} == \
        {entry["path"] for entry in manifest["files"]} | {MANIFEST}
    scratch.mkdir(parents=True, exist_ok=True)
    for entry in manifest["files"]:
        fetch_verified(store, manifest, entry, scratch).unlink()


def stage_process(config: Path, artifact: str, upload_delay: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "FAULT_UPLOAD_DELAY": str(upload_delay)}
    return subprocess.Popen([sys.executable, "-m", "tests.reliability.stages", str(config), artifact], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def no_manifest(store, artifact: str, version: str) -> bool:
    return read_manifest(store, artifact, version) is None and list_versions(store, artifact) == []


# ---------------------------------------------------------------------------------------------
# SIGKILL mid-stage


@pytest.mark.parametrize("artifact", ["clean/web", "langid/web", "dedup", "filter/web", "tokens/web"])
def test_sigkill_mid_stage_then_rerun_equals_an_uninterrupted_run(reference, artifact, tmp_path):
    """Kill the stage's process group once its first work unit is recorded (uploads are slowed so the kill
    lands with units still to do); nothing is committed; the rerun does only the missing units and commits
    the artifact an uninterrupted run commits."""
    prefix = "kill-" + artifact.replace("/", "-")
    config_path = reference.config(prefix, tmp_path)
    config = load_config(config_path)
    store = open_store(config.storage)
    reference.copy_into(store, artifact)
    spec = spec_of(config, store, tmp_path, artifact)
    assert spec.version == reference.manifests[artifact]["version"]

    def not_committed() -> None:
        assert read_manifest(store, artifact, spec.version) is None, "committed before it was killed"

    kill_once_parts_appear(stage_process(config_path, artifact, upload_delay=0.2), store, spec.prefix, 60,
                           not_committed)
    partial = list(store.list(spec.prefix + "/"))
    assert partial and all(not key.endswith(MANIFEST) for key in partial)
    assert no_manifest(store, artifact, spec.version)

    progress: list[str] = []  # the rerun, in this process
    rerun = plan(config, store, tmp_path, artifact, build={artifact}, progress=progress.append)[artifact]
    total, resumed = map(int, re.search(r": (\d+) units, [\d.]+ MB; (\d+) already done", "\n".join(progress)).groups())
    assert 0 < resumed < total, progress
    [manifest] = list_versions(store, artifact)
    assert manifest == rerun
    assert_same_artifact(store, manifest, reference.manifests[artifact], tmp_path / "verify")


# ---------------------------------------------------------------------------------------------
# The S3 server stopped and restarted mid-stage


@pytest.fixture
def own_seaweed(tmp_path):
    """A SeaweedFS of this test's own (own directory and ports), which the test stops and restarts."""
    servers = [start_seaweed(tmp_path / "weed")]
    yield servers
    stop_seaweed(servers[-1])


def restart(servers: list, after_down_seconds: float) -> None:
    servers.append(restart_seaweed(servers[-1], after_down_seconds))


def disrupt_when_a_unit_is_done(servers: list, store: S3Store, prefix: str, down_seconds: float,
                                events: dict) -> threading.Thread:
    """A thread that stops the server once the stage has recorded a unit, and restarts it later."""
    probe = S3Store(store.bucket, store.prefix, endpoint_url=store.endpoint_url, max_attempts=1, retry_seconds=0)

    def run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(probe.list(prefix + "/parts/")):
            time.sleep(0.05)
        events["stopping"] = time.monotonic()
        restart(servers, down_seconds)
        events["restarted"] = time.monotonic()
        # units were still to do when the server went: no manifest may exist yet
        events["manifest_after_restart"] = probe.exists(prefix + "/" + MANIFEST)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def slow_uploads(monkeypatch, delay: float) -> None:
    original = S3Store.put_file

    def put_file(self, key, path):
        time.sleep(delay)
        return original(self, key, path)

    monkeypatch.setattr(S3Store, "put_file", put_file)


def test_s3_restart_mid_stage_is_ridden_out_by_retries(reference, own_seaweed, tmp_path, monkeypatch, caplog):
    server = own_seaweed[0]
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    config_path = reference.config("restart", tmp_path, endpoint=server.endpoint_url, bucket="restart",
                                   max_attempts=2, retry_seconds=60, retry_backoff_seconds=0.2,
                                   retry_max_backoff_seconds=1)
    config = load_config(config_path)
    store = open_store(config.storage)
    reference.copy_into(store, "clean/web")
    spec = spec_of(config, store, tmp_path, "clean/web")

    slow_uploads(monkeypatch, 0.3)
    events: dict = {}
    thread = disrupt_when_a_unit_is_done(own_seaweed, store, spec.prefix, 2.0, events)
    caplog.set_level("WARNING", logger="pipeline.storage.s3")
    manifest = plan(config, store, tmp_path, "clean/web", build={"clean/web"})["clean/web"]
    finished = time.monotonic()
    thread.join(timeout=60)
    assert "restarted" in events and finished > events["restarted"], "the stage did not span the outage"
    assert events["manifest_after_restart"] is False
    retries = [record.getMessage() for record in caplog.records if "attempt" in record.getMessage()]
    assert retries, "no request was retried"
    [committed] = list_versions(store, "clean/web")
    assert committed == manifest
    assert_same_artifact(store, manifest, reference.manifests["clean/web"], tmp_path / "verify")


def test_s3_outage_longer_than_the_retry_budget_fails_clean_then_resumes(reference, own_seaweed, tmp_path,
                                                                         monkeypatch):
    server = own_seaweed[0]
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    short = reference.config("outage", tmp_path, endpoint=server.endpoint_url, bucket="outage",
                             max_attempts=1, retry_seconds=1, retry_backoff_seconds=0.2)
    config = load_config(short)
    store = open_store(config.storage)
    reference.copy_into(store, "langid/web")
    spec = spec_of(config, store, tmp_path, "langid/web")

    events: dict = {}
    with monkeypatch.context() as patch:
        slow_uploads(patch, 0.3)
        thread = disrupt_when_a_unit_is_done(own_seaweed, store, spec.prefix, 4.0, events)
        with pytest.raises(StoreError, match=r"failed \d+ times over 1 s of retries \(storage.retry_seconds\)"):
            plan(config, store, tmp_path, "langid/web", build={"langid/web"})
        thread.join(timeout=60)
    assert "restarted" in events
    # the server is back: the partial artifact is there, uncommitted, invisible to readers
    assert list(store.list(spec.prefix + "/parts/"))
    assert no_manifest(store, "langid/web", spec.version)

    progress: list[str] = []
    manifest = plan(config, store, tmp_path, "langid/web", build={"langid/web"}, progress=progress.append)[
        "langid/web"]
    assert any(re.search(r"[1-9]\d* already done", line) for line in progress), progress
    assert_same_artifact(store, manifest, reference.manifests["langid/web"], tmp_path / "verify")


# ---------------------------------------------------------------------------------------------
# Corrupted objects


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_corrupted_object_is_detected_and_never_used(reference, tmp_path, damage):
    config_path = reference.config(f"corrupt-{damage}", tmp_path)
    config = load_config(config_path)
    store = open_store(config.storage)
    reference.copy_into(store, "langid/web")
    clean = reference.manifests["clean/web"]
    entry = list(files_with_role(clean, "documents"))[len(clean["files"]) // 4]
    key = join_key(artifact_prefix("clean/web", clean["version"]), entry["path"])
    data = bytearray(store.get_bytes(key))
    if damage == "flipped":  # same size, different bytes: only the checksum tells
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    store.put_bytes(key, bytes(data))  # behind the writer's back, as a bad disk or a rogue client would

    with pytest.raises(IntegrityError, match=re.escape(f"{clean['uri']}/{entry['path']}")):
        fetch_verified(store, clean, entry, tmp_path)
    assert not list(tmp_path.glob(entry["path"].replace("/", "__")))  # the bad download is not left behind

    spec = spec_of(config, store, tmp_path, "langid/web")
    with pytest.raises(IntegrityError, match=re.escape(entry["path"])):
        plan(config, store, tmp_path, "langid/web", build={"langid/web"})
    assert no_manifest(store, "langid/web", spec.version)


# ---------------------------------------------------------------------------------------------
# Concurrent runs


def test_two_concurrent_runs_of_a_stage_commit_one_identical_artifact(reference, tmp_path):
    config_path = reference.config("concurrent", tmp_path)
    config = load_config(config_path)
    store = open_store(config.storage)
    reference.copy_into(store, "clean/web")
    spec = spec_of(config, store, tmp_path, "clean/web")

    runs = [stage_process(config_path, "clean/web", upload_delay=0.05) for _ in range(2)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert {re.search(r"committed clean/web@(\w+)", output).group(1) for output in outputs} == {spec.version}

    [manifest] = list_versions(store, "clean/web")
    assert_same_artifact(store, manifest, reference.manifests["clean/web"], tmp_path / "verify")
    # bucket versioning keeps every write: one manifest was ever written, and every other key of the
    # version holds the same bytes in each of its object versions (a rewrite never changed a byte)
    listing = store.client.get_paginator("list_object_versions").paginate(
        Bucket=store.bucket, Prefix=store._key(spec.prefix) + "/")
    etags: dict[str, set[str]] = {}
    for page in listing:
        for version in page.get("Versions", []):
            etags.setdefault(version["Key"], set()).add(version["ETag"])
        assert not page.get("DeleteMarkers")
    assert len(store.versions(join_key(spec.prefix, MANIFEST))) == 1
    assert {key: len(tags) for key, tags in etags.items() if len(tags) != 1} == {}


def test_a_late_concurrent_build_never_writes_into_the_committed_version(store, tmp_path):
    """Two builds of one version, the second finishing after the first committed, with different bytes (as a
    non-deterministic stage, e.g. training, would produce): the committed artifact is left as it was."""
    spec = StageSpec("demo", "demo", "1", {"k": 1}, {})
    first, late = ArtifactWriter(store, spec), ArtifactWriter(store, spec)  # both started before any commit
    ours, theirs = tmp_path / "ours.bin", tmp_path / "theirs.bin"
    ours.write_bytes(b"first build " * 100)
    theirs.write_bytes(b"later build " * 100)
    committed = first.commit([first.put_file("data/x.bin", ours, "documents")], {"documents": 1})

    entry = late.put_file("data/x.bin", theirs, "documents")
    late.finish_unit("u0", {"files": [entry], "counts": {}})
    assert late.commit([entry], {"documents": 1}) == committed
    key = join_key(spec.prefix, "data/x.bin")
    assert store.get_bytes(key) == ours.read_bytes()
    assert len(store.versions(key)) == 1 and not store.exists(join_key(spec.prefix, "parts/u0.json"))
    fetch_verified(store, committed, committed["files"][0], tmp_path)


def test_the_retry_budget_bounds_a_dead_endpoint_and_permanent_errors_fail_at_once(s3_store, caplog):
    from pipeline.seaweed import free_port_block
    from pipeline.storage import NotFound

    caplog.set_level(logging.WARNING, logger="pipeline.storage.s3")
    dead = S3Store("nowhere", "p", endpoint_url=f"http://127.0.0.1:{free_port_block(1)[0]}", max_attempts=1,
                   retry_seconds=1, retry_backoff_seconds=0.1)
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"nowhere/p/k: put failed \d+ times over 1 s of retries .*Could not connect"):
        dead.put_bytes("k", b"x")
    elapsed = time.monotonic() - started
    assert elapsed >= 1, "gave up before the retry budget was spent"
    assert any("nowhere/p/k: put failed" in r.getMessage() for r in caplog.records), "retries are logged"

    s3_store.retry_seconds = 60  # a missing key is an answer, not a fault: no retry
    caplog.clear()
    with pytest.raises(NotFound):
        s3_store.get_bytes("missing")
    assert s3_store.size("missing") is None
    assert not caplog.records, "a missing key was retried"
