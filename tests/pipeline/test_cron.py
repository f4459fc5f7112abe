"""The cron check of pipeline.yaml's refresh schedule agrees with Prefect's own CronSchedule."""

from __future__ import annotations

import pytest
from prefect.client.schemas.schedules import CronSchedule

from pipeline.cron import cron_problem

SCHEDULES = [("0 3 * * 1", "UTC"), ("*/5 * * * 1-5", "Europe/Berlin"), ("0 0 L * *", "UTC"), ("0 0 1,15 * *", ""),
             ("0 12 * * mon-fri", "America/New_York"), ("@daily", "UTC"), ("0 0 * * * *", "UTC"),
             ("61 * * * *", "UTC"), ("* 25 * * *", "UTC"), ("H * * * *", "UTC"), ("0 R * * *", "UTC"),
             ("a b", "UTC"), ("", "UTC"), ("0 3 * * 1", "Mars/Olympus_Mons"), ("0 3 * * 8", "UTC")]


@pytest.mark.parametrize("cron,timezone", SCHEDULES)
def test_cron_problem_refuses_exactly_what_prefect_refuses(cron, timezone):
    try:
        CronSchedule(cron=cron, timezone=timezone or None)
        expected = None
    except ValueError as exc:
        expected = exc.errors()[0]["msg"].removeprefix("Value error, ")
    assert cron_problem(cron, timezone) == expected
