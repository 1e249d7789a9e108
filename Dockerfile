# syntax=docker/dockerfile:1
# trackin: one small PyTorch model per stream behind a FastAPI service.
#
#   docker build -t trackin .
#   docker run -p 8000:8000 -e TRACKIN_REDIS_URL=redis://redis:6379/0 trackin
#
# Settings come from TRACKIN_* environment variables (TRACKIN_REDIS_URL, TRACKIN_DATA_DIR, ...).
#
# GPU: torch's CUDA wheels bundle the CUDA runtime, so this slim image runs on a GPU host (NVIDIA driver and
# container toolkit there) once the wheel index is switched:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t trackin:cuda .
# BASE_IMAGE swaps the base of both stages, e.g. for a site-approved CUDA image. It must provide python3
# (>= 3.11) with the venv module, as python:3.11-slim does; the stock nvidia/cuda images do not ship Python,
# so build one FROM nvidia/cuda:<version>-runtime-ubuntu24.04 that installs python3 and python3-venv.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from its own index: the largest layer, and it changes far less often than the code.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY client ./client
COPY pyproject.toml README* ./
# trackin/ holds the import root: its models, service and replay are links to the folders copied beside it.
COPY trackin ./trackin
COPY models ./models
COPY service ./service
COPY replay ./replay
# The client first (same call), so that the replay extra's trackin-client is the one in client/.
RUN pip install --no-cache-dir ./client "./[replay]"

FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PROMETHEUS_DISABLE_CREATED_SERIES=True \
    TRACKIN_DATA_DIR=/var/lib/trackin
RUN useradd --system --no-log-init --uid 10001 --user-group \
        --home-dir /var/lib/trackin --create-home --shell /usr/sbin/nologin trackin
COPY --from=build /opt/venv /opt/venv
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/trackin
VOLUME ["/var/lib/trackin"]
EXPOSE 8000
# No curl in the slim image; Python is there anyway. Non-2xx or no answer -> exit 1 -> unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["trackin", "serve", "--host", "0.0.0.0", "--port", "8000"]
