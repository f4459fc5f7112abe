# A GPU worker for the pretrain-pipeline flows: torch's CUDA build, then the project with the `train`
# extra. docker/compose.yaml builds it for the `worker-cuda` service (profile `cuda`):
#   docker build -f docker/worker-cuda.Dockerfile -t pretrain-pipeline-worker:cuda .
#   docker run --gpus all -e PREFECT_API_URL=... -e AWS_ACCESS_KEY_ID=... -e AWS_SECRET_ACCESS_KEY=... \
#     pretrain-pipeline-worker:cuda
# The torch wheels carry their own CUDA runtime, cuDNN and NCCL (as pip packages), so a plain Python
# base image is enough: only the driver comes from the host, through the NVIDIA Container Toolkit.
# torch 2.13.0's CUDA 13.0 build (the one PyPI also serves for Linux) needs a driver of the R580
# series or newer; for an older driver pass another index as TORCH_INDEX, e.g. .../whl/cu128, if the
# PyTorch index carries torch 2.13.0 for it.
# Credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), never the image.
FROM python:3.11-slim

# Keep in step with the torch pin of pyproject.toml's `train` extra (a test checks it).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130

WORKDIR /opt/pretrain-pipeline
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    DS_ACCELERATOR=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PRETRAIN_PIPELINE_HOME=/opt/pretrain-pipeline

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY corpus ./corpus
COPY tasks ./tasks
COPY flows ./flows
COPY model ./model
# The project (pip keeps the CUDA torch above: it satisfies torch==2.13.0), then the fastText
# language-ID model that `make` fetches (python -m pipeline.models).
RUN pip install -e '.[train]' \
    && pip check \
    && python -m pipeline.models
COPY pipeline.yaml prefect.yaml ./
COPY data ./data
COPY docker/deploy.py ./docker/deploy.py

RUN useradd --create-home --uid 1000 pipeline && chown pipeline /opt/pretrain-pipeline
USER 1000

# The work pool of prefect.yaml (and of `make up`, pipeline/stack.py). The training stages take
# DS_ACCELERATOR from pipeline.yaml's train.accelerator: register the deployments with
# TRAIN_ACCELERATOR=cuda (docker/deploy.py) or pass the override with the run.
CMD ["prefect", "worker", "start", "--pool", "local-process", "--type", "process"]
