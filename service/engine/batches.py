"""Running a batch of windows through the network: device transfer, precision, flips, reduction.

Results are reduced on the device: in crop mode without probabilities only the winning channel of each
core pixel comes back (one byte a pixel instead of a float per channel). An exported program (OpenVINO, ONNX
Runtime) does the scaling and that reduction inside itself: raw bytes in, one byte a pixel out, the same labels
as its logits give.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from tileseg.engine.io import Scaling
from tileseg.engine.prediction import BatchPrediction
from tileseg.engine.runtime.forward import prepare, run_forward
from tileseg.engine.runtime.runtimes import BASELINE, Runtime
from tileseg.engine.tiling import TileSettings
from tileseg.models.base import SegmentationNet
from tileseg.models.spec import BlendMode

log = logging.getLogger(__name__)


class BatchRunner:
    """Runs ``(B, bands, window, window)`` batches of raw values and returns what the stitchers need.

    The raw batch (uint8, or float32 for other dtypes) goes to the device as it is, through pinned memory on
    a GPU, and is scaled there (:class:`tileseg.engine.io.Scaling`).

    A call returns a :class:`~tileseg.engine.prediction.BatchPrediction`. Crop mode: the cores' labels
    ``(B, core, core)`` uint8/int16 and, if asked (or with ``tta``), their probabilities ``(B, K, core, core)``
    float32; blended modes: the probabilities of the whole output window, no labels.
    ``logits=True`` (crop mode, for exactness checks) returns the raw logits in place of probabilities.

    Args:
        model: the network, with its ``.spec``, on ``device``.
        settings: the run's tile settings.
        scaling: how raw values become the network's input.
        device: where the network runs.
        runtime: precision, memory format and mode (:mod:`tileseg.engine.runtime.runtimes`).
        tta: average the predictions of the four flips of each window.
        probabilities: crop mode: return the cores' probabilities too.
        logits: crop mode: return the raw logits in place of probabilities.
    """

    def __init__(
        self,
        model: SegmentationNet,
        settings: TileSettings,
        scaling: Scaling,
        device: torch.device,
        runtime: Runtime = BASELINE,
        tta: bool = False,
        probabilities: bool = False,
        logits: bool = False,
    ):
        self.model = model
        self.scaling = scaling
        self.clip = scaling.clip
        self.low, self.high, self.a, self.b = (
            torch.as_tensor(v, device=device).view(1, -1, 1, 1)
            for v in (scaling.low, scaling.high, scaling.a, scaling.b)
        )
        self.settings = settings
        self.device = device
        self.runtime = runtime
        self.tta = tta
        self.logits = logits
        self.want_probs = probabilities or tta or settings.blend is not BlendMode.CROP
        self.crop = settings.blend is BlendMode.CROP
        self.keep = slice(settings.margin, settings.margin + settings.core)
        self.index_dtype = torch.uint8 if model.spec.num_classes <= 256 else torch.int16
        self.label_dtype = np.dtype(np.uint8 if model.spec.num_classes <= 256 else np.int16)  # the same, in numpy
        self.in_program = True  # labels from a program that scales and reduces inside, where the runtime has one

    @property
    def gives_probabilities(self) -> bool:
        """Whether its predictions carry probabilities (or, with ``logits``, the logits)."""
        return self.want_probs or self.logits

    def _full_batch(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded with zeros to the full batch where the runtime is specialised to it (a compiled network,
        an OpenVINO program): the last batch then runs without compiling again."""
        if self.runtime.mode not in ("compiled", "openvino") or x.shape[0] >= self.settings.batch:
            return x
        return torch.cat([x, x.new_zeros((self.settings.batch - x.shape[0], *x.shape[1:]))])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < len(full := self._full_batch(x)):
            return self._forward(full)[: x.shape[0]]
        try:
            return run_forward(self.model, self.runtime, x, self.device)
        except Exception as err:
            if self.runtime == BASELINE:
                raise
            log.warning(
                "runtime %s failed (%s: %s); running eager fp32 instead",
                self.runtime.label,
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
            )
            self.runtime = BASELINE
            return run_forward(self.model, self.runtime, x, self.device)

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        if not self.tta:
            return torch.softmax(self._forward(x).float(), dim=1)
        total = torch.zeros(())
        for dims in ((), (3,), (2,), (2, 3)):  # identity, horizontal, vertical, both
            flipped = torch.flip(x, dims) if dims else x
            probs = torch.softmax(self._forward(flipped).float(), dim=1)
            probs = torch.flip(probs, dims) if dims else probs
            total = total + probs
        return total / 4

    def _scale(self, raw: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            raw = raw.pin_memory().to(self.device, non_blocking=True)
        # straight into the layout the runtime takes: an exported program wants NCHW, a copy saved
        layout = torch.channels_last if self.runtime.channels_last else torch.contiguous_format
        return self._clipped(raw.to(memory_format=layout).float()).mul_(self.a).add_(self.b)

    def _clipped(self, x: torch.Tensor) -> torch.Tensor:
        """Float values clipped to the scaling's range (dtypes other than uint8; NaN as 0), else as they are."""
        return torch.minimum(torch.maximum(torch.nan_to_num(x), self.low), self.high) if self.clip else x

    def _program_labels(self, batch: np.ndarray) -> np.ndarray | None:
        """The winning channels of a batch from an exported program that scales and reduces inside
        (:meth:`tileseg.engine.runtime.export.OpenVinoForward.labels`, ONNX Runtime's the same), or None where
        the runtime has none."""
        if not self.in_program or not self.runtime.exported or self.device.type != "cpu":
            return None
        raw = torch.from_numpy(batch)
        raw = self._full_batch(self._clipped(raw.float()) if self.clip else raw)
        try:
            program = prepare(self.model, self.runtime)
            return program.labels(raw.numpy(), self.scaling.a, self.scaling.b, self.label_dtype)[: len(batch)]
        except Exception as err:  # the same program with the scaling and the argmax outside, then
            log.warning("%s labels inside the program failed (%s: %s)", self.runtime.label, type(err).__name__, err)
            self.in_program = False
            return None

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> BatchPrediction:
        """Run one batch of raw windows ``(B, bands, window, window)``; see the class for what comes back."""
        if not (self.want_probs or self.logits):
            labels = self._program_labels(batch)
            if labels is not None:
                return BatchPrediction(labels=labels[:, self.keep, self.keep])
        x = self._scale(torch.from_numpy(batch))
        if self.logits:
            logits = self._forward(x).float()[:, :, self.keep, self.keep]
            return BatchPrediction(self._labels(logits), logits.cpu().numpy())
        if not self.want_probs:
            return BatchPrediction(labels=self._labels(self._forward(x)[:, :, self.keep, self.keep]))
        probs = self._probabilities(x)
        if self.crop:
            probs = probs[:, :, self.keep, self.keep]
            return BatchPrediction(self._labels(probs), probs.cpu().numpy())
        return BatchPrediction(probabilities=probs.cpu().numpy())

    def _labels(self, scores: torch.Tensor) -> np.ndarray:
        # reduced on the device: one byte a pixel comes back instead of a float per channel
        return winning_class(scores, self.index_dtype).cpu().numpy()


def winning_class(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``scores.argmax(dim=1)`` as ``dtype``, the first class winning ties, by one pass per class over the
    pixels. On a CPU, ``argmax`` over the channels of a contiguous (NCHW) core cut from a window's output
    strides through memory: 0.33 s for 6 classes of a 1840² core against 0.05 s this way (2 threads), which
    was a quarter of an OpenVINO run's time. (A NaN score never wins here unless the first class has it;
    ``argmax`` would pick it.)"""
    best = scores[:, 0].clone()
    labels = torch.zeros(best.shape, dtype=dtype, device=scores.device)
    for k in range(1, scores.shape[1]):
        better = scores[:, k] > best
        best = torch.where(better, scores[:, k], best)
        labels.masked_fill_(better, k)
    return labels
