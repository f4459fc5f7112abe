"""Timing on a shared machine, for the benchmark scripts: how busy the CPUs are with other jobs,
and waiting (a bounded time) for them to go quiet before a measurement."""

from __future__ import annotations

import gc
import os
import statistics
import time
from pathlib import Path
from typing import Callable


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_fraction(seconds: float = 0.5) -> float:
    """Share of all CPUs busy over a short window (other jobs on a shared machine)."""
    busy0, total0 = cpu_ticks()
    time.sleep(seconds)
    busy1, total1 = cpu_ticks()
    return (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0


def wait_until_quiet(limit: float, threshold: float = 0.15) -> tuple[float, float]:
    """Wait (at most `limit` s) until other jobs leave the CPUs mostly idle; returns (busy, waited)."""
    started = time.monotonic()
    busy = busy_fraction(0.3)
    while busy > threshold and time.monotonic() - started < limit:
        busy = busy_fraction(1.0)
    return round(busy, 3), round(time.monotonic() - started, 1)


def machine_info(repo: Path, packages: tuple[str, ...]) -> dict:
    """The machine, the versions of the named packages and the git state, for a results file."""
    import os
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    model = memory = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                                    text=True).stdout.strip())
    except OSError:
        git, dirty = None, None
    versions = {}
    for name in packages:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model,
        "memory_gib": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "git_sha": git or None,
        "git_dirty": dirty,
    }




def _stats(runs: list[dict], items: int, passes: int) -> dict:
    wall = statistics.median(r["wall_s"] for r in runs)
    cpu = statistics.median(r["cpu_s"] for r in runs)
    return {
        "items": items,
        "repeats": len(runs),
        "passes_per_repeat": passes,
        "seconds_per_pass_wall": round(wall, 5),
        "seconds_per_pass_cpu": round(cpu, 5),
        "per_s_wall": round(items / wall, 1),
        "per_core_s": round(items / cpu, 1) if cpu > 0 else None,  # items per CPU-second of this one process
        "cpu_over_wall": round(cpu / wall, 3) if wall else None,
        "other_jobs_cpu_share": max(r["other_jobs_cpu_share"] or 0.0 for r in runs),
        "runs": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in runs],
    }


def measure_group(entries: list[tuple[str, Callable[[], object], int]], repeats: int,
                  min_seconds: float = 0.3) -> dict[str, dict]:
    """Time each `fn` (one pass over `items` documents) `repeats` times, after one warm-up pass. The repeats
    of the entries of a group are interleaved (A B A B ...), so a product and its ceiling see the same
    interference from other jobs and their ratio stays fair. A repeat runs the pass as many times as
    needed to last at least `min_seconds`. Figures are medians over repeats."""
    hz = os.sysconf("SC_CLK_TCK")
    cpus = os.cpu_count() or 1
    passes = {}
    for name, fn, _ in entries:
        fn()  # warm-up: lazy imports, first-touch allocations
        started = time.perf_counter()
        fn()
        one = max(time.perf_counter() - started, 1e-6)
        passes[name] = max(1, int(min_seconds / one + 0.999))
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in entries}
    for _ in range(repeats):
        for name, fn, _ in entries:
            gc.collect()
            ticks0 = cpu_ticks()
            cpu0 = time.process_time()
            wall0 = time.perf_counter()
            for _ in range(passes[name]):
                fn()
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            ticks1 = cpu_ticks()
            others = max((ticks1[0] - ticks0[0]) / hz - cpu, 0.0)
            runs[name].append({"wall_s": wall / passes[name], "cpu_s": cpu / passes[name],
                               "other_jobs_cpu_share": round(min(others / (wall * cpus), 1.0), 3) if wall else None})
    return {name: _stats(runs[name], items, passes[name]) for name, _, items in entries}
