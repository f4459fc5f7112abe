"""Multi-node launch through torchrun's c10d rendezvous (model/launch.py): two "nodes" on this machine (two torchrun
invocations of one process each, node ranks 0 and 1, gloo, CPU) train the tiny model with the same losses as one node
with two ranks, node 0 reports, every socket listens on 127.0.0.1 only; the endpoint, node rank and job id from the
schedulers' environments; launch files in order; a joining node runs each launch once."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import psutil
import pytest

from model.launch import (finish_launch, job_id_from_env, launch_directory, loopback_store, node_environment,
                          node_rank_from_env, parse_endpoint, serve_node, torchrun_command, write_launch)
from model.train import free_port
from tests.conftest import REPO
from tests.model.test_train import data, launch, losses, ok, spec  # noqa: F401  (data: the module's token fixture)


def listening_addresses(roots: list[psutil.Process]) -> set[str]:
    found = set()
    for root in roots:
        try:
            for process in [root, *root.children(recursive=True)]:
                found |= {c.laddr.ip for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            continue
    return found


def test_two_nodes_train_like_one_node_with_two_ranks(tmp_path, data):  # noqa: F811
    one_node = spec(tmp_path, data, "one-node", zero_stage=1)
    ok(launch(one_node, processes=2))

    two_nodes = spec(tmp_path, data, "two-nodes", zero_stage=1)
    plan = {"phase": "test", "nodes": 2, "nproc_per_node": 1, "rdzv_endpoint": f"127.0.0.1:{free_port()}",
            "rdzv_id": "two-nodes", "spec": str(two_nodes), "env": {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}}
    addresses: set[str] = set()
    with loopback_store(plan["rdzv_endpoint"]):
        # node 1 first: torchrun ranks the agents by (address, pid), so node 1's process becomes global rank 0
        nodes = [subprocess.Popen(torchrun_command(plan), cwd=REPO, env=node_environment(plan, rank),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (1, 0)][::-1]
        outputs = ["", ""]

        def read(index: int) -> None:
            outputs[index] = nodes[index].stdout.read()

        readers = [threading.Thread(target=read, args=(index,)) for index in (0, 1)]
        for reader in readers:
            reader.start()
        roots = [psutil.Process(node.pid) for node in nodes]
        while any(node.poll() is None for node in nodes):
            addresses |= listening_addresses(roots)
            time.sleep(0.05)
        for reader in readers:
            reader.join()
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert losses(two_nodes) == losses(one_node) and len(losses(two_nodes)) == 8
    assert '"world_size": 2' in outputs[0] and '{"step": 8' in outputs[0]  # node 0's first process reports ...
    assert '{"step"' not in outputs[1] and '{"checkpoint"' not in outputs[1]  # ... whatever rank torchrun gave it
    assert (two_nodes.parent / "hf" / "model.safetensors").is_file(), outputs[0][-4000:] + outputs[1][-2000:]
    assert addresses == {"127.0.0.1"}, addresses


def test_endpoint_node_rank_and_job_id():
    assert parse_endpoint("train-0.train:29400") == ("train-0.train", 29400)
    assert parse_endpoint("[fd00::1]:29400") == ("fd00::1", 29400)
    for bad in ("train-0", "host:0", "host:99999", ":29400", "a b:1"):
        with pytest.raises(ValueError, match="host:port"):
            parse_endpoint(bad)
    assert node_rank_from_env({"JOB_COMPLETION_INDEX": "3"}) == 3  # Kubernetes indexed Job
    assert node_rank_from_env({"SLURM_NODEID": "1", "SLURM_PROCID": "7"}) == 1  # Slurm, one task per node
    assert node_rank_from_env({"PET_NODE_RANK": "2"}) == 2  # Kubeflow TrainJob / PyTorchJob
    assert node_rank_from_env({"PRETRAIN_NODE_RANK": "0", "JOB_COMPLETION_INDEX": "5"}) == 0
    assert node_rank_from_env({}) is None
    with pytest.raises(ValueError, match="JOB_COMPLETION_INDEX"):
        node_rank_from_env({"JOB_COMPLETION_INDEX": "x"})
    assert job_id_from_env({"SLURM_JOB_ID": "4242"}) == "4242"
    assert job_id_from_env({"PRETRAIN_JOB_ID": "train-abc", "SLURM_JOB_ID": "1"}) == "train-abc"
    assert job_id_from_env({}) == "default"
    with pytest.raises(ValueError, match="PRETRAIN_JOB_ID"):
        job_id_from_env({"PRETRAIN_JOB_ID": "../x"})


def test_launch_files_and_commands(tmp_path):
    plan = {"phase": "pretrain", "nodes": 2, "nproc_per_node": 4, "rdzv_endpoint": "train-0.train:29400",
            "spec": "/shared/run/spec.json"}
    first, second = write_launch(tmp_path, "job1", plan), write_launch(tmp_path, "job1", plan)
    assert [first.name, second.name] == ["0001.json", "0002.json"]
    assert json.loads(second.read_text())["rdzv_id"] == "job1-2" and not json.loads(second.read_text())["finished"]
    finish_launch(first)
    assert json.loads(first.read_text())["finished"] and first.parent == launch_directory(tmp_path, "job1")
    command = torchrun_command(json.loads(second.read_text()))
    assert command[command.index("--nnodes") + 1] == "2" and command[command.index("--nproc-per-node") + 1] == "4"
    assert command[command.index("--rdzv-backend") + 1] == "c10d" and "--rdzv-conf" not in command  # torch hosts
    assert command[-4:] == ["-m", "model.train", "--spec", "/shared/run/spec.json"]
    env = node_environment(plan, 1, {"PATH": "/bin"})
    assert env["PRETRAIN_NODE_RANK"] == "1" and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in env
    local = {**plan, "rdzv_endpoint": "127.0.0.1:29400", "rdzv_id": "j-1"}
    assert "is_host=false" in torchrun_command(local)
    assert node_environment(local, 0, {})["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def test_a_joining_node_skips_finished_launches_and_refuses_node_zero(tmp_path):
    plan = {"phase": "pretrain", "nodes": 2, "nproc_per_node": 1, "rdzv_endpoint": "127.0.0.1:1", "spec": "x"}
    finish_launch(write_launch(tmp_path, "job", plan))
    messages: list[str] = []
    assert serve_node(tmp_path, "job", 1, idle_timeout=0.5, poll=0.05, log=messages.append) == 0
    assert not any(": joining" in message for message in messages) and "done" in messages[-1]
    with pytest.raises(ValueError, match="node 0 runs the training stage"):
        serve_node(tmp_path, "job", 0, idle_timeout=0.1)
    (launch_directory(tmp_path, "job") / "closed").touch()  # node 0's run ended: no idle wait
    started = time.monotonic()
    assert serve_node(tmp_path, "job", 1, idle_timeout=60, poll=0.05, log=messages.append) == 0
    assert time.monotonic() - started < 30 and "closed the job" in messages[-1]
    write_launch(tmp_path, "job", plan)
    with pytest.raises(ValueError, match="outside the launch's 2 nodes"):
        serve_node(tmp_path, "job", 2, idle_timeout=5, poll=0.05)
