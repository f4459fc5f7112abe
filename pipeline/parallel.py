"""Run a stage's work units across local processes, reporting each result as it arrives.

Workers come from a fork server: the parent is a Prefect flow with threads and an event loop, which
a plain `fork` would copy in an inconsistent state, while `spawn` re-imports everything in every
worker (about a second each here). The fork server imports the worker's module once and forks
each worker from that clean, single-threaded process. One worker runs the units in-process.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_units(fn: Callable[[T], R], units: Iterable[T], workers: int, on_result: Callable[[T, R], Any]) -> None:
    """Call fn on every unit with up to `workers` processes; on_result runs in the caller for each.

    The first failure cancels the units not yet started and is raised once running ones end; the
    units that finished have already been reported, so a retry can pick up from there.
    """
    units = list(units)
    if workers <= 1 or len(units) <= 1:
        for unit in units:
            on_result(unit, fn(unit))
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([getattr(fn, "func", fn).__module__])
    with ProcessPoolExecutor(max_workers=min(workers, len(units)), mp_context=context) as pool:
        pending = {pool.submit(fn, unit): unit for unit in units}
        while pending:
            done, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                unit = pending.pop(future)
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()  # type: ignore[misc]
                on_result(unit, future.result())
