"""Work units' bookkeeping: the CPU seconds an artifact's units spend in pool processes reach its manifest."""

from __future__ import annotations

import os
import time

from pipeline.artifacts import ArtifactWriter, StageSpec
from pipeline.parallel import LocalPools
from pipeline.units import commit_units, run_units


def _spin(job: float, unit: "_Unit") -> dict:
    """Burn `job` CPU seconds in whatever process runs the unit."""
    started = time.process_time()
    while time.process_time() - started < job:
        sum(range(10_000))
    return {"unit": unit.key, "files": [], "counts": {"documents": 1}, "pid": os.getpid()}


class _Unit:
    def __init__(self, key: str):
        self.key = key

    @property
    def size(self) -> int:
        return 1


def test_units_in_pool_processes_count_in_the_manifests_cpu_seconds(local_store):
    spec = StageSpec(stage="ingest", artifact="ingest/web", code_version="1", config={}, inputs={})
    writer = ArtifactWriter(local_store, spec)
    started = time.monotonic()
    with LocalPools() as pools, pools.active():
        # a pool already up takes every unit (while one starts, the caller runs units itself)
        pools.map(abs, [-1, -2], 2, lambda unit, result: None)
        records = run_units(writer, [_Unit("a"), _Unit("b")], _spin, 0.3, workers=2, name="spin",
                            progress=lambda _: None, every=60)
    assert {record["pid"] for record in records} != {os.getpid()}  # they ran in the pool
    assert all(record["cpu"]["seconds"] >= 0.3 for record in records)
    manifest = commit_units(writer, records, {"documents": 0}, started)
    assert manifest["summary"]["cpu_s"] >= 0.6 and writer.units_cpu_s >= 0.6


def test_units_in_this_process_count_once(local_store):
    spec = StageSpec(stage="ingest", artifact="ingest/web", code_version="1", config={}, inputs={})
    writer = ArtifactWriter(local_store, spec)
    records = run_units(writer, [_Unit("a")], _spin, 0.3, workers=1, name="spin", progress=lambda _: None, every=60)
    assert records[0]["pid"] == os.getpid() and writer.units_cpu_s == 0  # already in the writer's own CPU time
    manifest = commit_units(writer, records, {"documents": 0}, time.monotonic())
    assert manifest["summary"]["cpu_s"] >= 0.3
