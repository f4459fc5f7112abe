"""Stage counters: nested dicts of integers (documents in/out, removals by reason) merged by adding."""

from __future__ import annotations

from typing import Any


def merge_counts(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Add `part` into `total` in place, key by key, recursing into nested reason maps."""
    for key, value in part.items():
        if isinstance(value, dict):
            merge_counts(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value
    return total
