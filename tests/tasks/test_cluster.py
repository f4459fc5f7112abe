"""Data stages on a cluster: ingest and clean of the sample on a local Dask cluster and a local Ray
cluster (2 worker processes each, bound to 127.0.0.1) give the same versions and the same bytes as
the local process pool; a run that failed on the local runner resumes on a cluster from its parts/
and ends identical to an uninterrupted run. The runner changes where units run, never the output."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import tasks.ingest
from pipeline.config import CleanConfig, IngestConfig, JsonlSource, WarcSource
from pipeline.parallel import ClusterSession
from pipeline.storage import LocalStore
from tests.conftest import SAMPLE
from tests.tasks import chain

SOURCES = [WarcSource(name="web", kind="warc", location=str(SAMPLE / "web")),
           JsonlSource(name="docs", kind="jsonl", location=str(SAMPLE / "jsonl"), id_field="id", url_field="url")]
# Small shards, so that each stage has several units (3 WARC files -> 3 ingest units -> 9 clean units).
INGEST = IngestConfig(workers=2, shard_max_docs=50)
CLEAN = CleanConfig(workers=2, shard_max_docs=40)


def build(store: LocalStore) -> dict[str, dict]:
    """ingest -> clean of both sample sources; the manifests by artifact."""
    manifests = {}
    for source in SOURCES:
        ingested = chain.ingest(store, source, INGEST)
        manifests[ingested["artifact"]] = ingested
        cleaned = chain.clean(store, source.name, ingested, CLEAN)
        manifests[cleaned["artifact"]] = cleaned
    return manifests


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file the artifacts hold (data, quarantine, parts/), manifests aside."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and path.name != "manifest.json"}


def comparable(manifest: dict) -> dict:
    """A manifest without what differs by run and by store: timings, build info, the store's URI."""
    return {key: value for key, value in manifest.items() if key not in ("summary", "build", "uri")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The local process pool's result (2 workers), the reference for every runner."""
    root = tmp_path_factory.mktemp("local") / "store"
    manifests = build(LocalStore(root, "p"))
    assert {name: manifest["summary"]["units"] for name, manifest in manifests.items()} == \
        {"ingest/web": 3, "clean/web": 9, "ingest/docs": 1, "clean/docs": 5}
    return manifests, snapshot(root)


@pytest.fixture(scope="module", params=["dask", "ray"])
def cluster(request):
    pytest.importorskip({"dask": "distributed", "ray": "ray"}[request.param])
    session = ClusterSession(request.param, None, 2, log=lambda _m: None)
    yield session.connect()
    session.close()


def test_stages_on_a_cluster_match_the_local_pool_byte_for_byte(cluster, reference, tmp_path):
    root = tmp_path / "store"
    with cluster.active():
        manifests = build(LocalStore(root, "p"))
    expected_manifests, expected_files = reference
    assert {name: m["version"] for name, m in manifests.items()} == \
        {name: m["version"] for name, m in expected_manifests.items()}
    assert {name: comparable(m) for name, m in manifests.items()} == \
        {name: comparable(m) for name, m in expected_manifests.items()}
    assert snapshot(root) == expected_files


def test_a_failed_local_run_resumes_on_a_cluster(cluster, reference, tmp_path, monkeypatch):
    """Attempt 1 (local, in-process) dies at the last unit; attempt 2 on the cluster does only that one."""
    store = LocalStore(tmp_path / "store", "p")
    source = SOURCES[0]
    done: list[str] = []

    def failing_unit(job, unit):
        if unit.key == "u00002":
            raise OSError("worker lost")
        done.append(unit.key)
        return ingest_unit(job, unit)

    ingest_unit = tasks.ingest.ingest_unit
    monkeypatch.setattr(tasks.ingest, "ingest_unit", failing_unit)
    with pytest.raises(OSError, match="worker lost"):
        chain.ingest(store, source, INGEST.model_copy(update={"workers": 1}))
    monkeypatch.undo()
    assert done == ["u00000", "u00001"]

    messages: list[str] = []
    with cluster.active():
        from pipeline.config import StorageConfig
        from pipeline.sources import list_inputs

        files = list_inputs(source, StorageConfig(backend="local"))
        spec = tasks.ingest.ingest_spec(source, files, INGEST)
        manifest = tasks.ingest.run_ingest(source, INGEST, StorageConfig(backend="local"), store, spec, files,
                                           progress=messages.append)
    assert "2 already done by an earlier attempt, 1 to do" in messages[0]
    expected_manifests, expected_files = reference
    assert comparable(manifest) == comparable(expected_manifests["ingest/web"])
    resumed = snapshot(tmp_path / "store")
    assert resumed == {path: digest for path, digest in expected_files.items() if "/ingest/web/" in f"/{path}"}
