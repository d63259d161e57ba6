"""The numeric path of a model on a device: the runtime (precision, memory format, mode) whose arithmetic decides
the values of every output, chosen once and kept whatever the window, the batch or the run's size.

Why once: every runtime and precision is tile-invariant on its own (the same cores in any window on the stride
grid), but their values differ from one another: bf16 in OpenVINO is not bf16 in PyTorch, and neither is fp32.
A tuner that took the fastest runtime for each window made the mask depend on ``--tile``: on a real aerial image
488 of 160,000 pixels differed between ``--tile 128`` and ``--tile 1024``, where OpenVINO bf16 ran the small
window and PyTorch bf16 the large one. So the tuner chooses the path first, over every window its search walks,
records it beside its measurements, and then searches only the window and the batch within it
(:class:`tileseg.engine.runtime.tuner.Tuner`). The runtimes close at the card's window are each measured at the
largest window that fits (up to three times the card's core), whatever the search's bound: runs go on there,
and the ranking turns with the window (on an AVX2 EPYC, PyTorch and OpenVINO tied at a 576-px window, and
OpenVINO ran 2.2x faster at 1216). ``torch.compile`` makes a program of its own: it is a path of its own, taken
only when asked for (``--compile on``).

A path is taken only where it is tile-invariant on the model's own geometry (:func:`invariance_error`): the cores
of one window equal those of four windows of half its core placed on the stride grid, run one at a time and as one
batch. A path that fails the check is recorded and never taken.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Protocol, TypeVar

import torch

from tileseg.engine.runtime.forward import run_forward
from tileseg.engine.runtime.runtimes import Runtime
from tileseg.models.base import SegmentationNet

NATIVE_BF16_MARGIN = 0.9  # without native bf16, bf16 must be at least 10 % faster than fp32 to be taken
CHECK_CORE = 64  # about the core of the check's small windows (the large one is twice it): a few forward passes

# (model, runtime, device) -> None when tile-invariant, else why not
Checker = Callable[[SegmentationNet, Runtime, torch.device], "str | None"]


def signature(options: list[Runtime]) -> str:
    """What a path is chosen among: the candidates a run allows (``--precision``, ``--runtime`` and
    ``--compile`` narrow them), so that each narrowing has its own path."""
    return json.dumps(sorted(r.label for r in options))


def invariance_error(model: SegmentationNet, runtime: Runtime, device: torch.device, seed: int = 0) -> str | None:
    """None when ``runtime`` predicts the same classes for a core whatever the window around it, else why not.

    One window of core ``2c`` and the four windows of core ``c`` that tile it on the stride grid (each starting
    ``c`` further on, as the engine places them) are run on the same random input, the small ones one at a time
    and as one batch of four: the winning class of every core pixel must be the same all three ways.
    """
    geometry = model.spec.geometry
    small = max(geometry.multiple, math.ceil(CHECK_CORE / geometry.multiple) * geometry.multiple)
    big, margin = 2 * small, geometry.halo - geometry.shrink
    window_big, window_small = geometry.window(big), geometry.window(small)
    length = max(window_big, small + window_small)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, model.spec.input.bands, length, length, generator=generator).to(device)
    with torch.inference_mode():
        whole = _labels(run_forward(model, runtime, x[:, :, :window_big, :window_big], device), margin, big)
        origins = [(i * small, j * small) for i in (0, 1) for j in (0, 1)]
        crops = torch.cat([x[:, :, y : y + window_small, x0 : x0 + window_small] for y, x0 in origins])
        batched = _labels(run_forward(model, runtime, crops, device), margin, small)
        alone = torch.cat([_labels(run_forward(model, runtime, c[None], device), margin, small) for c in crops])
    expected = torch.stack([whole[0, y : y + small, x0 : x0 + small] for y, x0 in origins])
    differ = {"one at a time": int((alone != expected).sum()), "as a batch of 4": int((batched != expected).sum())}
    bad = {how: n for how, n in differ.items() if n}
    if not bad:
        return None
    said = ", ".join(f"{n} of {expected.numel()} pixels {how}" for how, n in bad.items())
    return f"not tile-invariant: cores of {small}-px windows differ from a {big}-px window's ({said})"


def _labels(logits: torch.Tensor, margin: int, core: int) -> torch.Tensor:
    return logits[:, :, margin : margin + core, margin : margin + core].float().argmax(1).cpu()


class _Point(Protocol):
    runtime: str
    core: int
    batch: int

    @property
    def rate(self) -> float: ...


P = TypeVar("P", bound=_Point)


def without_emulated_bf16(points: list[P], native: bool) -> list[P]:
    """The points (:class:`tileseg.engine.runtime.search.Measurement`) a path may be chosen from: without
    native bf16, a bf16 runtime is kept only where it beats fp32 by 1/:data:`NATIVE_BF16_MARGIN`,
    compared at the smallest core and batch where both were measured (a runtime whose window was walked further
    must not win by its larger window alone)."""
    if native:
        return points
    fp32: dict[tuple[int, int], float] = {}
    for m in points:
        if m.runtime.startswith("fp32/") and m.rate:
            fp32[(m.core, m.batch)] = max(fp32.get((m.core, m.batch), 0.0), m.rate)
    slow: set[str] = set()
    for label in {m.runtime for m in points if m.runtime.startswith("bf16/")}:
        shared = sorted((m.core, m.batch, m.rate) for m in points if m.runtime == label and (m.core, m.batch) in fp32)
        if shared:
            core, batch, rate = shared[0]
            if rate * NATIVE_BF16_MARGIN <= fp32[(core, batch)]:
                slow.add(label)
        elif fp32:
            slow.add(label)  # never measured beside fp32: not shown to be faster
    return [m for m in points if m.runtime not in slow]


__all__ = ["CHECK_CORE", "NATIVE_BF16_MARGIN", "Checker", "invariance_error", "signature", "without_emulated_bf16"]
