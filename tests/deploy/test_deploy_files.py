"""The multi-node job files of deploy/: the Kubernetes indexed Job and the Slurm batch script agree with themselves
(node count, rendezvous host and port, GPUs per node), start the stage on node 0 and `train-node` elsewhere, close the
job when node 0 ends, and pass settings that pipeline.yaml's schema accepts. (No cluster here: not applied.)"""

from __future__ import annotations

import re
import subprocess

import yaml

from model.launch import parse_endpoint
from pipeline.config import load_config
from tests.conftest import REPO

KUBERNETES = REPO / "deploy" / "kubernetes" / "train-indexed-job.yaml"
SLURM = REPO / "deploy" / "slurm" / "train.sbatch"


def overrides(script: str, values: dict[str, str]) -> list[str]:
    """The script's `--set KEY=VALUE` items with its shell variables (and `$((A * B))`) replaced by `values`."""
    script = re.sub(r"\$\(\((\w+) \* (\w+)\)\)", lambda m: str(int(values[m[1]]) * int(values[m[2]])), script)
    for name, value in sorted(values.items(), key=lambda item: -len(item[0])):
        script = script.replace(f"${name}", value)
    return re.findall(r"--set ([^\s)]+)", script)


def test_the_kubernetes_indexed_job_starts_node_0_and_the_joining_nodes():
    service, job = yaml.safe_load_all(KUBERNETES.read_text())
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {item["name"]: item for item in container["env"]}
    nodes, gpus = env["NODES"]["value"], env["GPUS_PER_NODE"]["value"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == int(nodes)
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    assert env["PRETRAIN_JOB_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/job-name']"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == int(gpus)
    script = container["args"][0]
    settings = overrides(script, {"NODES": nodes, "GPUS_PER_NODE": gpus})
    endpoint = next(item.split("=", 1)[1] for item in settings if item.startswith("train.rdzv_endpoint="))
    host, port = parse_endpoint(endpoint)
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"  # pod 0's hostname.subdomain
    assert port == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    train = load_config(REPO / "pipeline.yaml", settings).train
    assert (train.nodes, train.processes, train.accelerator) == (int(nodes), int(nodes) * int(gpus), "cuda")
    assert 'if [ "$JOB_COMPLETION_INDEX" = 0 ]' in script and "pretrain-pipeline run" in script
    assert 'exec pretrain-pipeline train-node "${settings[@]}"' in script
    assert '/shared/train/rendezvous/$PRETRAIN_JOB_ID/closed' in script and "/shared/train" in settings[3]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["shared"] == "/shared" and mounts["dshm"] == "/dev/shm"
    assert not any("value" in item and "SECRET" in name for name, item in env.items())  # secrets from a Secret


def test_the_slurm_script_starts_node_0_and_the_joining_nodes():
    script = SLURM.read_text()
    assert subprocess.run(["bash", "-n", str(SLURM)]).returncode == 0
    nodes = re.search(r"#SBATCH --nodes=(\d+)", script).group(1)
    gpus = re.search(r"#SBATCH --gpus-per-node=(\d+)", script).group(1)
    assert re.search(r"GPUS_PER_NODE=\$\{GPUS_PER_NODE:-(\d+)\}", script).group(1) == gpus
    settings = overrides(script, {"SLURM_NNODES": nodes, "GPUS_PER_NODE": gpus, "HEAD": "gpu-node-001",
                                  "RDZV_PORT": "29400", "WORK": "/shared/train"})
    train = load_config(REPO / "pipeline.yaml", settings).train
    assert (train.nodes, train.processes, train.rdzv_endpoint) == (int(nodes), int(nodes) * int(gpus),
                                                                   "gpu-node-001:29400")
    assert 'if [ "$SLURM_NODEID" = 0 ]' in script and 'exec pretrain-pipeline train-node "${settings[@]}"' in script
    assert '$WORK/rendezvous/$SLURM_JOB_ID/closed' in script and "--ntasks-per-node=1" in script
