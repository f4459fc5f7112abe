"""The local stack behind `make up` / `make down`, the demo and the deployment tests.

On 127.0.0.1: SeaweedFS (S3, with generated credentials), a Prefect server (SQLite under the stack
directory), a `process` work pool with a worker, a second `process` pool with its own worker standing in for
a GPU pool (`local-gpu`: the `train` deployment's, which runs the training stages when pipeline.yaml sets
`train.work_pool: local-gpu`), the global concurrency limit of `train.concurrency_limit`, and the
deployments of prefect.yaml registered.
Everything the stack keeps (object data, Prefect's database, logs, credentials) lives in one
directory, `.stack/` by default, so `make down` + `make up` finds the same artifacts and runs again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from .seaweed import HOST, SeaweedServer, port_is_free, start_seaweed, stop_seaweed

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / ".stack"
DEFAULT_S3_PORT = 8333
DEFAULT_PREFECT_PORT = 4200
WORK_POOL = "local-process"
TRAIN_POOL = "local-gpu"  # the pool of prefect.yaml's `train` deployment
# Workers ask for scheduled runs every 10 s by default; a training flow run waits for that once per stage.
WORKER_QUERY_SECONDS = "2"
STATE = "state.json"
SCHEDULE_STATE = "refresh-schedule.json"  # refresh.active as last applied (pipeline/schedule.py)


@dataclass
class Stack:
    directory: str
    s3: SeaweedServer
    prefect_port: int
    server_pid: int | None
    worker_pid: int | None
    train_worker_pid: int | None = None

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}"

    def env(self) -> dict[str, str]:
        """What a shell needs to talk to this stack (`prefect deployment run`, the CLI)."""
        return {
            **self.s3.env(),
            "PREFECT_API_URL": self.api_url,
        }


def prefect_env(home: Path) -> dict[str, str]:
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "true",
    }


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:
        return True


def load_stack(directory: Path = DEFAULT_DIR) -> Stack | None:
    path = Path(directory) / STATE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    data["s3"] = SeaweedServer(**data["s3"])
    return Stack(**data)


def _wait_http(url: str, timeout: float, what: str, log: Path, pid: int) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise RuntimeError(f"{what} exited; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f}s; see {log}")


def _spawn(args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> subprocess.Popen:
    handle = open(log, "ab")
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def _run(args: list[str], env: dict[str, str], log: Path) -> None:
    with open(log, "ab") as handle:
        result = subprocess.run(args, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])}… failed with code {result.returncode}; see {log}")


def up(directory: Path = DEFAULT_DIR, *, s3_port: int = DEFAULT_S3_PORT, prefect_port: int = DEFAULT_PREFECT_PORT,
       config_path: Path = REPO / "pipeline.yaml", say=print) -> Stack:
    """Start (or find running) SeaweedFS, the Prefect server, the work pool, deployments (with the
    cpt-refresh schedule of `config_path`) and a worker."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    existing = load_stack(directory)
    if existing and all(_alive(pid) for pid in (existing.s3.pid, existing.server_pid, existing.worker_pid,
                                                 existing.train_worker_pid)):
        say(f"stack already running: Prefect UI {existing.ui_url}, S3 {existing.s3.endpoint_url}")
        return existing
    if existing:
        down(directory, say=lambda _msg: None)
    for port, what in ((s3_port, "S3"), (prefect_port, "Prefect")):
        if not port_is_free(port):
            raise RuntimeError(f"port {port} for {what} on {HOST} is taken; free it or choose another port")
    from .config import load_config

    config = load_config(config_path)  # an invalid config fails before anything starts

    credentials_path = directory / "credentials.json"
    credentials = json.loads(credentials_path.read_text()) if credentials_path.exists() else {}
    say(f"starting SeaweedFS S3 on {HOST}:{s3_port} ...")
    s3 = start_seaweed(directory / "seaweedfs", s3_port=s3_port, access_key=credentials.get("access_key"),
                       secret_key=credentials.get("secret_key"))
    credentials_path.write_text(json.dumps({"access_key": s3.access_key, "secret_key": s3.secret_key}))
    credentials_path.chmod(0o600)
    stack = Stack(str(directory), s3, prefect_port, None, None)
    _save(stack)
    try:
        _start_prefect(stack, config, say)
    except BaseException:
        down(directory, say=lambda _msg: None)  # nothing half-started is left running
        raise
    _write_env_file(stack)
    return stack


def _write_env_file(stack: Stack) -> Path:
    """`<stack dir>/env`, for `. .stack/env`: the stack's variables, and this venv's bin/ first on PATH
    (so `prefect` and `pretrain-pipeline` are found without activating the venv)."""
    env_file = Path(stack.directory) / "env"
    lines = [f"export {key}={value}\n" for key, value in stack.env().items()]
    lines.append(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    env_file.write_text("".join(lines))
    env_file.chmod(0o600)
    return env_file


def _start_prefect(stack: Stack, config, say) -> None:
    """The Prefect server, the work pool, the deployments with the refresh schedule, the automations
    of `alerts:`, and a worker."""
    from .alerts import apply_alerts
    from .schedule import apply_refresh_schedule

    directory, prefect_port = Path(stack.directory), stack.prefect_port

    env = {**os.environ, **prefect_env(directory / "prefect")}
    env.pop("PREFECT_API_URL", None)
    say(f"starting Prefect server on {HOST}:{prefect_port} ...")
    server_log = directory / "prefect-server.log"
    # The UI asks the API at PREFECT_UI_API_URL, which otherwise assumes the default port 4200;
    # PREFECT_UI_URL makes the links in the automations' notifications point at this UI.
    server_env = {**env, "PREFECT_UI_API_URL": f"http://{HOST}:{prefect_port}/api", "PREFECT_UI_URL": stack.ui_url}
    server = _spawn([_bin("prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)], server_env,
                    server_log)
    stack.server_pid = server.pid
    _save(stack)
    _wait_http(f"{stack.api_url}/health", 180, "the Prefect server", server_log, server.pid)

    client_env = {**env, **stack.env(), "PRETRAIN_PIPELINE_HOME": str(REPO)}
    setup_log = directory / "prefect-setup.log"
    say(f"creating work pools {WORK_POOL!r} and {TRAIN_POOL!r} and registering the deployments of prefect.yaml ...")
    for pool in (WORK_POOL, TRAIN_POOL):
        _run([_bin("prefect"), "work-pool", "create", pool, "--type", "process", "--overwrite"], client_env, setup_log)
    _run([_bin("prefect"), "--no-prompt", "deploy", "--all"], client_env, setup_log)
    schedule = apply_refresh_schedule(stack.api_url, config.refresh, directory / SCHEDULE_STATE)
    say(f"{schedule['deployment']}: cron {schedule['cron']!r} ({schedule['timezone']}), "
        f"{'active' if schedule['active'] else 'paused'}"
        f"{' (as set in the UI or CLI; refresh.active unchanged)' if schedule['kept'] else ''}")
    for automation in apply_alerts(stack.api_url, config.alerts):
        say(f"automation {automation['name']!r}: notifies {automation['notify']}")
    limit = apply_concurrency_limit(stack.api_url, config.train.concurrency_limit)
    if limit:
        say(f"global concurrency limit {limit['name']!r}: {limit['slots']} training run(s) at once")

    say(f"starting a worker on {WORK_POOL!r} and one on {TRAIN_POOL!r} ...")
    worker_env = {**client_env, "PREFECT_WORKER_QUERY_SECONDS": WORKER_QUERY_SECONDS}
    worker = _spawn([_bin("prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process"],
                    worker_env, directory / "worker.log")
    stack.worker_pid = worker.pid
    _save(stack)
    train_worker = _spawn([_bin("prefect"), "worker", "start", "--pool", TRAIN_POOL, "--type", "process"],
                          worker_env, directory / "train-worker.log")
    stack.train_worker_pid = train_worker.pid
    _save(stack)


def apply_concurrency_limit(api_url: str, limit) -> dict | None:
    """Create or update the global concurrency limit of `train.concurrency_limit` (None when its name is null)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if limit.name is None:
        return None
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(limit.name, limit.slots)
    return {"name": limit.name, "slots": limit.slots}


def _save(stack: Stack) -> None:
    path = Path(stack.directory) / STATE
    path.write_text(json.dumps(asdict(stack), indent=2))
    path.chmod(0o600)


def _stop_group(pid: int | None, signals: tuple[signal.Signals, ...], grace: float = 15.0) -> None:
    """Signal a process group, escalating through `signals`, until it is gone."""
    if not pid:
        return
    for sig in signals:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _alive(pid)


def down(directory: Path = DEFAULT_DIR, say=print) -> None:
    """Stop worker, Prefect server and SeaweedFS; their data stays in the stack directory."""
    stack = load_stack(directory)
    if stack is None:
        say("no stack state found; nothing to stop")
        return
    # A Prefect worker ignores the first SIGTERM; SIGINT makes it shut down cleanly.
    for worker_pid in (stack.worker_pid, stack.train_worker_pid):
        _stop_group(worker_pid, (signal.SIGINT, signal.SIGTERM), grace=10.0)
    _stop_group(stack.server_pid, (signal.SIGTERM,), grace=15.0)
    stop_seaweed(stack.s3)
    (Path(directory) / STATE).unlink(missing_ok=True)
    say("stack stopped (data kept in " + str(directory) + ")")
