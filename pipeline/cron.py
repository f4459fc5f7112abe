"""Whether a cron expression and time zone make a schedule Prefect accepts, checked without importing Prefect.

pipeline.yaml's `refresh.cron` is checked whenever a config is loaded, also in processes that never talk to
Prefect (the data stages' cores, the benchmarks): importing Prefect there costs about 0.6 CPU-s per process.
Prefect's CronSchedule accepts what its vendored croniter parses, except random (R) and hashed (H) fields,
in an IANA time zone (prefect/_internal/schemas/validators.py). This module loads that same croniter module
on its own, without running Prefect's package start-up, and applies the same rules; where a Prefect release
no longer ships it there, the check builds Prefect's CronSchedule instead.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from zoneinfo import available_timezones


@lru_cache(maxsize=1)
def _prefects_croniter() -> ModuleType | None:
    prefect = importlib.util.find_spec("prefect")
    candidates = [Path(p) / "_vendor" / "croniter" / "croniter.py"
                  for p in (prefect.submodule_search_locations or [] if prefect else [])]
    source = next((candidate for candidate in candidates if candidate.is_file()), None)
    if source is None:
        return None
    spec = importlib.util.spec_from_file_location("_pipeline_prefect_croniter", source)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        module.croniter.is_valid  # noqa: B018 -- the API the check needs
    except Exception:  # another layout in a later Prefect: fall back to Prefect itself
        return None
    return module


def cron_problem(cron: str, timezone: str) -> str | None:
    """Why Prefect would refuse this schedule, or None when it accepts it."""
    vendored = _prefects_croniter()
    if vendored is None:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=cron, timezone=timezone)
        except ValueError as exc:
            return exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
        return None
    if not vendored.croniter.is_valid(cron):
        return f'Invalid cron string: "{cron}"'
    if any(field.casefold() in ("r", "h") for field in cron.split()):
        return f'Random and Hashed expressions are unsupported, received: "{cron}"'
    if timezone and timezone not in available_timezones():
        return f'Invalid timezone: "{timezone}" (specify in IANA tzdata format, for example, America/New_York)'
    return None
