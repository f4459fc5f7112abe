"""The cron schedule of the `pretrain-pipeline/cpt-refresh` deployment, taken from pipeline.yaml's
`refresh:` section (cron, timezone, active). `make up` applies it after registering the deployments.

The schedule is created paused unless `refresh.active` is true, so nothing runs on a timer until
someone resumes it (`prefect deployment schedule resume pretrain-pipeline/cpt-refresh <schedule id>`,
or the toggle on the deployment's page in the UI). Later `make up`s update the same schedule in place
(same id, the cron and timezone of pipeline.yaml) and keep whatever active state it has, resumed or
paused by hand, unless `refresh.active` itself changed since the last `make up`: then pipeline.yaml
wins. The value last applied is kept beside the Prefect database (`state_file`).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import RefreshConfig

REFRESH_DEPLOYMENT = "pretrain-pipeline/cpt-refresh"
SLUG = "refresh-cron"  # the schedule this module owns; others on the deployment are left alone


def apply_refresh_schedule(api_url: str, settings: RefreshConfig, state_file: Path) -> dict:
    """Create the deployment's cron schedule, or update it keeping its active state (see above);
    returns what is set now, with `kept` true when the active state was left as someone set it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.settings import PREFECT_API_URL, temporary_settings

    state_file = Path(state_file)
    applied = json.loads(state_file.read_text()).get("active") if state_file.exists() else None
    schedule = CronSchedule(cron=settings.cron, timezone=settings.timezone)
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(REFRESH_DEPLOYMENT)
        existing = next((s for s in client.read_deployment_schedules(deployment.id) if s.slug == SLUG), None)
        if existing is None:
            active, kept = settings.active, False
            [existing] = client.create_deployment_schedules(
                deployment.id, [DeploymentScheduleCreate(schedule=schedule, active=active, slug=SLUG)])
        else:
            kept = applied == settings.active
            active = existing.active if kept else settings.active
            client.update_deployment_schedule(deployment.id, existing.id, active=active, schedule=schedule)
    state_file.write_text(json.dumps({"active": settings.active}))
    return {"deployment": REFRESH_DEPLOYMENT, "schedule_id": str(existing.id), "cron": settings.cron,
            "timezone": settings.timezone, "active": active, "kept": kept}
