"""int8 programs: a checkpoint's exported ONNX graph quantized statically, from ranges recorded in its card.

Post-training static quantization (ONNX Runtime's ``quantize_static``): QDQ format, weights int8 per output
channel, activations uint8 per tensor with the ranges (min, max) that calibration on the model's own training
images found. The first and the last convolution stay in float: the first sees the normalised bands, each on
its own scale, and the last gives the logits whose argmax is the mask, where 256 levels would turn near ties
into ties (keeping both in float raised the agreement with fp32 of ``unet-aerial`` from 0.990-0.997 to
0.993-0.998 on three validation images, for no measurable cost in speed).

Calibration needs the training data; serving does not. So ``tileseg models quantize`` (:mod:`tileseg.training.
quantize`) calibrates once, with fixed crops and seed, and writes the ranges into the card (``int8.ranges``, a
few kilobytes); the engine derives the int8 program from the export and those ranges wherever it runs
(:func:`int8_path`, in a fraction of a second), cached beside the export under a hash of the ranges and the
settings. The weight files stay as they are, and the same card gives the same program on every machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# what the program is made with; part of its cache key
SETTINGS = {
    "format": "QDQ",
    "weights": "int8 per channel",
    "activations": "uint8 per tensor",
    "float": "first+last conv",
}


class Int8Unavailable(RuntimeError):
    """A model whose card holds no int8 ranges, or ranges that do not fit its export."""


def int8_record(model: Any) -> dict[str, Any] | None:
    """The card's ``int8`` record of ``model`` (ranges, agreement, calibration), or None."""
    card = getattr(model, "card", None) or {}
    record = card.get("int8")
    return record if isinstance(record, dict) and record.get("ranges") else None


def _kept_in_float(graph: Any) -> list[str]:
    """The nodes left unquantized: the first and the last convolution."""
    convs = [node.name for node in graph.node if node.op_type in ("Conv", "ConvTranspose")]
    return sorted({convs[0], convs[-1]}) if convs else []


def _quantize(fp32: Path, out: Path, calibration_cache: Path, reader: Any = None) -> None:
    """ONNX Runtime's ``quantize_static`` with this module's settings, from a calibration cache (read when it
    exists, else written from ``reader``'s batches)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    kept = _kept_in_float(onnx.load(str(fp32), load_external_data=False).graph)
    root = logging.getLogger()
    root.addFilter(_without_advice)
    try:
        quantize_static(
            str(fp32),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=kept,
            calibration_cache_path=str(calibration_cache),
        )
    finally:
        root.removeFilter(_without_advice)


def _without_advice(record: logging.LogRecord) -> bool:
    """Drops the quantizer's advice to pre-process, logged on the root logger each time (the exporter has
    folded the batch norms already, which is what pre-processing would do here)."""
    return "pre-process" not in record.getMessage()


def calibrate(fp32: Path, batches: Iterable[np.ndarray]) -> dict[str, list[float]]:
    """The activation ranges of the ONNX graph at ``fp32`` over ``batches`` (normalised ``(B, bands, H, W)``
    float32 arrays), as the card records them: ``{tensor name: [min, max]}``."""
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.calibrate import load_tensors_data

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": np.ascontiguousarray(batch, dtype=np.float32)}

    with tempfile.TemporaryDirectory(prefix="tileseg-int8-") as tmp:
        cache = Path(tmp) / "ranges.json"
        _quantize(fp32, Path(tmp) / "int8.onnx", cache, Reader())
        found = load_tensors_data(cache)
    return {name: [float(np.asarray(v).item()) for v in data.range_value] for name, data in sorted(found.items())}


def _write_ranges(ranges: dict[str, list[float]], path: Path) -> None:
    """The card's ranges as ONNX Runtime's calibration cache (float32, as calibration computed them)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    data = {name: TensorData(lowest=np.float32(low), highest=np.float32(high)) for name, (low, high) in ranges.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)


def _check_names(fp32: Path, ranges: dict[str, list[float]]) -> None:
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    names = {t for node in graph.node for t in (*node.input, *node.output)}
    missing = sorted(set(ranges) - names)
    if missing:
        raise Int8Unavailable(
            f"the card's int8 ranges name {len(missing)} tensors this export lacks (e.g. {missing[0]!r}): "
            "the exporter names tensors differently here; run `tileseg models quantize` again"
        )


def int8_path(fp32: Path, ranges: dict[str, list[float]]) -> Path:
    """The int8 program made from the export at ``fp32`` and the card's ``ranges``: cached beside the export,
    made when missing (written to a temporary name, then renamed).

    Raises:
        Int8Unavailable: ranges that name tensors the export does not have (another exporter's names).
    """
    import onnxruntime

    key = json.dumps([ranges, SETTINGS, onnxruntime.__version__], sort_keys=True).encode()
    path = fp32.with_name(f"{fp32.stem}-int8-{hashlib.sha256(key).hexdigest()[:12]}.onnx")
    if path.is_file():
        return path
    _check_names(fp32, ranges)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    with tempfile.TemporaryDirectory(prefix="tileseg-int8-") as scratch:
        cache = Path(scratch) / "ranges.json"
        _write_ranges(ranges, cache)
        try:
            _quantize(fp32, tmp, cache)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    log.info("made the int8 program %s", path)
    return path


def model_int8_path(model: Any, fp32: Path) -> Path:
    """:func:`int8_path` for ``model``'s card.

    Raises:
        Int8Unavailable: its card holds no int8 ranges (``tileseg models quantize`` was not run), or they do
            not fit the export.
    """
    record = int8_record(model)
    if record is None:
        raise Int8Unavailable(f"{model.spec.name}'s card has no int8 ranges: run `tileseg models quantize`")
    return int8_path(fp32, record["ranges"])


__all__ = ["SETTINGS", "Int8Unavailable", "calibrate", "int8_path", "int8_record", "model_int8_path"]
