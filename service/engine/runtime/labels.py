"""Programs that scale their raw input and hand back labels: an exported network with the band scaling
(``raw * a + b``, ``a`` and ``b`` given with each call) before it and the index of the first largest channel after
it, so that one byte a pixel goes in and one comes out (:meth:`tileseg.engine.runtime.export.OpenVinoForward.labels`,
:meth:`tileseg.engine.runtime.export.OnnxRuntimeForward.labels`). Their labels are the argmax of the same
network's logits: the first channel wins ties, as in :func:`tileseg.engine.batches.winning_class`.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np


def onnx_labels(path: Path, raw: str, labels: str) -> Path:
    """The ONNX file ``path`` with its input scaled inside (``raw`` values, ``u8`` or ``f32``, times input ``a``
    plus input ``b``) and its logits reduced to the first largest channel (``labels``: uint8 or int16), the only
    output; made once beside it (written to a temporary name, then renamed)."""
    target = path.with_name(f"{path.stem}.labels-{raw}-{labels}.onnx")
    if target.is_file():
        return target
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    (original,) = graph.input
    (logits,) = graph.output
    bands = original.type.tensor_type.shape.dim[1].dim_value
    kind = TensorProto.UINT8 if raw == "u8" else TensorProto.FLOAT
    graph.input.pop()
    graph.input.extend(
        [
            helper.make_tensor_value_info("raw", kind, ["batch", bands, "height", "width"]),
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, bands, 1, 1]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, bands, 1, 1]),
        ]
    )
    index = TensorProto.UINT8 if labels == "uint8" else TensorProto.INT16
    graph.node.insert(0, helper.make_node("Cast", ["raw"], ["raw_float"], to=TensorProto.FLOAT))
    graph.node.insert(1, helper.make_node("Mul", ["raw_float", "a"], ["raw_times_a"]))
    graph.node.insert(2, helper.make_node("Add", ["raw_times_a", "b"], [original.name]))
    graph.node.extend(
        [
            helper.make_node("ArgMax", [logits.name], ["channel"], axis=1, keepdims=0, select_last_index=0),
            helper.make_node("Cast", ["channel"], ["labels"], to=index),
        ]
    )
    graph.output.pop()
    graph.output.append(helper.make_tensor_value_info("labels", index, ["batch", "height", "width"]))
    onnx.checker.check_model(model)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def openvino_labels(network: Any, shape: tuple[int, ...], raw: str, labels: str) -> Any:
    """``network`` (reshaped to ``shape``) with its input scaled inside (``raw`` values of type ``raw`` times
    ``a`` plus ``b``, both inputs) and its logits reduced to the index of the first largest channel (``labels``:
    uint8 or int16), the only output."""
    import openvino
    import openvino.opset13 as ops

    bands = shape[1]
    values = ops.parameter(list(shape), openvino.Type.u8 if raw == "u8" else openvino.Type.f32, name="raw")
    a = ops.parameter([1, bands, 1, 1], openvino.Type.f32, name="a")
    b = ops.parameter([1, bands, 1, 1], openvino.Type.f32, name="b")
    scaled = ops.add(ops.multiply(ops.convert(values, "f32"), a), b)
    (original,) = network.get_parameters()
    for target in list(original.output(0).get_target_inputs()):
        target.replace_source_output(scaled.output(0))
    logits = network.get_results()[0].input_value(0)
    # a stable sort by value: of equal logits the lower channel comes first, as argmax takes it
    top = ops.topk(logits, ops.constant(np.int64(1)), axis=1, mode="max", sort="value", stable=True)
    index = ops.squeeze(top.output(1), ops.constant(np.array([1], np.int64)))
    out = ops.convert(index, "u8" if labels == "uint8" else "i16")
    return openvino.Model([ops.result(out)], [values, a, b], "labels")


__all__ = ["onnx_labels", "openvino_labels"]
