# syntax=docker/dockerfile:1
# lorafarm router: HTTP API, placement, waiting for results. No torch in this image.
#   docker build -f deploy/router.Dockerfile -t lorafarm/router:0.1.0 .
FROM python:3.11-slim-bookworm

# The settings default to loopback; in a container the router must listen on all interfaces.
# The router only reads Hub metadata; huggingface_hub's folder goes to /tmp, which stays
# writable under a read-only root filesystem (k8s mounts an emptyDir there).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/tmp/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    LORAFARM_HOST=0.0.0.0 \
    LORAFARM_PORT=8888

WORKDIR /app

# Dependencies first (own layer, cached while only code changes). An explicit list rather than
# `pip install .`, whose dependencies include torch: see deploy/router-requirements.txt.
COPY deploy/router-requirements.txt /tmp/router-requirements.txt
RUN pip install -r /tmp/router-requirements.txt

# The project itself, only the packages the router runs; --no-deps keeps torch out.
COPY pyproject.toml README.md ./
COPY common/ common/
COPY router/ router/
RUN pip install --no-deps . \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin lorafarm

USER 10001:10001
EXPOSE 8888

# /ready: the process answers and Redis is reachable.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('LORAFARM_PORT', '8888'), timeout=4)"]

CMD ["python", "-m", "router"]
