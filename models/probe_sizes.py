"""The probe's first stage (see :mod:`tileseg.models.probe`): the sizes a network accepts and how its output
length follows from its input's; and what every stage runs the network with: the black box's forward pass, the
probe's budget (:class:`Clock`) and its error (:class:`ProbeError`).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from tileseg.models.errors import CheckpointError

SEARCH_BASES = (64, 128, 256, 448)  # a size check such as "(size - 184) % 16 == 4" passes within 64 of one
SCAN = 64  # sizes tried from each base


class ProbeError(CheckpointError):
    """The network cannot be served: it runs on no probed size, or probing took longer than its budget."""

    code = "probe_failed"


class Clock:
    """Raises :class:`ProbeError` once the probe has run longer than ``budget`` seconds."""

    def __init__(self, budget: float | None):
        self.budget = budget
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def check(self) -> None:
        if self.budget is not None and self.elapsed > self.budget:
            raise ProbeError(f"probing took more than its budget of {self.budget:g} s: the model is too slow to serve")


def run_net(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return net(x).float()


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


def _try(net: nn.Module, bands: int, size: int) -> tuple[int, int] | str:
    """``(out_length, channels)`` when ``net`` takes a ``size``² input, else the first line of its error."""
    try:
        out = run_net(net, torch.randn(1, bands, size, size))
    except Exception as err:  # a foreign network raises whatever it raises on a size it refuses
        return _first_line(err)
    if out.dim() != 4 or out.shape[2] != out.shape[3]:
        return f"a {size}x{size} input gave an output of shape {tuple(out.shape)}"
    return int(out.shape[2]), int(out.shape[1])


def accepted_sizes(net: nn.Module, bands: int, fixed: int | None, clock: Clock) -> list[tuple[int, int, int]]:
    """Two accepted sizes a size step apart (one for a fixed window) as ``(input, output, channels)``.

    Raises:
        ProbeError: no probed size runs (the message quotes the network's first error).
    """
    errors: list[str] = []
    if fixed:
        result = _try(net, bands, fixed)
        clock.check()
        if isinstance(result, str):
            raise ProbeError(f"the model fails on its one input size ({fixed} px, {bands} bands): {result}")
        return [(fixed, *result)]
    for base in SEARCH_BASES:
        grows = _growing_sizes(net, bands, base, clock, errors)
        if len(grows) >= 2:
            step = grows[-1][0] - grows[-2][0]
            on_grid = [g for g in grows if (grows[-1][0] - g[0]) % step == 0]
            return on_grid[:2]
        if grows:
            return grows
    tried = f"{SEARCH_BASES[0]}-{SEARCH_BASES[-1] + SCAN - 1}"
    first = errors[0] if errors else "no output"
    raise ProbeError(f"the model fails on every probed size ({tried} px, {bands} bands): {first}")


def _growing_sizes(
    net: nn.Module, bands: int, base: int, clock: Clock, errors: list[str]
) -> list[tuple[int, int, int]]:
    """Sizes from ``base`` up on which ``net`` runs and gives a longer output than on every smaller size
    tried: a traced network may run on any size yet use only part of it (its pooling floors), and those sizes
    are not accepted. Stops at three equally spaced ones, or ``2 * SCAN`` sizes past the first that runs, or
    after ``SCAN`` sizes when none runs."""
    grows: list[tuple[int, int, int]] = []
    size, limit = base, base + SCAN
    while size < limit:
        result = _try(net, bands, size)
        clock.check()
        if isinstance(result, str):
            errors.append(result)
        elif not grows or result[0] > grows[-1][1]:
            if not grows:
                limit = size + 2 * SCAN + 1
            grows.append((size, *result))
            if len(grows) >= 3 and grows[-1][0] - grows[-2][0] == grows[-2][0] - grows[-3][0]:
                break
        size += 1
    return grows


def output_relation(found: list[tuple[int, int, int]]) -> tuple[float, int]:
    """``(output_scale, shrink)`` from the accepted sizes and their outputs.

    Raises:
        ProbeError: the output is neither the input less a constant nor a fixed fraction of it.
    """
    (s0, o0, _), *rest = found
    if rest:
        s1, o1, _ = rest[0]
        scale = (o1 - o0) / (s1 - s0)
    else:
        scale = 1.0 if o0 >= s0 / 2 else o0 / s0
    if scale == 1:
        if (s0 - o0) % 2 or o0 > s0:
            raise ProbeError(f"a {s0} px input gives {o0} px: not an input less an even border")
        return 1.0, (s0 - o0) // 2
    if scale <= 0 or abs(o0 - s0 * scale) > 1e-9 or not math.log2(1 / scale).is_integer():
        raise ProbeError(f"a {s0} px input gives {o0} px: the output is not a power-of-two fraction of the input")
    return scale, 0
