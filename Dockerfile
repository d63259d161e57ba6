# tileseg's image: the HTTP service (`tileseg serve`) and the queue worker (`tileseg worker`).
#
#   docker build -t tileseg .                                    # CUDA build of PyTorch (GPU hosts)
#   docker build -t tileseg:cpu --build-arg TORCH_VARIANT=cpu .  # CPU build of PyTorch
#   docker build --build-arg BASE=python:3.11-slim-bookworm .    # another base with (or without) Python
#   docker build --build-arg TUNE=--all .                        # measure every model on this CPU at build
#
# BASE is any Debian bookworm-like image: Python 3.10+ is taken from it when it has one with venv and
# ensurepip (python:*-slim), else Debian's python3 is installed. The CUDA variant needs no CUDA base:
# PyTorch's CUDA wheels carry the CUDA libraries; the host needs the NVIDIA driver and container toolkit
# (what `--gpus` / compose's GPU reservation use), nothing else. CI builds the CPU variant from a Debian
# base made locally (.ci/containers.sh), with the host's CA and wheels passed in (PIP_CERT, PIP_FIND_LINKS).
#
# The install and start steps are docker/install.sh and docker/entrypoint.sh. The shipped checkpoints are
# in /weights (TILESEG_WEIGHTS_DIR): mount a folder there to serve others. The data directory (job table,
# uploads, results) is /data: a volume. Layers go from what changes least (Python, PyTorch, dependencies)
# to what changes most (the source, the weights), so that editing the code rebuilds seconds, not minutes:
# the runtime stage copies the environment of GBs from `deps` in a stage of its own (`env`), which a changed
# source leaves cached, and installs the wheel that `build` made from the source on top of it.

ARG BASE=debian:bookworm-slim

FROM ${BASE} AS base
# tini is PID 1: a process that is PID 1 ignores the SIGTERM it re-raises on its way out, so without it
# `docker stop` would end the service with 0, not the 143 (128 + SIGTERM) that the README promises
RUN python=""; python3 -c 'import venv, ensurepip' 2>/dev/null || python="python3 python3-venv ca-certificates"; \
    apt-get update \
 && apt-get install -y --no-install-recommends tini $python \
 && rm -rf /var/lib/apt/lists/* \
 && echo "base: $(python3 --version)"
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# ---- deps: the virtual environment, PyTorch and every dependency (rebuilt only when pyproject.toml changes) --
FROM base AS deps
ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
# pip's CA bundle and extra wheel folders, for builds behind a TLS proxy or with local wheels (CI)
ARG PIP_CERT=""
ARG PIP_FIND_LINKS=""
ENV VENV=/opt/tileseg SRC=/src WEIGHTS_DIR=/weights PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY docker/install.sh /src/docker/install.sh
RUN bash /src/docker/install.sh venv torch
COPY pyproject.toml /src/pyproject.toml
RUN bash /src/docker/install.sh deps

# ---- build: tileseg as a wheel, the weights ---------------------------------------------------------------
FROM deps AS build
ARG PIP_CERT=""
ARG PIP_FIND_LINKS=""
COPY . /src
RUN bash /src/docker/install.sh wheel weights

# ---- env: the environment under a user that is not root (a layer of GBs, kept while deps is unchanged) ------
FROM base AS env
RUN groupadd --system --gid 10001 tileseg \
 && useradd --system --uid 10001 --gid tileseg --home-dir /data --no-create-home --shell /usr/sbin/nologin tileseg \
 && mkdir -p /data /weights \
 && chown tileseg:tileseg /data
COPY --from=deps /opt/tileseg /opt/tileseg

# ---- runtime: the environment with tileseg installed, the weights --------------------------------------------
FROM env AS runtime
ARG TORCH_VARIANT=cuda
COPY docker/preflight.py /usr/local/lib/tileseg/preflight.py
COPY docker/entrypoint.sh /usr/local/bin/tileseg-entrypoint
COPY --from=build /weights /weights
COPY --from=build /wheels /tmp/tileseg-wheels
COPY docker/install.sh /tmp/tileseg-wheels/install.sh
RUN VENV=/opt/tileseg PACKAGE="$(echo /tmp/tileseg-wheels/tileseg-*.whl)" PIP_NO_CACHE_DIR=1 \
    bash /tmp/tileseg-wheels/install.sh package check \
 && rm -rf /tmp/tileseg-wheels
# the tuner's measurements and exported programs (ONNX) live in the data volume: made on first use, kept
# across restarts, shared by the API and the workers (keyed by device, so mixed machines do not mix)
ENV PATH=/opt/tileseg/bin:$PATH \
    TILESEG_DATA_DIR=/data \
    TILESEG_WEIGHTS_DIR=/weights \
    TILESEG_CACHE_DIR=/data/cache
USER tileseg
WORKDIR /data
# TUNE="unet-aerial unet-nuclei" (or "--all") measures those models on the build machine's CPU and keeps the
# choices in /data/cache, which a new named volume starts from: worth it where the image runs on the CPU it
# was built on (the choices are keyed by device and CPU; another CPU measures again on first use)
ARG TUNE=""
RUN if [ -n "$TUNE" ]; then tileseg tune $TUNE --size 4096; fi
VOLUME ["/data"]
EXPOSE 8000
# ready: models (or, in queue mode, their cards) loaded, the job table writable, the workers or the broker
# there; a container whose weights or data volume are unusable answers 503 here with the reason (preflight)
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
ENTRYPOINT ["tini", "--", "tileseg-entrypoint"]
CMD ["tileseg", "serve", "--host", "0.0.0.0", "--port", "8000"]
