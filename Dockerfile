# tileseg's image: the HTTP service (`tileseg serve`) and the queue worker (`tileseg worker`).
#
#   docker build -t tileseg .                                   # CUDA runtime base, CUDA build of PyTorch
#   docker build -t tileseg:cpu --build-arg TORCH_VARIANT=cpu . # slim Debian base, CPU build of PyTorch
#
# The install and start steps are docker/install.sh and docker/entrypoint.sh, which CI runs too. The shipped
# checkpoints are in /weights (TILESEG_WEIGHTS_DIR): mount a folder there to serve others. The data
# directory (job table, uploads, results) is /data: a volume. Not built in CI (no Docker engine there).

ARG TORCH_VARIANT=cuda
ARG CUDA_BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG CPU_BASE=python:3.11-slim-bookworm

# ---- the two bases: only the one that TORCH_VARIANT names is built --------------------------------------
FROM ${CUDA_BASE} AS base-cuda
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM ${CPU_BASE} AS base-cpu

FROM base-${TORCH_VARIANT} AS base
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# ---- build: the virtual environment and the weights ------------------------------------------------------
FROM base AS build
ARG TORCH_VARIANT
ARG TORCH_INDEX_URL=""
COPY . /src
RUN TORCH_VARIANT="${TORCH_VARIANT}" TORCH_INDEX_URL="${TORCH_INDEX_URL}" VENV=/opt/tileseg SRC=/src \
    WEIGHTS_DIR=/weights PIP_NO_CACHE_DIR=1 bash /src/docker/install.sh

# ---- runtime: the environment, the weights, a user that is not root --------------------------------------
FROM base AS runtime
RUN groupadd --system --gid 10001 tileseg \
 && useradd --system --uid 10001 --gid tileseg --home-dir /data --no-create-home --shell /usr/sbin/nologin tileseg \
 && mkdir -p /data /weights \
 && chown tileseg:tileseg /data
COPY --from=build /opt/tileseg /opt/tileseg
COPY --from=build /weights /weights
COPY docker/entrypoint.sh /usr/local/bin/tileseg-entrypoint
ENV PATH=/opt/tileseg/bin:$PATH \
    TILESEG_DATA_DIR=/data \
    TILESEG_WEIGHTS_DIR=/weights
USER tileseg
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
# ready: models (or, in queue mode, their cards) loaded, the job table writable, the workers or the broker there
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
ENTRYPOINT ["tileseg-entrypoint"]
CMD ["tileseg", "serve", "--host", "0.0.0.0", "--port", "8000"]
