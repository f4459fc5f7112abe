"""The cron schedule of the `pretrain-pipeline/cpt-refresh` deployment, taken from pipeline.yaml's
`refresh:` section (cron, timezone, active). `make up` applies it after registering the deployments;
it is created paused unless `refresh.active` is true, so nothing runs on a timer until someone
resumes it (`prefect deployment schedule resume pretrain-pipeline/cpt-refresh <schedule id>`, or the
toggle on the deployment's page in the UI)."""

from __future__ import annotations

from pipeline.config import RefreshConfig

REFRESH_DEPLOYMENT = "pretrain-pipeline/cpt-refresh"
SLUG = "refresh-cron"  # the schedule this module owns; others on the deployment are left alone


def apply_refresh_schedule(api_url: str, settings: RefreshConfig) -> dict:
    """Create or replace the deployment's cron schedule; returns what was set."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(REFRESH_DEPLOYMENT)
        for existing in client.read_deployment_schedules(deployment.id):
            if existing.slug == SLUG:
                client.delete_deployment_schedule(deployment.id, existing.id)
        schedule = CronSchedule(cron=settings.cron, timezone=settings.timezone)
        [created] = client.create_deployment_schedules(
            deployment.id, [DeploymentScheduleCreate(schedule=schedule, active=settings.active, slug=SLUG)])
    return {"deployment": REFRESH_DEPLOYMENT, "schedule_id": str(created.id), "cron": settings.cron,
            "timezone": settings.timezone, "active": settings.active}
