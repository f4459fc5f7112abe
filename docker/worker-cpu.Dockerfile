# A CPU worker for the pretrain-pipeline flows: the project and its dependencies, torch's CPU build
# installed first so pip never pulls a CUDA build (as `make` does). Run it against any Prefect server
# and S3 endpoint; docker/compose.yaml builds it for the `worker` and `deploy` services:
#   docker build -f docker/worker-cpu.Dockerfile -t pretrain-pipeline-worker:cpu .
# Credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), never the image.
FROM python:3.11-slim

# Keep in step with the torch pin of pyproject.toml's `train` extra (a test checks it).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

WORKDIR /opt/pretrain-pipeline
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    DS_ACCELERATOR=cpu \
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
# The project, then the fastText language-ID model that `make` fetches (python -m pipeline.models).
RUN pip install --no-deps -e . \
    && pip check \
    && python -m pipeline.models
COPY pipeline.yaml prefect.yaml ./
COPY data ./data
COPY docker/deploy.py ./docker/deploy.py

# Flows write their scratch files to /tmp; the project directory only needs to be writable for a
# `storage.backend: local` run (.artifacts/).
RUN useradd --create-home --uid 1000 pipeline && chown pipeline /opt/pretrain-pipeline
USER 1000

# The work pool of prefect.yaml (and of `make up`, pipeline/stack.py).
CMD ["prefect", "worker", "start", "--pool", "local-process", "--type", "process"]
