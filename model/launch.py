"""Starting the ranks of one training run on several nodes through torchrun's c10d rendezvous.

The training stage runs on node 0: it writes the run spec and a launch file into a directory every node
mounts at the same path (`train.work_dir`), and starts torchrun there. Every other node runs one long-lived
entry point (`pretrain-pipeline train-node`, started by a Kubernetes indexed Job, a TrainJob or Slurm's srun)
that waits for launch files and starts the same torchrun command for each, so the nodes meet at the
rendezvous endpoint and train as one world. Launch files live under `<work_dir>/rendezvous/<job id>/`,
numbered in order (one per training phase or retry), and a `closed` file ends the job; the job id comes from the scheduler (PRETRAIN_JOB_ID,
else SLURM_JOB_ID), so the nodes of one job agree on it without talking.

torchrun assigns the global ranks in an order of its own; the trainer's reporting rank (metrics, checkpoint
announcements, export) is the first process of node 0, named by PRETRAIN_NODE_RANK, so the stage reads its
own node's output whatever ranks torchrun hands out.

On one machine (a loopback endpoint, as in the tests) torch's stores would listen on every interface:
node 0 then hosts the rendezvous store itself on 127.0.0.1 (`loopback_store`), every agent joins as a
client (`is_host=false`), and the workers' store is left to the trainer (model/train.py binds it to
127.0.0.1) instead of being shared from the agent. Elsewhere torch's defaults apply.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "localhost")
# The node's index, as each scheduler names it for a process started once per node.
NODE_RANK_VARIABLES = ("PRETRAIN_NODE_RANK", "JOB_COMPLETION_INDEX", "SLURM_NODEID", "PET_NODE_RANK", "NODE_RANK",
                       "GROUP_RANK")
JOB_ID_VARIABLES = ("PRETRAIN_JOB_ID", "SLURM_JOB_ID")


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """'host:port' (a name, an IPv4 address or a bracketed IPv6 address) -> (host, port)."""
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})", endpoint or "")
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise ValueError(f"expected host:port (e.g. train-0.train:29400), got {endpoint!r}")
    return match.group(1).strip("[]"), int(match.group(2))


def is_loopback(endpoint: str) -> bool:
    return parse_endpoint(endpoint)[0] in LOOPBACK


def node_rank_from_env(env: Mapping[str, str] = os.environ) -> int | None:
    """This node's index from the scheduler's environment (the first of NODE_RANK_VARIABLES set), or None."""
    for name in NODE_RANK_VARIABLES:
        if env.get(name, "").strip():
            value = env[name].strip()
            if not value.isdigit():
                raise ValueError(f"{name}={value!r} is not a node index")
            return int(value)
    return None


def job_id_from_env(env: Mapping[str, str] = os.environ) -> str:
    """The id the nodes of one job share (names the launch directory and the rendezvous); 'default' if none."""
    for name in JOB_ID_VARIABLES:
        value = env.get(name, "").strip()
        if value:
            if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", value):
                raise ValueError(f"{name}={value!r}: use letters, digits, '.', '_' and '-'")
            return value
    return "default"


def torchrun_command(launch: dict) -> list[str]:
    """The torchrun command of one node for a launch (the same on every node)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(launch["nodes"]),
               "--nproc-per-node", str(launch["nproc_per_node"]), "--rdzv-backend", "c10d",
               "--rdzv-endpoint", launch["rdzv_endpoint"], "--rdzv-id", launch["rdzv_id"], "--max-restarts", "0"]
    if is_loopback(launch["rdzv_endpoint"]):
        command += ["--rdzv-conf", "is_host=false", "--local-addr", "127.0.0.1"]
    return command + ["-m", "model.train", "--spec", launch["spec"]]


def node_environment(launch: dict, node_rank: int, base: Mapping[str, str] = os.environ) -> dict[str, str]:
    env = {**base, **launch.get("env", {}), "PRETRAIN_NODE_RANK": str(node_rank), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))}
    if is_loopback(launch["rdzv_endpoint"]):
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"  # the workers' store: bound to 127.0.0.1 by model/train.py
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


@contextmanager
def loopback_store(endpoint: str) -> Iterator[None]:
    """Host the c10d rendezvous store on the endpoint, bound to 127.0.0.1, while the block runs (a loopback
    endpoint only; otherwise torchrun's agent on the endpoint's host hosts it)."""
    if not is_loopback(endpoint):
        yield
        return
    import datetime

    import torch.distributed as dist

    _, port = parse_endpoint(endpoint)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                          master_listen_fd=listener.detach(), use_libuv=False,
                          timeout=datetime.timedelta(minutes=30))
    try:
        yield
    finally:
        del store


def launch_directory(work_dir: str | Path, job_id: str) -> Path:
    return Path(work_dir) / "rendezvous" / job_id


def write_launch(work_dir: str | Path, job_id: str, launch: dict) -> Path:
    """The next numbered launch file of this job (its rendezvous id is the job id and that number)."""
    directory = launch_directory(work_dir, job_id)
    directory.mkdir(parents=True, exist_ok=True)
    number = 1 + max((int(path.stem) for path in directory.glob("[0-9]*.json")), default=0)
    path = directory / f"{number:04d}.json"
    body = {**launch, "rdzv_id": f"{job_id}-{number}", "finished": False}
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(body, indent=1))
    partial.replace(path)  # whole, or absent: a waiting node never reads half a file
    return path


def finish_launch(path: Path) -> None:
    body = json.loads(path.read_text())
    body["finished"] = True
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(body, indent=1))
    partial.replace(path)


def serve_node(work_dir: str | Path, job_id: str, node_rank: int, idle_timeout: float = 1800.0,
               poll: float = 1.0, log: Callable[[str], None] = print) -> int:
    """Node `node_rank` (>= 1) of a job: start torchrun for every launch node 0 writes, in order, until node 0
    closes the job (a `closed` file beside the launches, which the job scripts of deploy/ write when node 0's run
    ends) or no new launch has come for `idle_timeout` seconds. Returns the number of launches joined that failed."""
    if node_rank < 1:
        raise ValueError("node 0 runs the training stage itself; train-node is for node ranks 1 and up")
    directory = launch_directory(work_dir, job_id)
    joined: set[str] = set()
    failures, idle_since = 0, time.monotonic()
    log(f"node {node_rank}: waiting for launches in {directory}")
    while time.monotonic() - idle_since < idle_timeout:
        pending = [path for path in sorted(directory.glob("[0-9]*.json")) if path.name not in joined]
        if not pending and (directory / "closed").exists():
            log(f"node {node_rank}: node 0 closed the job; done")
            return failures
        if not pending:
            time.sleep(poll)
            continue
        path = pending[0]
        joined.add(path.name)
        launch = json.loads(path.read_text())
        if launch.get("finished"):  # ended before this node came (an earlier attempt): nothing to join
            continue
        if node_rank >= launch["nodes"]:
            raise ValueError(f"node rank {node_rank} is outside the launch's {launch['nodes']} nodes ({path})")
        log(f"node {node_rank}: joining {launch.get('phase', 'training')} ({path.name}, rendezvous "
            f"{launch['rdzv_id']} at {launch['rdzv_endpoint']})")
        result = subprocess.run(torchrun_command(launch), cwd=REPO, env=node_environment(launch, node_rank))
        log(f"node {node_rank}: {path.name} ended with exit code {result.returncode}")
        failures += result.returncode != 0
        idle_since = time.monotonic()
    log(f"node {node_rank}: no new launch for {idle_timeout:.0f} s; done")
    return failures
