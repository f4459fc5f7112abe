"""deploy/kubernetes/gpu-pool.json, the Kubernetes work pool's base job template for the training flow runs:
accepted by `prefect work-pool create --type kubernetes` on a real Prefect server (the test harness's, with
prefect-kubernetes installed), read back unchanged, and rendered by prefect-kubernetes' own job configuration
into a Job with the GPUs, /dev/shm, node selector and tolerations of the job variables and the S3 keys from a
Kubernetes secret."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

TEMPLATE = REPO / "deploy" / "kubernetes" / "gpu-pool.json"
pytestmark = pytest.mark.usefixtures("prefect_harness")


def _create(name: str, template) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    return subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", name, "--type", "kubernetes",
                           "--base-job-template", str(template), "--overwrite"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()})


def _job(values: dict) -> dict:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads(TEMPLATE.read_text())
    configuration = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
    configuration._populate_env_in_manifest()  # what the worker does before it creates the Job
    return configuration.job_manifest


def test_the_server_accepts_the_template_and_keeps_it():
    from prefect import get_client

    result = _create("k8s-gpu", TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("k8s-gpu")
    assert pool.type == "kubernetes"
    assert pool.base_job_template == json.loads(TEMPLATE.read_text())


def test_the_server_refuses_a_template_whose_placeholders_are_undeclared(tmp_path):
    broken = json.loads(TEMPLATE.read_text())
    del broken["variables"]["properties"]["gpus"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    result = _create("k8s-broken", tmp_path / "broken.json")
    assert result.returncode != 0 and "gpus" in result.stdout + result.stderr


def test_job_variables_become_gpus_shm_placement_and_secret_backed_credentials():
    manifest = _job({"gpus": 8, "shm_size": "64Gi", "node_selector": {"pool": "h100"},
                     "tolerations": [{"key": "gpu", "operator": "Exists"}], "s3_secret_name": "team-s3",
                     "env": {"NCCL_DEBUG": "WARN"}})
    pod = manifest["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "pretrain-pipeline-worker:cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 8
    [mount] = container["volumeMounts"]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert mount["mountPath"] == "/dev/shm" and volume["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert pod["nodeSelector"] == {"pool": "h100"} and pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    env = {entry["name"]: entry for entry in container["env"]}
    assert env["NCCL_DEBUG"]["value"] == "WARN"
    for name, key in (("AWS_ACCESS_KEY_ID", "access_key"), ("AWS_SECRET_ACCESS_KEY", "secret_key")):
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": "team-s3", "key": key}}}
    defaults = _job({})["spec"]["template"]["spec"]
    assert defaults["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert defaults["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert defaults["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_the_template_holds_no_credential_values():
    template = json.loads(TEMPLATE.read_text())
    for container in template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"]:
        for entry in container["env"]:
            assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], entry
    text = json.dumps(copy.deepcopy(template)).lower()
    assert "aws_secret_access_key\": \"" not in text and "password" not in text
