#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (and this project installed with a CUDA build of PyTorch, plus
# onnxruntime-gpu for the ONNX Runtime and TensorRT candidates): the tuner's table for three shipped models,
# the end-to-end rate of the defaults on a generated 16384² image, and its ratio to the bare forward of the
# chosen configuration and to the bare eager fp16 forward. About 5-8 minutes.
#
#   bash bench/gpu.sh            # TILESEG_SHARED_DATA must point at the shared data (for the aerial scene)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: this script is for a machine with a GPU" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'torch has no CUDA here'; print('torch', torch.__version__, torch.version.cuda)"
export TILESEG_CACHE_DIR="${TILESEG_CACHE_DIR:-$(mktemp -d)}"
for model in unet-aerial fcn8s-aerial setr-pup-aerial; do
  echo; echo "## $model"
  "$PYTHON" -c "from tileseg.cli import cli; cli()" models bench "$model" --device cuda --seconds 40 --pixels $((16384 * 16384))
done
echo
timeout 420 "$PYTHON" bench/engine.py --model unet-aerial --sizes 16384 --monai-sizes "" --fp16-bare
