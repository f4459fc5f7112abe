"""Run a stage's work units on local processes or on a Dask or Ray cluster, reporting each result as it arrives.

`map_units(fn, units, workers, on_result)` is all a stage sees (through `pipeline.units.run_units`).
Where the units run is the flow run's choice, from the `cluster` section of pipeline.yaml:

- **local** (default): a process pool with the stage's `workers`, kept for the whole run (inside
  `with cluster_session(...)`, which the flow opens around its stages; LocalPools): every stage after
  the first finds its workers already up. Workers come from a fork server: the parent is a Prefect
  flow with threads and an event loop, which a plain `fork` would copy in an inconsistent state, while
  `spawn` re-imports everything in every worker (about a second each here). The fork server imports
  the first stage's module once and forks each worker from that clean, single-threaded process. While
  a pool starts, the caller runs units itself. One worker runs the units in-process.
- **dask** / **ray**: inside `with cluster_session(config.cluster):` (the flow opens one around its
  stages) every unit is submitted to the cluster, which sets the parallelism (the stages' `workers`
  then has no effect). With an address, the session connects to that cluster; without one it starts
  a local cluster bound to 127.0.0.1 on first use and stops it when the session ends, so a fully
  cached run starts nothing.

Only the unit function runs remotely: the results come back to the caller, which records every
finished unit under parts/ and merges them in unit order. The unit plan never depends on the runner
or on the number of workers, so neither do the artifact's version and bytes, and a run interrupted
on one runner resumes on another.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, TypeVar

if TYPE_CHECKING:
    from .config import ClusterConfig

T = TypeVar("T")
R = TypeVar("R")
logger = logging.getLogger(__name__)


def map_units(fn: Callable[[T], R], units: Iterable[T], workers: int, on_result: Callable[[T, R], Any]) -> None:
    """Call fn on every unit (on the current cluster session's cluster, or with up to `workers` local
    processes); on_result runs in the caller for each, as units finish.

    The first failure cancels the units not yet started and is raised once the units already running
    have ended; the units that finished have been reported, so a retry can pick up from there.
    """
    units = list(units)
    session = _SESSION.get()
    if session is not None:
        session.map(fn, units, on_result)
        return
    pools = _LOCAL_POOLS.get()
    if pools is not None:
        pools.map(fn, units, workers, on_result)
        return
    with LocalPools() as pools:  # outside a session (a stage core called directly): a pool for this map
        pools.map(fn, units, workers, on_result)


def _in_environment(environment: dict[str, str], fn: Callable[[T], R], unit: T) -> R:
    if os.environ != environment:
        os.environ.clear()
        os.environ.update(environment)
    return fn(unit)


def _ready() -> int:
    return os.getpid()


class LocalPools:
    """The local runner's worker processes, kept for a whole run: one fork-server process pool per worker
    count, started on first use and reused by every stage after it (starting workers and importing the
    stage modules into them costs about a second here: paid once per run instead of once per stage).

    While a pool starts, the caller runs units itself, from the end of the list; the pool takes the rest
    as soon as it is up. Units are reported as they finish, in whatever order. A pool whose worker died
    (BrokenProcessPool) is dropped, and the next map starts a fresh one.
    """

    def __init__(self):
        self._pools: dict[int, ProcessPoolExecutor] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> "LocalPools":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @contextmanager
    def active(self) -> Iterator["LocalPools"]:
        """map_units in this block (and in the Prefect tasks it calls) runs local units on these pools."""
        token = _LOCAL_POOLS.set(self)
        try:
            yield self
        finally:
            _LOCAL_POOLS.reset(token)

    def _pool(self, workers: int, module: str) -> ProcessPoolExecutor:
        """The pool of `workers` processes, up and running (the first one started here waits for a worker)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the local pools are closed")
            pool = self._pools.get(workers)
            if pool is not None and getattr(pool, "_broken", False):  # a worker died since: start afresh
                pool.shutdown(wait=False, cancel_futures=True)
                pool = None
            if pool is None:
                context = multiprocessing.get_context("forkserver")
                # Only takes effect when the fork server starts (once per process): the first stage's module,
                # which imports the shared plumbing every stage module needs.
                context.set_forkserver_preload([module])
                pool = self._pools[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        pool.submit(_ready).result()
        return pool

    def _drop(self, workers: int, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pools.get(workers) is pool:
                del self._pools[workers]
        pool.shutdown(wait=False, cancel_futures=True)

    def map(self, fn: Callable[[T], R], units: Sequence[T], workers: int, on_result: Callable[[T, R], Any]) -> None:
        if workers <= 1 or len(units) <= 1:
            for unit in units:
                on_result(unit, fn(unit))
            return
        # The fork server keeps the environment it started with; each unit gets the caller's current one
        # (credentials set or rotated since, e.g. by `make up`'s env file or a Prefect block).
        environment = dict(os.environ)
        queue = deque(units)
        lock = threading.Lock()
        futures: dict[Future, T] = {}
        started: dict[str, Any] = {}

        def start() -> None:  # in a thread: start the pool, then hand it every unit the caller has not taken
            try:
                pool = self._pool(workers, getattr(fn, "func", fn).__module__)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                started["error"] = exc
                return
            with lock:
                started["pool"] = pool
                try:
                    while queue:
                        unit = queue.popleft()
                        futures[pool.submit(_in_environment, environment, fn, unit)] = unit
                except BaseException as exc:  # noqa: BLE001 - a pool that broke meanwhile
                    started["error"] = exc

        with self._lock:
            running = self._pools.get(workers)
        if running is not None and not getattr(running, "_broken", False):  # up since an earlier map: takes all
            start()
        else:
            starter = threading.Thread(target=start, name="local-pool-start", daemon=True)
            starter.start()
            try:
                while True:
                    with lock:
                        if "pool" in started or "error" in started or not queue:
                            break
                        unit = queue.pop()
                    on_result(unit, fn(unit))
            except BaseException:
                with lock:
                    queue.clear()  # the starter hands the pool nothing more
                starter.join()
                self._settle(workers, started.get("pool"), futures, on_result)
                raise
            starter.join()
        if "error" in started:
            self._settle(workers, started.get("pool"), futures, on_result)
            raise started["error"]
        self._collect(workers, started["pool"], futures, on_result)

    def _collect(self, workers: int, pool: ProcessPoolExecutor, futures: dict[Future, T],
                 on_result: Callable[[T, R], Any]) -> None:
        pending = dict(futures)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                unit = pending.pop(future)
                error = future.exception()
                if error is None:
                    try:
                        on_result(unit, future.result())
                        continue
                    except BaseException as exc:  # noqa: BLE001 - recording a result failed
                        error = exc
                self._settle(workers, pool, pending, on_result)
                raise error

    def _settle(self, workers: int, pool: ProcessPoolExecutor | None, pending: dict[Future, T],
                on_result: Callable[[T, R], Any]) -> None:
        """After a failure: cancel what has not started, wait for what runs (reporting what succeeds), and
        drop the pool if a worker died."""
        for future in pending:
            future.cancel()
        broken = False
        for future, unit in list(pending.items()):
            if future.cancelled():
                continue
            try:
                result = future.result()
            except BrokenProcessPool:
                broken = True
            except BaseException:  # noqa: BLE001 - the first failure is the one raised
                pass
            else:
                try:
                    on_result(unit, result)
                except BaseException:  # noqa: BLE001
                    pass
        if pool is not None and (broken or getattr(pool, "_broken", False)):
            self._drop(workers, pool)

    def release(self) -> None:
        """Shut down every pool; a later map starts a fresh one."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


_LOCAL_POOLS: ContextVar["LocalPools | None"] = ContextVar("pipeline_local_pools", default=None)


def release_local_pools() -> None:
    """Shut down the current run's idle local workers (the flow calls this when its data stages are done,
    so their memory is free for training); a later map starts them again."""
    pools = _LOCAL_POOLS.get()
    if pools is not None:
        pools.release()


# ---------------------------------------------------------------------------------------------
# Cluster sessions


_SESSION: ContextVar["ClusterSession | None"] = ContextVar("pipeline_cluster_session", default=None)


@contextmanager
def cluster_session(cluster: "ClusterConfig | None", log: Callable[[str], None] | None = None
                    ) -> Iterator["ClusterSession | None"]:
    """Within this block (and the Prefect tasks it calls, which inherit its context), map_units sends
    the units to the configured cluster. `runner: local` yields None: the units run on local process
    pools that the block keeps for all its stages (LocalPools) and shuts down at its end."""
    if cluster is None or cluster.runner == "local":
        with LocalPools() as pools, pools.active():
            yield None
        return
    session = ClusterSession(cluster.runner, cluster.address, cluster.workers, log or logger.info)
    try:
        with session.active():
            yield session
    finally:
        session.close()


def current_session() -> "ClusterSession | None":
    return _SESSION.get()


def _apply(fn: Callable[[T], R], unit: T) -> R:
    """What a cluster worker runs: one unit (module-level, so it pickles by reference)."""
    return fn(unit)


class ClusterSession:
    """A connection to a Dask or Ray cluster (or a local one started on first use), closed with the session."""

    def __init__(self, runner: str, address: str | None, workers: int, log: Callable[[str], None]):
        if runner not in ("dask", "ray"):
            raise ValueError(f"cluster.runner: unknown runner {runner!r}; allowed: local, dask, ray")
        self.runner, self.address, self.workers, self.log = runner, address, workers, log
        self.where = ""  # the cluster's address, once connected
        self._lock = threading.Lock()
        self._client: Any = None  # dask.distributed.Client
        self._local_cluster: Any = None  # dask LocalCluster we started
        self._ray_started = False  # whether we called ray.init (and so shut it down)
        self._closed = False

    @contextmanager
    def active(self) -> Iterator["ClusterSession"]:
        """map_units in this block (and in the Prefect tasks it calls) sends units to this session's cluster."""
        token = _SESSION.set(self)
        try:
            yield self
        finally:
            _SESSION.reset(token)

    # -- connecting

    def connect(self) -> "ClusterSession":
        with self._lock:
            if self._closed:
                raise RuntimeError("the cluster session is closed")
            if not self.where:
                self._connect_dask() if self.runner == "dask" else self._connect_ray()
        return self

    def _connect_dask(self) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise RuntimeError("cluster.runner dask needs dask.distributed: pip install 'pretrain-pipeline[cluster]'") \
                from None
        if self.address:
            self._client = Client(self.address, set_as_default=False)
            self.where = f"dask cluster at {self.address}"
        else:
            if logging.getLogger("distributed").level == logging.NOTSET:  # its scheduler runs in this process
                logging.getLogger("distributed").setLevel(logging.WARNING)
            self._local_cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                               host="127.0.0.1", dashboard_address="127.0.0.1:0")
            self._client = Client(self._local_cluster, set_as_default=False)
            self.where = f"local dask cluster at {self._local_cluster.scheduler_address} ({self.workers} workers)"
        self.log(f"cluster: units run on the {self.where}")

    def _connect_ray(self) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError("cluster.runner ray needs ray: pip install 'pretrain-pipeline[cluster]'") from None
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from an offline machine
        if ray.is_initialized():
            self.where = "ray cluster this process already joined"
        elif self.address:
            ray.init(address=self.address, configure_logging=False)
            self._ray_started = True
            self.where = f"ray cluster at {self.address}"
        else:
            ray.init(address="local", num_cpus=self.workers, include_dashboard=False,
                     _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
            self._ray_started = True
            self.where = f"local ray cluster on 127.0.0.1 ({self.workers} CPUs)"
        self.log(f"cluster: units run on the {self.where}")

    # -- mapping

    def map(self, fn: Callable[[T], R], units: Sequence[T], on_result: Callable[[T, R], Any]) -> None:
        if not units:
            return
        self.connect()
        if self.runner == "dask":
            self._map_dask(fn, units, on_result)
        else:
            self._map_ray(fn, units, on_result)

    def _map_dask(self, fn: Callable[[T], R], units: Sequence[T], on_result: Callable[[T, R], Any]) -> None:
        from distributed import as_completed

        client = self._client
        batch = uuid.uuid4().hex[:12]
        [shared_fn] = client.scatter([fn], hash=False)  # the job (with its input manifest) travels once
        futures = {client.submit(_apply, shared_fn, unit, key=f"unit-{batch}-{index:06d}", pure=False): unit
                   for index, unit in enumerate(units)}
        pending = set(futures)
        try:
            for future in as_completed(list(futures), loop=client.loop):
                pending.discard(future)
                if future.status != "finished":
                    if pending:
                        client.cancel(list(pending))
                        pending.clear()
                    future.result()  # raises the unit's own exception
                    raise RuntimeError(f"work unit {futures[future]!r} ended {future.status}")
                on_result(futures[future], future.result())
        finally:
            if pending:
                client.cancel(list(pending))
            shared_fn.release()

    def _map_ray(self, fn: Callable[[T], R], units: Sequence[T], on_result: Callable[[T, R], Any]) -> None:
        import ray
        from ray.exceptions import RayTaskError

        remote = ray.remote(num_cpus=1)(_apply)
        shared_fn = ray.put(fn)  # the job (with its input manifest) travels once
        refs = {remote.remote(shared_fn, unit): unit for unit in units}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        result = ray.get(ref)
                    except RayTaskError as exc:
                        raise exc.as_instanceof_cause() from None
                    on_result(refs[ref], result)
        finally:
            for ref in pending:
                ray.cancel(ref)

    # -- closing

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._local_cluster is not None:
                self._local_cluster.close()
                self._local_cluster = None
            if self._ray_started:
                import ray

                ray.shutdown()
                self._ray_started = False
