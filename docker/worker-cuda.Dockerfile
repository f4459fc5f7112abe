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
# Then every other package at the exact version and hash of the lock (`make lock`), without resolving:
# the image gets the environment the tests ran in, whatever the registry holds by then.
COPY requirements/py311-worker.txt ./requirements/py311-worker.txt
RUN pip install --no-deps --require-hashes -r requirements/py311-worker.txt
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY corpus ./corpus
COPY tasks ./tasks
COPY flows ./flows
COPY model ./model
# The project (--no-deps: the CUDA torch above stays), then the fastText
# language-ID model that `make` fetches (python -m pipeline.models).
RUN pip install --no-deps -e . \
    && pip check \
    && python -m pipeline.models
COPY pipeline.yaml prefect.yaml ./
COPY data ./data
COPY docker/deploy.py ./docker/deploy.py

RUN useradd --create-home --uid 1000 pipeline && chown pipeline /opt/pretrain-pipeline
USER 1000

# The pool of prefect.yaml's `train` deployment (and of `make up`, pipeline/stack.py): the training stages
# run here when train.work_pool is local-gpu. They take DS_ACCELERATOR from pipeline.yaml's
# train.accelerator: register the deployments with TRAIN_ACCELERATOR=cuda (docker/deploy.py) or pass the
# override with the run.
CMD ["prefect", "worker", "start", "--pool", "local-gpu", "--type", "process"]
