"""pipeline/parallel.py: units mapped on the local process pool, a local Dask cluster and a local Ray
cluster (both bound to 127.0.0.1) report the same results; a unit's failure surfaces as its own
exception after the finished units were reported; the `cluster` section validates its keys.

The stages run on these runners byte for byte alike: tests/tasks/test_cluster.py."""

from __future__ import annotations

import functools
import operator
import os
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from pipeline.config import ClusterConfig, ConfigError, validate_config
from pipeline.parallel import (ClusterSession, LocalPools, cluster_session, current_session, map_units,
                               release_local_pools)

SOURCES = [{"name": "web", "kind": "warc", "location": "data/sample/web"}]


def collect(fn, units, workers: int = 2) -> dict:
    results: dict = {}
    map_units(fn, units, workers, lambda unit, result: results.__setitem__(unit, result))
    return results


def test_local_pool_reports_every_unit_in_the_caller():
    assert collect(functools.partial(operator.mul, 3), range(6)) == {i: 3 * i for i in range(6)}
    assert collect(abs, [-4], workers=1) == {-4: 4}


def test_local_runner_needs_no_session():
    with cluster_session(ClusterConfig()) as session:
        assert session is None and current_session() is None
    with cluster_session(None) as session:
        assert session is None


def pid_after(seconds: float, _unit: int) -> int:
    time.sleep(seconds)
    return os.getpid()


def fail_on(bad: int, how: str, unit: int) -> int:
    if unit == bad:
        if how == "exit":
            os._exit(3)  # a worker dies (as if killed): the pool is broken
        raise ValueError(f"unit {unit} is bad")
    time.sleep(0.05)
    return unit


def test_a_run_keeps_its_local_workers_for_every_stage():
    with cluster_session(ClusterConfig()):
        first = collect(functools.partial(pid_after, 0.2), range(6))
        second = collect(functools.partial(pid_after, 0.2), range(6))
        workers = set(first.values()) - {os.getpid()}
        assert 1 <= len(workers) <= 2  # the pool's processes (the caller may have run units while it started)
        assert set(second.values()) - {os.getpid()} <= workers  # the second map found them running
        release_local_pools()  # the data stages are done: the workers go
        third = collect(functools.partial(pid_after, 0.2), range(4))
        assert not (set(third.values()) - {os.getpid()}) & workers
    assert current_session() is None


def test_the_caller_runs_units_while_the_pool_starts():
    with LocalPools() as pools:
        results: dict = {}
        pools.map(functools.partial(pid_after, 0.3), list(range(8)), 2, results.__setitem__)
        assert sorted(results) == list(range(8))
        assert os.getpid() in results.values()  # the fork server's start takes longer than a unit
        results.clear()
        pools.map(functools.partial(pid_after, 0.01), list(range(8)), 2, results.__setitem__)
        assert os.getpid() not in results.values()  # a pool that is up takes every unit


@pytest.mark.parametrize("how, error", [("raise", ValueError), ("exit", BrokenProcessPool)])
def test_a_failed_unit_leaves_the_local_pools_usable(how, error):
    with LocalPools() as pools:
        pools.map(abs, [-1, -2], 2, lambda _u, _r: None)  # the pool is up
        reported: list = []
        with pytest.raises(error):
            pools.map(functools.partial(fail_on, 5, how), list(range(12)), 2, lambda unit, _r: reported.append(unit))
        assert 5 not in reported and len(reported) == len(set(reported))
        results: dict = {}
        pools.map(functools.partial(operator.mul, 2), list(range(5)), 2, results.__setitem__)
        assert results == {i: 2 * i for i in range(5)}


def test_a_session_that_maps_nothing_starts_no_cluster():
    with cluster_session(ClusterConfig(runner="dask")) as session:
        assert current_session() is session
        assert collect(abs, []) == {}
        assert session.where == ""  # nothing was started
    assert current_session() is None


def local_cluster(runner: str, package: str):
    """A two-worker local cluster of `runner`, connected for the module and closed after it."""
    pytest.importorskip(package)
    session = ClusterSession(runner, None, 2, log=lambda _m: None)
    yield session.connect()
    session.close()


@pytest.fixture(scope="module")
def dask_session():
    yield from local_cluster("dask", "distributed")


@pytest.fixture(scope="module")
def ray_session():
    yield from local_cluster("ray", "ray")


@pytest.fixture(params=["dask", "ray"])
def session(request):
    return request.getfixturevalue(f"{request.param}_session")


def test_local_clusters_listen_on_loopback(dask_session):
    assert dask_session.where.startswith("local dask cluster at tcp://127.0.0.1:")
    workers = dask_session._client.scheduler_info()["workers"]
    assert len(workers) == 2 and all(address.startswith("tcp://127.0.0.1:") for address in workers)


def test_cluster_reports_every_unit_like_the_local_pool(session):
    with session.active():
        assert collect(functools.partial(operator.mul, 3), range(6)) == {i: 3 * i for i in range(6)}
        assert collect(abs, [-4], workers=1) == {-4: 4}  # one unit still goes to the cluster


def test_cluster_unit_failure_raises_its_own_exception(session):
    reported: list = []
    with session.active(), pytest.raises(ValueError, match="invalid literal"):
        map_units(int, ["1", "2", "three"], 2, lambda unit, result: reported.append(result))
    assert set(reported) <= {1, 2}
    with session.active():  # the session is still usable afterwards
        assert collect(int, ["7"]) == {"7": 7}


def test_cluster_section_defaults_to_the_local_runner():
    config = validate_config({"sources": SOURCES})
    assert config.cluster == ClusterConfig(runner="local", address=None, workers=2)


@pytest.mark.parametrize("cluster, message", [
    ({"runner": "spark"}, "cluster.runner: Input should be 'local', 'dask' or 'ray'"),
    ({"runner": "dask", "address": "http://scheduler:8786"}, "cluster.address: not a dask address"),
    ({"runner": "dask", "address": "ray://head:10001"}, "cluster.address: not a dask address"),
    ({"runner": "ray", "address": "tcp://head:8786"}, "cluster.address: not a ray address"),
    ({"address": "tcp://scheduler:8786"}, "cluster.address: runner 'local' takes no address"),
    ({"workers": 0}, "cluster.workers: Input should be greater than or equal to 1"),
    ({"runer": "dask"}, "cluster.runer: unknown key; allowed keys here: address, runner, workers"),
])
def test_invalid_cluster_section_names_the_key(cluster, message):
    with pytest.raises(ConfigError) as error:
        validate_config({"sources": SOURCES, "cluster": cluster})
    assert message in str(error.value)


@pytest.mark.parametrize("cluster", [
    {"runner": "dask", "address": "tcp://10.0.0.5:8786"},
    {"runner": "dask", "address": "scheduler.internal:8786"},
    {"runner": "ray", "address": "ray://head:10001"},
    {"runner": "ray", "address": "auto"},
    {"runner": "ray", "address": "10.0.0.5:6379"},
    {"runner": "ray", "workers": 4},
])
def test_valid_cluster_addresses(cluster):
    assert validate_config({"sources": SOURCES, "cluster": cluster}).cluster.runner == cluster["runner"]


def test_dask_session_connects_to_a_scheduler_address():
    """`cluster.address: tcp://...`: the session is a client of a running cluster, which it leaves running."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as running:
        cluster = ClusterConfig(runner="dask", address=running.scheduler_address)
        with cluster_session(cluster, log=lambda _m: None) as session:
            assert collect(functools.partial(operator.mul, 2), range(3)) == {0: 0, 1: 2, 2: 4}
            assert session.where == f"dask cluster at {running.scheduler_address}"
        assert running.status.name == "running"
