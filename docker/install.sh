#!/usr/bin/env bash
# Install tileseg into a virtual environment: the Docker image's install step (the Dockerfile runs this
# script, one step per layer so that a change to the source rebuilds only the last ones), which CI also runs
# whole (tests/deploy/test_install.py), so that a broken step fails CI.
#
#   TORCH_VARIANT=cuda|cpu VENV=/opt/tileseg SRC=. WEIGHTS_DIR=/weights docker/install.sh [STEP...]
#
# STEP           any of: venv torch deps package weights check (default: all, in that order), or wheel.
#                `deps` installs the dependencies that pyproject.toml lists, with the `smp` extra's (it needs
#                only that file); `package` then installs tileseg itself, not editable, without touching them
#                (`pip install --no-deps`): the source tree, or PACKAGE. `wheel` builds the source tree into a
#                wheel in WHEEL_DIR (the image builds it in one stage and installs it in another).
# TORCH_VARIANT  cuda (default): the CUDA build of PyTorch as PyPI serves it for Linux x86_64; its wheels
#                carry the CUDA libraries (nvidia-* packages), so any base with Python works and the host
#                needs only the NVIDIA driver and container toolkit. cpu: the CPU build (`torch==X+cpu`),
#                from PyTorch's CPU index.
# TORCH_VERSION  default 2.13.0.
# TORCHVISION_VERSION  the torchvision built for that torch (default 0.28.0): smp's encoders need it, and a
#                torchvision for another torch would make pip replace torch.
# TORCH_INDEX_URL  where PyTorch comes from instead; `pip` takes it from pip's own configuration (index,
#                find-links), as CI does with the CPU wheel on local disk.
# VENV           the virtual environment to make (default /opt/tileseg).
# SRC            the source tree (default: this script's repository).
# PACKAGE        what `package` installs (default: SRC): the source tree or a wheel built from it.
# WHEEL_DIR      where `wheel` writes the wheel (default /wheels).
# WEIGHTS_DIR    for `weights`: the shipped checkpoints are copied there (the image's TILESEG_WEIGHTS_DIR).
# PYTHON         the interpreter that makes the environment (default python3).
set -euo pipefail

TORCH_VARIANT="${TORCH_VARIANT:-cuda}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.28.0}"
VENV="${VENV:-/opt/tileseg}"
SRC="${SRC:-$(cd "$(dirname "$0")/.." && pwd)}"
PACKAGE="${PACKAGE:-$SRC}"
WHEEL_DIR="${WHEEL_DIR:-/wheels}"
PYTHON="${PYTHON:-python3}"
# build arguments arrive as variables even when empty; an empty PIP_* setting would mean "" to pip
for name in PIP_CERT PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
  [ -n "${!name:-}" ] || unset "$name"
done

case "$TORCH_VARIANT" in
  cuda) torch_index="${TORCH_INDEX_URL:-}"; torch_spec="torch==$TORCH_VERSION" ;;
  # the local version label: a CPU wheel or nothing, never PyPI's CUDA build of the same version
  cpu) torch_index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"; torch_spec="torch==$TORCH_VERSION+cpu" ;;
  *) echo "install.sh: TORCH_VARIANT must be cuda or cpu, not '$TORCH_VARIANT'" >&2; exit 2 ;;
esac
[ "$torch_index" = pip ] && torch_index=""
pip=("$VENV/bin/python" -m pip install --quiet)

step_venv() {
  "$PYTHON" -m venv "$VENV"
  "${pip[@]}" --upgrade pip
}
step_torch() {
  # PyTorch first, from its variant's index: the package's own dependencies then find it installed
  "${pip[@]}" ${torch_index:+--index-url "$torch_index"} "$torch_spec" "torchvision==$TORCHVISION_VERSION"
}
step_deps() {
  # the extra for models added from outside (segmentation_models_pytorch) comes with every image. On CUDA,
  # ONNX Runtime's GPU build (its CUDA and TensorRT providers) takes the place of the CPU one: both are the
  # module onnxruntime, so the CPU one goes first.
  "$VENV/bin/python" - "$SRC/pyproject.toml" >"$VENV/.tileseg-deps.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["smp"]))
PY
  "${pip[@]}" -r "$VENV/.tileseg-deps.txt"
  if [ "$TORCH_VARIANT" = cuda ]; then
    "$VENV/bin/python" -m pip uninstall --quiet --yes onnxruntime
    "${pip[@]}" onnxruntime-gpu
  fi
}
step_package() {
  # not editable (the image holds no source tree); the dependencies are the `deps` step's
  "${pip[@]}" --no-deps "$PACKAGE"
}
step_wheel() {
  "$VENV/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$WHEEL_DIR" "$SRC"
}
step_weights() {
  [ -n "${WEIGHTS_DIR:-}" ] || return 0
  mkdir -p "$WEIGHTS_DIR"
  find "$SRC/weights/" -maxdepth 1 -type f \( -name '*.safetensors' -o -name '*.json' \) -exec cp {} "$WEIGHTS_DIR/" \;
}
step_check() {
  # fail here, not at the first request, if the install is broken
  "$VENV/bin/tileseg" --version
  "$VENV/bin/python" -c "import torch, rasterio, celery, psycopg, tileseg.api, tileseg.jobs.queue; \
print('install.sh: torch', torch.__version__, '| cuda build' if torch.version.cuda else '| cpu build')"
  "$VENV/bin/python" -c "import onnxruntime, platform; from tileseg.models.smp import import_smp; \
ov = __import__('openvino').__version__ if platform.machine() in ('x86_64', 'aarch64') else 'not for this CPU'; \
print('install.sh: onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers(), '| openvino', ov, \
'| smp', import_smp().__version__)"
}

[ "$#" -gt 0 ] || set -- venv torch deps package weights check
echo "install.sh: $* | tileseg from $SRC into $VENV, PyTorch $torch_spec ($TORCH_VARIANT)"
for step in "$@"; do
  case "$step" in
    venv|torch|deps|package|wheel|weights|check) "step_$step" ;;
    *) echo "install.sh: unknown step '$step' (venv torch deps package weights check, wheel)" >&2; exit 2 ;;
  esac
done
