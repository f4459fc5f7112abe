"""Timing on a shared machine, for the benchmark scripts: how busy the CPUs are with other jobs,
and waiting (a bounded time) for them to go quiet before a measurement."""

from __future__ import annotations

import time
from pathlib import Path


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
