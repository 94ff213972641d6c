# syntax=docker/dockerfile:1
# lorafarm worker: one warm base model, LoRA adapters swapped per job. Also the devhub (dev only).
#
#   GPU (default): docker build -f deploy/worker.Dockerfile -t lorafarm/worker:0.1.0 .
#   CPU (tiny demo, no CUDA download):
#     docker build -f deploy/worker.Dockerfile -t lorafarm/worker:0.1.0-cpu \
#       --build-arg BASE_IMAGE=ubuntu:24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#   devhub (tiny zoo server): add --target devhub (and the CPU build args).
#
# torch wheels carry their own CUDA libraries; the CUDA base image brings the NVIDIA container
# runtime settings (NVIDIA_VISIBLE_DEVICES, driver capabilities). Keep TORCH_INDEX_URL's CUDA
# version (cu128) no newer than the host driver supports.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${BASE_IMAGE} AS runtime
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG DEBIAN_FRONTEND=noninteractive

# HF_HOME is the model cache: mount a volume there (compose: hf-cache; k8s: emptyDir or a PVC).
# The probe server (/health, /ready, /metrics) must be reachable from outside the container.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    LORAFARM_WORKER_HOST=0.0.0.0 \
    LORAFARM_WORKER_PORT=9100

# Python from the base image's Ubuntu release (24.04: Python 3.12; lorafarm needs >= 3.11).
# g++ and python3-dev: torch.compile (LORAFARM_COMPILE) builds kernels at start, CPU inductor's
# with g++, and on a GPU Triton's launcher with gcc and Python's headers.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV" \
    && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin lorafarm \
    && mkdir -p "$HF_HOME" \
    && chown -R 10001:10001 /cache

# torch from the index that matches the device (CUDA by default, CPU for the demo), before the
# project so that `pip install .` finds it satisfied.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY common/ common/
COPY worker/ worker/
RUN pip install .

# Dev only: the Hub-compatible server and the tiny zoo generator (python -m devhub ...).
FROM runtime AS devhub
COPY devhub/ devhub/
RUN pip install --no-deps .
USER 10001:10001
EXPOSE 8900
CMD ["sh", "-c", "python -m devhub zoo /tmp/zoo && exec python -m devhub serve --root /tmp/zoo --host 0.0.0.0 --port 8900"]

# The default target (last stage): the worker.
FROM runtime AS worker
USER 10001:10001
VOLUME ["/cache/huggingface"]
EXPOSE 9100

# /ready: base loaded and Redis reachable. The probe server starts once the base is loaded, so
# the start period covers a first download of the base (SDXL: about 7 GB) plus its load.
HEALTHCHECK --interval=15s --timeout=5s --start-period=15m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('LORAFARM_WORKER_PORT', '9100'), timeout=4)"]

# The pool comes from LORAFARM_BASE (or append --base REPO_ID).
ENTRYPOINT ["python", "-m", "worker"]
