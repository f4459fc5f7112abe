# A CPU worker for the pretrain-pipeline flows: the project and its dependencies, torch's CPU build
# installed first so pip never pulls a CUDA build. Run it against any Prefect server and S3 endpoint:
#   docker build -f docker/worker-cpu.Dockerfile -t pretrain-pipeline-worker .
FROM python:3.11-slim

WORKDIR /opt/pretrain-pipeline
ENV PIP_NO_CACHE_DIR=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    PRETRAIN_PIPELINE_HOME=/opt/pretrain-pipeline

RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY tasks ./tasks
COPY flows ./flows
COPY model ./model
RUN pip install -e '.[train]'
COPY pipeline.yaml prefect.yaml ./
COPY data ./data

# Credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), never the image.
CMD ["prefect", "worker", "start", "--pool", "local-process", "--type", "process"]
