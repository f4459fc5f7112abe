"""Follow a flow run from a terminal: its logs as they arrive, then how it ended and why.

`make demo` starts the full deployment and follows it (`run_and_follow`); `pretrain-pipeline watch
FLOW_RUN_ID` follows any run, e.g. one started with `prefect deployment run` or by the schedule. Where
`prefect deployment run --watch` ends with the bare state ("Failed"), this ends with the state's message
(which stages failed, where the run record is) and the message of every task run that failed.
"""

from __future__ import annotations

import time
from typing import Any, Callable


def run_and_follow(api_url: str, deployment: str, parameters: dict[str, Any], *, timeout: float = 3600,
                   poll_seconds: float = 1.0, emit: Callable[[str], None] = print) -> tuple[str, str]:
    """Run `deployment` on the server at api_url and print its logs until it ends; (flow run id, state)."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        flow_run = run_deployment(deployment, parameters=parameters, timeout=0)
    emit(f"flow run {flow_run.name} ({flow_run.id}) submitted; UI: {api_url.removesuffix('/api')}"
         f"/runs/flow-run/{flow_run.id}")
    return str(flow_run.id), follow(api_url, str(flow_run.id), timeout=timeout, poll_seconds=poll_seconds, emit=emit)


def follow(api_url: str, flow_run_id: str, *, timeout: float = 3600, poll_seconds: float = 1.0,
           emit: Callable[[str], None] = print) -> str:
    """Print the run's logs until it ends, then its end and the reason; returns the state's name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    seen = 0
    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                sort=LogSort.TIMESTAMP_ASC, offset=seen, limit=200,
            )
            for log in logs:
                emit(f"{log.timestamp:%H:%M:%S} {_level(log.level):8} {log.message}")
            seen += len(logs)
            if run.state is not None and run.state.is_final() and not logs:
                for line in ending(client, run):
                    emit(line)
                return run.state.name
            if time.monotonic() > deadline:
                state = run.state.name if run.state else "unknown"
                emit(f"flow run {run.name}: still {state} after {timeout:.0f}s")
                return f"still {state} after {timeout:.0f}s"
            if not logs:
                time.sleep(poll_seconds)


def ending(client, run) -> list[str]:
    """How a finished run ended: its state and message, and each failed task run's message."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    lines = [f"flow run {run.name}: {run.state.name}" + (f": {run.state.message}" if run.state.message else "")]
    if not run.state.is_completed():
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        for task in sorted(tasks, key=lambda task: task.expected_start_time or task.created):
            if task.state is not None and (task.state.is_failed() or task.state.is_crashed()):
                lines.append(f"  {task.name}: {task.state.name}: {task.state.message or 'no message'}")
    return lines


def _level(level: int) -> str:
    return {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}.get(level // 10 * 10, str(level))
