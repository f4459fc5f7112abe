"""The flow with `cluster.runner: dask` (a local Dask cluster it starts, bound to 127.0.0.1) builds the
same artifacts as with the local process pool: same versions, same file checksums."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.pretrain_pipeline import pretrain_pipeline
from pipeline.artifacts import read_manifest
from pipeline.config import load_config
from pipeline.storage import open_store
from tests.conftest import SAMPLE

pytestmark = pytest.mark.usefixtures("prefect_harness")


def write_config(directory: Path, cluster: dict) -> Path:
    directory.mkdir(parents=True)
    config = {
        "storage": {"backend": "local", "local_root": str(directory / "artifacts"), "prefix": "t"},
        "sources": [{"name": "web", "kind": "warc", "location": str(SAMPLE / "web")}],
        "ingest": {"workers": 2, "shard_max_docs": 50},
        "clean": {"workers": 2, "shard_max_docs": 40},
        "cluster": cluster,
    }
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def artifacts(config_path: Path) -> dict[str, tuple[str, list]]:
    """version and (path, sha256) of every file of the ingest and clean artifacts the run built."""
    store = open_store(load_config(config_path).storage)
    result = pretrain_pipeline(config_path=str(config_path), only=["ingest", "clean"])
    built = {}
    for name, stage in result["stages"].items():
        assert stage["status"] == "executed", (name, stage)
        manifest = read_manifest(store, stage["artifact"], stage["version"])
        built[name] = (stage["version"], [(f["path"], f["sha256"]) for f in manifest["files"]])
    return built


def test_flow_on_a_local_dask_cluster_builds_the_same_artifacts(tmp_path, caplog):
    pytest.importorskip("distributed")
    local = artifacts(write_config(tmp_path / "local", {"runner": "local"}))
    with caplog.at_level("INFO"):
        on_dask = artifacts(write_config(tmp_path / "dask", {"runner": "dask", "workers": 2}))
    assert set(local) == {"ingest/web", "clean/web"}
    assert on_dask == local
    assert any("units run on the local dask cluster at tcp://127.0.0.1:" in r.getMessage() for r in caplog.records)
