"""The Prefect automations `make up` creates from pipeline.yaml's `alerts:` section.

- FAILED_RUN fires when a flow run of the pretrain-pipeline flow (any deployment, or none) ends
  Failed or Crashed;
- LATE_REFRESH fires when a run of the cpt-refresh deployment was marked Late by the server (it was
  not started 15 s after it was due: no worker, a paused pool, a full concurrency limit) and is still
  not Pending or Running `late_refresh.within_seconds` later.

Each sends to the notification block `alerts.notify` names (Slack, e-mail, a webhook, ... the block
holds the secret, never pipeline.yaml), or, without one, fires without sending: the firing is still an
event in the UI's event feed, on the automation's page, and on the flow run's page ("Automation").
`make up` replaces the automations of these names on every start, so pipeline.yaml stays the source;
a disabled one is deleted.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pipeline.config import AlertsConfig, ConfigError
from pipeline.schedule import REFRESH_DEPLOYMENT

FLOW = "pretrain-pipeline"
FAILED_RUN = "pretrain-pipeline: a run failed"
LATE_REFRESH = "pretrain-pipeline: a scheduled refresh did not start"

FAILED_BODY = ("Flow run {{ flow_run.name }} of pretrain-pipeline ended {{ flow_run.state.name }}: "
               "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}")
LATE_BODY = ("The scheduled cpt-refresh run {{ flow_run.name }}, due {{ flow_run.expected_start_time }}, has not "
             "started: is a worker polling the work pool?\n{{ flow_run|ui_url }}")


def automations(settings: AlertsConfig, refresh_deployment_id: str, block_document_id: Any | None) -> list:
    """The enabled automations, ready to create."""
    from prefect.automations import AutomationCore, DoNothing, EventTrigger, Posture, SendNotification

    def action(subject: str, body: str):
        if block_document_id is None:
            return DoNothing()
        return SendNotification(block_document_id=block_document_id, subject=subject, body=body)

    wanted = []
    if settings.failed_run.enabled:
        wanted.append(AutomationCore(
            name=FAILED_RUN, description="A run of the pretrain-pipeline flow ended Failed or Crashed (pipeline.yaml "
                                         "alerts.failed_run; created by `make up`)",
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOW},
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}, for_each={"prefect.resource.id"},
                posture=Posture.Reactive, threshold=1, within=timedelta(0)),
            actions=[action("pretrain-pipeline: run {{ flow_run.name }} failed", FAILED_BODY)]))
    if settings.late_refresh.enabled:
        wanted.append(AutomationCore(
            name=LATE_REFRESH, description="A scheduled cpt-refresh run did not start within "
                                           f"{settings.late_refresh.within_seconds} s of being Late (pipeline.yaml "
                                           "alerts.late_refresh; created by `make up`)",
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.role": "deployment",
                               "prefect.resource.id": f"prefect.deployment.{refresh_deployment_id}"},
                after={"prefect.flow-run.Late"}, expect={"prefect.flow-run.Pending", "prefect.flow-run.Running"},
                for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                within=timedelta(seconds=settings.late_refresh.within_seconds)),
            actions=[action("pretrain-pipeline: scheduled refresh {{ flow_run.name }} did not start", LATE_BODY)]))
    return wanted


def apply_alerts(api_url: str, settings: AlertsConfig) -> list[dict]:
    """Replace the automations of these names on the server with pipeline.yaml's; returns what exists now."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        block_id = None
        if settings.notify:
            block_type, _, name = settings.notify.partition("/")
            try:
                block_id = client.read_block_document_by_name(name, block_type).id
            except ObjectNotFound:
                raise ConfigError(f"alerts.notify: no block {settings.notify!r} on the Prefect server at {api_url}; "
                                 f"create it in the UI (Blocks) or with `prefect block create {block_type}`") from None
        refresh = client.read_deployment_by_name(REFRESH_DEPLOYMENT)
        for name in (FAILED_RUN, LATE_REFRESH):
            for existing in client.read_automations_by_name(name):
                client.delete_automation(existing.id)
        created = []
        for automation in automations(settings, str(refresh.id), block_id):
            automation_id = client.create_automation(automation)
            created.append({"name": automation.name, "id": str(automation_id),
                            "notify": settings.notify or "nothing (fires without sending)"})
    return created
