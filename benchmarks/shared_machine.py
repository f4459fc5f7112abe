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
