"""Networks that are programs rather than state dicts: TorchScript and ONNX files, served like the zoo's.

An added model is stored like a shipped one: ``NAME.json`` (the card, whose ``format`` says which file
beside it holds the network) and ``NAME.safetensors``, ``NAME.torchscript`` or ``NAME.onnx``. The wrappers
here make a TorchScript or ONNX file a :class:`~tileseg.models.base.SegmentationNet`, so the engine runs
them unchanged. They run in fp32 (unless the card allows less) and are never given to ``torch.compile``
(:attr:`ExternalNet.compilable`).

A TorchScript or ONNX file is a program: loading it runs what its author wrote. The operator chooses to
trust the files they add; the HTTP API takes no model uploads.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tileseg.models.base import SegmentationNet
from tileseg.models.errors import CheckpointError

# the network's file beside NAME.json, by the card's "format"
FORMATS = {"safetensors": ".safetensors", "torchscript": ".torchscript", "onnx": ".onnx"}


class ExternalNet(SegmentationNet):
    """A network given as a program. Its output may be a fixed fraction of the input (``output_scale``, e.g.
    0.25); it is then upsampled here, bilinearly, to the input's size, so the engine sees a full-size output.

    Args:
        output_scale: the network's output length over its input length (1: same size, or smaller by a shrink).
    """

    compilable = False  # the runtime tuner never compiles it: TorchScript and ONNX Runtime have their own

    def __init__(self, output_scale: float = 1.0):
        super().__init__()
        self.hparams = {"output_scale": output_scale} if output_scale != 1 else {}
        self.output_scale = float(output_scale)
        # holds no weights: it carries the device (.to(device) moves it) for callers that read it from parameters
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The network's own forward pass on fp32 ``x``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.run(x.float())
        if self.output_scale != 1:
            y = F.interpolate(y, scale_factor=1 / self.output_scale, mode="bilinear", align_corners=False)
        return y


def first_tensor(output: Any) -> torch.Tensor:
    """The logits of a network's output: a tensor, the ``"out"`` (else first) entry of a dict, or the first of a
    tuple; exported models often return several heads, the first being the segmentation."""
    if isinstance(output, dict):
        output = output.get("out", next(iter(output.values()), None))
    if isinstance(output, (tuple, list)):
        output = output[0] if output else None
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        raise CheckpointError("the network's output is not a (batch, classes, height, width) tensor")
    return output


class TorchScriptNet(ExternalNet):
    """A TorchScript file (``torch.jit.load``), loaded on ``device``.

    Raises:
        CheckpointError: the file is not a TorchScript archive.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", output_scale: float = 1.0):
        super().__init__(output_scale)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in 2.13, still works
                self.net = torch.jit.load(str(path), map_location=torch.device(device))
        except (RuntimeError, ValueError, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path} is not a TorchScript file: {first}") from err
        self.net.eval()
        self.to(device)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return first_tensor(self.net(x))


class OnnxNet(ExternalNet):
    """An ONNX file run by ONNX Runtime: the CPU provider, with CUDA's first when the model is on a GPU and
    the CUDA provider is installed. Inputs and outputs are fp32.

    Raises:
        CheckpointError: onnxruntime is not installed, or the file is not a model it can load.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", output_scale: float = 1.0):
        super().__init__(output_scale)
        self.path = Path(path)
        self._sessions: dict[str, Any] = {}
        session = self.session("cpu")
        inputs = session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise CheckpointError(f"{path}: an ONNX segmentation model takes one (batch, bands, height, width) input")
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        self.input_bands = shape[1] if isinstance(shape[1], int) else None
        # a file exported without a dynamic batch takes exactly that many images per run
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        # fixed sizes: the exporter wrote integers where a dynamic axis would have a name
        self.fixed_size = tuple(shape[2:]) if all(isinstance(s, int) for s in shape[2:]) else None
        self.to(device)

    def session(self, device_type: str) -> Any:
        """The ONNX Runtime session for a device type, made once."""
        if device_type not in self._sessions:
            self._sessions[device_type] = _onnx_session(self.path, device_type)
        return self._sessions[device_type]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        session = self.session(x.device.type)
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        size = self.fixed_batch or len(array)
        parts = []
        for first in range(0, len(array), size):
            part = array[first : first + size]
            if len(part) < size:  # the file's fixed batch: fill it with copies, keep only the real images
                part = np.concatenate([part, np.repeat(part[-1:], size - len(part), axis=0)])
            try:
                out = session.run(None, {self.input_name: part})[0]
            except Exception as err:  # onnxruntime's own error types (InvalidArgument, Fail...)
                message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise RuntimeError(f"ONNX Runtime refused a {tuple(part.shape)} input: {message}") from err
            parts.append(torch.from_numpy(out[: len(array) - first]))
        return first_tensor(torch.cat(parts)).to(x.device)


def _onnx_session(path: Path, device_type: str) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise CheckpointError(f"ONNX models need the onnx extra: pip install 'tileseg[onnx]' ({err})") from err
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 4  # ORT logs refused sizes as errors; the wrapper raises with the reason
    providers = ["CPUExecutionProvider"]
    if device_type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own types for a file that is not a model
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not an ONNX model ONNX Runtime can load: {first}") from err


def open_external(path: Path, fmt: str, hparams: dict[str, Any], device: str | torch.device) -> ExternalNet:
    """The wrapper of a TorchScript (``fmt="torchscript"``) or ONNX (``"onnx"``) file.

    Raises:
        CheckpointError: an unknown format, or a file that does not load.
    """
    scale = float(hparams.get("output_scale", 1.0))
    if not math.isfinite(scale) or scale <= 0:
        raise CheckpointError(f"{path}: output_scale {scale} must be a positive number")
    if fmt == "torchscript":
        return TorchScriptNet(path, device, scale)
    if fmt == "onnx":
        return OnnxNet(path, device, scale)
    raise CheckpointError(f"{path}: unknown model format {fmt!r}; valid: {', '.join(FORMATS)}")
