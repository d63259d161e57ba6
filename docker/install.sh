#!/usr/bin/env bash
# Install tileseg into a virtual environment: the Docker image's install step (the Dockerfile runs this
# script), which CI also runs (tests/deploy/test_install.py), so that a broken step fails CI.
#
#   TORCH_VARIANT=cuda|cpu VENV=/opt/tileseg SRC=. WEIGHTS_DIR=/weights docker/install.sh
#
# TORCH_VARIANT  cuda (default): the CUDA build of PyTorch (what the default package index serves for
#                Linux x86_64); cpu: the CPU build, from PyTorch's CPU index.
# TORCH_VERSION  default 2.13.0.
# TORCHVISION_VERSION  the torchvision built for that torch (default 0.28.0): smp's encoders need it, and a
#                torchvision for another torch would make pip replace torch.
# TORCH_INDEX_URL  where PyTorch comes from instead; `pip` takes it from pip's own configuration (index,
#                find-links), as CI does with the CPU wheel on local disk.
# VENV           the virtual environment to make (default /opt/tileseg).
# SRC            the source tree (default: this script's repository).
# WEIGHTS_DIR    if set, the shipped checkpoints are copied there (the image's TILESEG_WEIGHTS_DIR).
# PYTHON         the interpreter that makes the environment (default python3).
set -euo pipefail

TORCH_VARIANT="${TORCH_VARIANT:-cuda}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.28.0}"
VENV="${VENV:-/opt/tileseg}"
SRC="${SRC:-$(cd "$(dirname "$0")/.." && pwd)}"
PYTHON="${PYTHON:-python3}"

case "$TORCH_VARIANT" in
  cuda) torch_index="${TORCH_INDEX_URL:-}" ;;
  cpu) torch_index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;;
  *) echo "install.sh: TORCH_VARIANT must be cuda or cpu, not '$TORCH_VARIANT'" >&2; exit 2 ;;
esac
[ "$torch_index" = pip ] && torch_index=""

echo "install.sh: tileseg from $SRC into $VENV, PyTorch $TORCH_VERSION ($TORCH_VARIANT)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# PyTorch first, from its variant's index: the package's own dependencies then find it installed
"$VENV/bin/python" -m pip install --quiet ${torch_index:+--index-url "$torch_index"} "torch==$TORCH_VERSION" \
  "torchvision==$TORCHVISION_VERSION"
# the way the README installs it (not editable: the image holds no source tree), with the extras for models
# added from outside: ONNX Runtime and segmentation_models_pytorch
"$VENV/bin/python" -m pip install --quiet "$SRC[onnx,smp]"

if [ -n "${WEIGHTS_DIR:-}" ]; then
  mkdir -p "$WEIGHTS_DIR"
  find "$SRC/weights/" -maxdepth 1 -type f \( -name '*.safetensors' -o -name '*.json' \) -exec cp {} "$WEIGHTS_DIR/" \;
fi

# fail here, not at the first request, if the install is broken
"$VENV/bin/tileseg" --version
"$VENV/bin/python" -c "import torch, rasterio, celery, psycopg, tileseg.api, tileseg.jobs.queue; \
print('install.sh: torch', torch.__version__, '| cuda build' if torch.version.cuda else '| cpu build')"
"$VENV/bin/python" -c "import onnxruntime; from tileseg.models.smp import import_smp; import_smp(); \
print('install.sh: onnxruntime', onnxruntime.__version__, '| smp', import_smp().__version__)"
