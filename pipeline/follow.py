"""Start a deployment's flow run and follow it from a terminal: its logs as they arrive, then its end.

The demo uses this so the progress every stage logs (units done, documents, MB/s) shows up in the
terminal as well as in the Prefect UI.
"""

from __future__ import annotations

import time
from typing import Any, Callable


def run_and_follow(api_url: str, deployment: str, parameters: dict[str, Any], *, timeout: float = 3600,
                   poll_seconds: float = 1.0, emit: Callable[[str], None] = print) -> tuple[str, str]:
    """Run `deployment` on the server at api_url and print its logs until it ends; (flow run id, state)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        flow_run = run_deployment(deployment, parameters=parameters, timeout=0)
        emit(f"flow run {flow_run.name} ({flow_run.id}) submitted; UI: {api_url.removesuffix('/api')}"
             f"/runs/flow-run/{flow_run.id}")
        seen = 0
        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            while True:
                state = client.read_flow_run(flow_run.id).state
                logs = client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])),
                    sort=LogSort.TIMESTAMP_ASC, offset=seen, limit=200,
                )
                for log in logs:
                    emit(f"{log.timestamp:%H:%M:%S} {_level(log.level):8} {log.message}")
                seen += len(logs)
                if state is not None and state.is_final() and not logs:
                    return str(flow_run.id), state.name
                if time.monotonic() > deadline:
                    return str(flow_run.id), f"still {state.name if state else 'unknown'} after {timeout:.0f}s"
                if not logs:
                    time.sleep(poll_seconds)


def _level(level: int) -> str:
    return {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}.get(level // 10 * 10, str(level))
