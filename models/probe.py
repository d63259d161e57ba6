"""Measuring a network's tiling geometry from the network itself, for models added from outside the zoo.

The zoo's architectures derive their geometry from their layers (and tests/models/test_receptive_field.py
proves it by perturbing single pixels). A TorchScript, ONNX or smp network gets the same numbers measured,
treating it as a black box ``(1, bands, H, W) -> (1, classes, h, w)``:

1. *Accepted sizes.* Square inputs from 64 px up (then from 128, 256, 448) until the network runs on three
   equally spaced sizes with a longer output each time (a traced network may run on any size but use only
   part of it, so a size whose output does not grow is not accepted): their spacing is the size step; the
   output length gives the ``shrink`` (valid convolutions: ``h = H - 2 * shrink``) or a fixed
   ``output_scale`` (``h = H * scale``, upsampled by the wrapper). An ONNX file with fixed dimensions accepts
   one window only.
2. *Receptive field.* One input pixel at a time is changed, at 32 consecutive positions (every phase of any
   stride dividing 32; a whole size step if larger), on a long, thin random input, along rows and along
   columns; the output pixels whose logits change (beside the unperturbed input in the same batch, to the
   last bit) give the reach of each input pixel. The input grows until the reach stays inside it.
3. *Stride grid.* The smallest multiple of the size step by which shifting the input shifts the output
   (away from the borders): tiles must start on this grid.
4. *Least exact halo.* The smallest context for which every changed output lies in a core whose window
   (on the grid, grown to an accepted size) contains the changed input pixel: the zoo test's criterion.
5. *Translation equivariance.* A random image segmented tile by tile with that geometry must equal the whole
   image run at once (logits within ``tolerance``); for a fixed window, two windows one stride apart must
   agree where their cores overlap.

A network that fails 3-5 is not exactly tileable: it gets blended windows (Gaussian) at a size it accepts,
and the report says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from tileseg.models.probe_sizes import Clock, ProbeError, accepted_sizes, output_relation, run_net
from tileseg.models.spec import BlendMode, Geometry, reflect_indices

PHASES = 32  # consecutive perturbed pixels: every phase of any stride dividing 32 (more for a larger step)
MAX_LENGTH = 2048  # a receptive field reaching past this long input is not exactly tileable here
CHUNK = 16  # perturbed inputs per forward pass (memory)
DEFAULT_CORE = 256
EXACT_FIXED = "windows a stride apart agree on their cores: exact seams"


@dataclass
class ProbeReport:
    """What the probe measured; ``geometry()`` is the card's geometry, ``to_dict()`` the card's ``probe``."""

    bands: int
    classes: int
    multiple: int
    offset: int
    shrink: int
    output_scale: float
    fixed_window: int | None
    accepted_step: int
    receptive_field: int | None  # reach of one input pixel, input px; None: past the longest probe input
    halo: int
    equivariant: bool
    tiled_error: float | None  # max |tiled - whole| of the logits
    default_tile: int
    why: str
    seconds: float = 0.0

    def geometry(self) -> Geometry:
        """The tiling geometry to store in the card."""
        blend = BlendMode.CROP if self.equivariant else BlendMode.GAUSSIAN
        return Geometry(
            halo=self.halo,
            multiple=self.multiple,
            offset=self.offset,
            shrink=self.shrink,
            default_tile=self.default_tile,
            equivariant=self.equivariant,
            blend=blend,
            fixed_window=self.fixed_window,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _thin(bands: int, axis: int, long: int, narrow: int) -> torch.Tensor:
    shape = (long, narrow) if axis == 0 else (narrow, long)
    return torch.randn(1, bands, *shape)


def _perturbed(net: nn.Module, x: torch.Tensor, axis: int, positions: list[int]) -> list[torch.Tensor]:
    """For each position along ``axis`` (in the middle across it), the output indices along ``axis`` whose
    logits change when that one input pixel does."""
    across = x.shape[3 - axis] // 2
    changed: list[torch.Tensor] = []
    for first in range(0, len(positions), CHUNK):
        part = positions[first : first + CHUNK]
        # the unperturbed input runs in the same batch, first and last: a kernel chosen for another batch size
        # may round differently, and the two copies show how much a kernel rounds by batch position (0 for
        # torch's and ONNX Runtime's CPU kernels, so the reach is measured to the last bit)
        batch = x.repeat(len(part) + 2, 1, 1, 1)
        for k, pos in enumerate(part, start=1):
            if axis == 0:
                batch[k, :, pos, across] += 5.0
            else:
                batch[k, :, across, pos] += 5.0
        logits = run_net(net, batch)
        floor = float((logits[-1] - logits[0]).abs().max())
        delta = (logits[1:-1] - logits[:1]).abs().amax(dim=1)  # (k, h, w)
        along = delta.amax(dim=2 if axis == 0 else 1)  # (k, length along the axis)
        changed.extend(torch.nonzero(row > floor).flatten() for row in along)
    return changed


@dataclass
class _Reach:
    """Perturbation results along one axis: positions, the changed output indices of each, the output length."""

    positions: list[int]
    changed: list[torch.Tensor]
    length: int

    def radius(self, shrink: int) -> int | None:
        """The farthest any perturbed pixel reaches, in input pixels; None when it reaches the border."""
        reach = 0
        for pos, out in zip(self.positions, self.changed):
            if not len(out):
                continue
            if out.min() <= 0 or out.max() >= self.length - 1:
                return None
            reach = max(reach, int((out + shrink - pos).abs().max()))
        return reach


def _accept(multiple: int, offset: int, shrink: int, length: int) -> int:
    """The smallest accepted input length that is at least ``length``."""
    out = max(length - 2 * shrink, 1)
    return out + (offset - out) % multiple + 2 * shrink


def receptive_field(
    net: nn.Module, bands: int, found: tuple[int, int, int, int | None], clock: Clock
) -> tuple[list[_Reach], int | None]:
    """Perturb single pixels along rows and along columns; ``found`` is ``(multiple, offset, shrink, fixed)``.
    Returns the perturbations of each axis and the receptive-field radius (None: past the longest input)."""
    multiple, offset, shrink, fixed = found
    narrow = fixed or _accept(multiple, offset, shrink, 32 + 2 * shrink)
    long = fixed or _accept(multiple, offset, shrink, 384 + 2 * shrink)
    while True:
        phases = max(PHASES, multiple)
        centre = long // 2 // phases * phases - phases // 2
        positions = [centre + k for k in range(phases)]
        reaches = []
        for axis in (0, 1):
            x = _thin(bands, axis, long, narrow if not fixed else fixed)
            changed = _perturbed(net, x, axis, positions)
            clock.check()
            reaches.append(_Reach(positions, changed, long - 2 * shrink))
        radii = [r.radius(shrink) for r in reaches]
        if all(r is not None for r in radii):
            return reaches, max(r for r in radii if r is not None)
        if fixed or long >= MAX_LENGTH:
            return reaches, None
        long = _accept(multiple, offset, shrink, 2 * long)


def _close(a: torch.Tensor, b: torch.Tensor, tolerance: float) -> float | None:
    """``max |a - b|`` when within ``tolerance`` (relative to the logits' scale, at least 1), else None."""
    error = float((a - b).abs().max()) if a.numel() else 0.0
    return error if error <= tolerance * max(1.0, float(a.abs().max())) else None


def stride_grid(
    net: nn.Module, bands: int, found: tuple[int, int, int, int | None], reach: int, tolerance: float
) -> int | None:
    """The smallest multiple of the size step by which shifting the input shifts the output (outputs more
    than the receptive field away from both ends compared); None when no shift up to 64 px does."""
    multiple, offset, shrink, fixed = found
    steps = [multiple * 2**k for k in range(7) if multiple * 2**k <= max(64, multiple)]
    for step in steps:
        if fixed:
            image = torch.randn(1, bands, fixed + step, fixed)
            first, second = run_net(net, image[:, :, :fixed]), run_net(net, image[:, :, step:])
        else:
            long = _accept(multiple, offset, shrink, 2 * reach + 2 * step + 64)
            image = torch.randn(1, bands, long, _accept(multiple, offset, shrink, 64 + 2 * shrink))
            first, second = run_net(net, image), run_net(net, image[:, :, step:])
        keep = max(reach - shrink, 0)
        length = min(first.shape[2] - step, second.shape[2]) - keep
        if length <= keep:
            continue
        a = first[:, :, step + keep : step + length]
        b = second[:, :, keep:length]
        if _close(a, b, tolerance) is not None:
            return step
    return None


def least_halo(reaches: list[_Reach], grid: int, found: tuple[int, int, int, int | None], reach: int) -> int | None:
    """The least halo for which every changed output lies in a core whose window holds the changed input pixel
    (cores of one ``grid`` step, the worst case, with the window the engine reads for them); None when none
    up to the reach and a stride does. A fixed window's core, ``fixed - 2 * halo``, must also be on the grid."""
    multiple, offset, shrink, fixed = found
    for halo in range(shrink, reach + grid + shrink + 1):
        if fixed:
            # a larger core only adds cells whose context is wider than its first and last cell's
            if fixed - 2 * halo <= 0 or (fixed - 2 * halo) % grid:
                continue
            window = grid + 2 * halo
        else:
            window = _accept(grid, offset % grid, shrink, grid + 2 * halo)
        if all(_covered(r, grid, halo - shrink, window) for r in reaches):
            return halo
    return None


def _covered(reach: _Reach, step: int, margin: int, window: int) -> bool:
    for pos, out in zip(reach.positions, reach.changed):
        out = out[out >= margin]
        starts = (out - margin) // step * step
        if ((pos < starts) | (pos >= starts + window)).any():
            return False
    return True


def tiled_error(net: nn.Module, bands: int, geometry: Geometry, core: int, tolerance: float) -> float | None:
    """Max ``|tiled - whole|`` of the logits on a random ``2 core`` square image cut into 2 x 2 cores, each
    read from its mirror-padded window as the engine reads it; None when over ``tolerance``."""
    size, halo, margin = 2 * core, geometry.halo, geometry.halo - geometry.shrink
    image = torch.randn(1, bands, size, size)

    def window(y: int, x: int, length: int) -> torch.Tensor:
        rows = torch.from_numpy(reflect_indices(y - halo, length, size))
        cols = torch.from_numpy(reflect_indices(x - halo, length, size))
        return image[:, :, rows][:, :, :, cols]

    whole = run_net(net, window(0, 0, geometry.input_length(geometry.window_output(size + 2 * margin))))
    whole = whole[:, :, margin : margin + size, margin : margin + size]
    tiled = torch.empty_like(whole)
    length = geometry.window(core)
    for y in (0, core):
        for x in (0, core):
            out = run_net(net, window(y, x, length))
            tiled[:, :, y : y + core, x : x + core] = out[:, :, margin : margin + core, margin : margin + core]
    return _close(whole, tiled, tolerance)


def fixed_window_error(
    net: nn.Module, bands: int, fixed: int, grid: int, margin: int, tolerance: float
) -> float | None:
    """For a fixed window: two windows ``grid`` apart (along both axes), compared where their cores (``margin``
    output pixels in from the border) overlap; None when over ``tolerance`` or the cores do not overlap."""
    image = torch.randn(1, bands, fixed + grid, fixed + grid)
    first = run_net(net, image[:, :, :fixed, :fixed])
    second = run_net(net, image[:, :, grid:, grid:])
    length = first.shape[2]
    if length - grid - margin <= margin:
        return None
    a = first[:, :, grid + margin : length - margin, grid + margin : length - margin]
    b = second[:, :, margin : length - grid - margin, margin : length - grid - margin]
    return _close(a, b, tolerance)


def probe(
    net: nn.Module,
    bands: int,
    fixed: int | None = None,
    tolerance: float = 1e-4,
    budget: float | None = None,
    log: Callable[[str], None] | None = None,
) -> ProbeReport:
    """Measure ``net``'s tiling geometry (see the module docstring).

    Args:
        net: the network on the CPU, fp32; an :class:`~tileseg.models.external.ExternalNet` whose output is a
            fraction of its input has its ``output_scale`` set here.
        bands: input channels.
        fixed: the only input size it takes (an ONNX file with fixed dimensions), or None to search.
        tolerance: tiled against whole logits, relative to their scale (at least 1).
        budget: seconds the probe may take, or None.
        log: called with a line per finding.

    Raises:
        ProbeError: no probed size runs, the output relation is not supported, or the budget ran out.
    """
    say = log or (lambda line: None)
    clock = Clock(budget)
    net.eval()
    found = accepted_sizes(net, bands, fixed, clock)
    scale, shrink = output_relation(found)
    if scale != 1:
        if not hasattr(net, "output_scale"):
            raise ProbeError(f"the output is {scale:g} of the input; only TorchScript and ONNX models are upsampled")
        setattr(net, "output_scale", scale)  # noqa: B010 (an ExternalNet's attribute; nn.Module types it loosely)
    size, out, channels = found[0]
    out = size - 2 * shrink  # after the wrapper's upsampling
    fixed = fixed or (size if len(found) == 1 else None)
    step = found[1][0] - size if len(found) > 1 else 1
    say(f"accepts {'only ' + str(fixed) if fixed else f'{size} + k*{step}'} px; shrink {shrink}; scale {scale:g}")
    shape = (step, out % step, shrink, fixed)
    reaches, reach = receptive_field(net, bands, shape, clock)
    say(f"receptive field: {'past the input' if reach is None else f'{reach} px'}")
    grid = stride_grid(net, bands, shape, reach, tolerance) if reach is not None else None
    clock.check()
    halo = least_halo(reaches, grid, shape, reach) if grid is not None and reach is not None else None
    report = _report(net, bands, channels, shape, scale, reach, grid, halo, tolerance)
    report.seconds = round(clock.elapsed, 1)
    say(f"halo {report.halo}, stride {report.multiple}: {report.why}")
    clock.check()
    return report


def _report(net, bands, channels, shape, scale, reach, grid, halo, tolerance) -> ProbeReport:
    """The report of an exactly tileable network if the tiled check passes, else of a blended one."""
    step, offset, shrink, fixed = shape
    common = {"bands": bands, "classes": channels, "shrink": shrink, "output_scale": scale, "fixed_window": fixed,
              "accepted_step": step, "receptive_field": reach}  # fmt: skip
    why = None
    if reach is None:
        why = "its receptive field reaches past the largest probe input (global context, e.g. attention)"
    elif grid is None:
        why = "shifting its input by up to 64 px does not shift its output"
    elif halo is None:
        why = "no halo within its receptive field makes every output's window hold its inputs"
    if why is None and grid is not None and halo is not None:
        geometry = _exact_geometry(step, offset, shrink, fixed, grid, halo)
        if fixed:
            error = fixed_window_error(net, bands, fixed, grid, halo - shrink, tolerance)
        else:
            error = tiled_error(net, bands, geometry, geometry.multiple * max(1, 64 // geometry.multiple), tolerance)
        if error is not None:
            return ProbeReport(**common, multiple=geometry.multiple, offset=geometry.offset, halo=halo,
                               equivariant=True, tiled_error=error, default_tile=geometry.default_tile,
                               why=EXACT_FIXED if fixed else "tiled equals whole: exact seams")  # fmt: skip
        why = f"tiled differs from whole beyond {tolerance:g} (relative): not translation-equivariant"
    halo = max(shrink, 32)
    if fixed:
        core = fixed - 2 * halo if fixed - 2 * halo > 0 else fixed - 2 * shrink
        halo = (fixed - core) // 2
        multiple, out_offset = core, (fixed - 2 * shrink) % core
    else:
        multiple, out_offset = grid or step, offset
        core = multiple * max(1, round((DEFAULT_CORE - 64) / multiple))
    return ProbeReport(**common, multiple=multiple, offset=out_offset % multiple, halo=halo, equivariant=False,
                       tiled_error=None, default_tile=core, why=f"{why}; blended windows")  # fmt: skip


def _exact_geometry(step: int, offset: int, shrink: int, fixed: int | None, grid: int, halo: int) -> Geometry:
    """The crop-mode geometry: for a fixed window its one core (``fixed - 2 halo``) is the multiple."""
    if fixed:
        core = fixed - 2 * halo
        return Geometry(halo=halo, multiple=core, offset=(fixed - 2 * shrink) % core, shrink=shrink,
                        default_tile=core, fixed_window=fixed)  # fmt: skip
    core = grid * max(1, round(DEFAULT_CORE / grid))
    return Geometry(halo=halo, multiple=grid, offset=offset % grid, shrink=shrink, default_tile=core)
