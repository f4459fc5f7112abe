"""Register the deployments of prefect.yaml on the compose stack's Prefect server (the `deploy` service).

What `make up` does with `prefect work-pool create` + `prefect --no-prompt deploy --all`, for containers:
the worker image runs this once, with PRETRAIN_PIPELINE_HOME=/opt/pretrain-pipeline so that the pull
step of prefect.yaml points the workers at the project inside their image. The pipeline's settings that
differ in containers are baked into each deployment's `overrides` parameter:

- S3_ENDPOINT_URL   -> storage.endpoint_url (the S3 service as the workers see it, http://seaweedfs:8333)
- TRAIN_ACCELERATOR -> train.accelerator ("cuda" with the GPU worker; unset keeps pipeline.yaml's)
- TRAIN_WORK_POOL   -> train.work_pool ("local-gpu": the training stages run on the GPU worker's pool)

A run started with its own `overrides` replaces these (Prefect merges parameters key by key), so repeat
them there. `--dry-run` prints the commands instead of running them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

HOME = Path(os.environ.get("PRETRAIN_PIPELINE_HOME") or Path(__file__).resolve().parents[1])
ACCELERATORS = ("cpu", "cuda")


def read_deployments(prefect_file: Path) -> list[dict[str, Any]]:
    spec = yaml.safe_load(prefect_file.read_text())
    deployments = spec.get("deployments") or []
    if not deployments:
        raise SystemExit(f"{prefect_file} declares no deployments")
    return deployments


def work_pools(deployments: list[dict[str, Any]]) -> list[str]:
    return sorted({d["work_pool"]["name"] for d in deployments})


def overrides_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if env.get("S3_ENDPOINT_URL"):
        overrides["storage.endpoint_url"] = env["S3_ENDPOINT_URL"]
    accelerator = env.get("TRAIN_ACCELERATOR", "")
    if accelerator:
        if accelerator not in ACCELERATORS:
            raise SystemExit(f"TRAIN_ACCELERATOR must be one of {', '.join(ACCELERATORS)}, not {accelerator!r}")
        overrides["train.accelerator"] = accelerator
    if env.get("TRAIN_WORK_POOL"):
        overrides["train.work_pool"] = env["TRAIN_WORK_POOL"]
    return overrides


def commands(prefect_file: Path, env: Mapping[str, str]) -> list[list[str]]:
    """The prefect CLI calls: create each work pool, then deploy each deployment with the overrides."""
    deployments = read_deployments(prefect_file)
    overrides = overrides_from_env(env)
    prefect = [sys.executable, "-m", "prefect"]
    calls = [[*prefect, "work-pool", "create", pool, "--type", "process", "--overwrite"]
             for pool in work_pools(deployments)]
    for deployment in deployments:
        call = [*prefect, "--no-prompt", "deploy", "--prefect-file", str(prefect_file), "--name", deployment["name"]]
        if overrides:
            declared = (deployment.get("parameters") or {}).get("overrides") or {}
            call += ["--params", json.dumps({"overrides": {**declared, **overrides}})]
        calls.append(call)
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefect-file", type=Path, default=HOME / "prefect.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the commands (JSON, one a line)")
    args = parser.parse_args(argv)
    env = {**os.environ, "PRETRAIN_PIPELINE_HOME": str(HOME)}
    for call in commands(args.prefect_file, env):
        if args.dry_run:
            print(json.dumps(call))
            continue
        print("+ " + " ".join(call[1:]), flush=True)
        subprocess.run(call, cwd=HOME, env=env, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
