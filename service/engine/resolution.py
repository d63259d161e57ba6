"""Which pixel size a run reads at, from which pyramid level, on which grid, and why.

The model card says the pixel size a network was trained at, with a tolerance; the input's metadata (or
the ``pixel_size`` option) says its own (:mod:`tileseg.engine.io.pixelsize`). Under the ``resample``
policy, when the two differ by more than the tolerance, the run reads the coarsest pyramid level that is
still at least as fine as the model's pixel size and resamples it to a virtual grid at the model's pixel
size (:class:`tileseg.engine.io.resample.ResampledRaster`); ``native`` reads level 0 as it is; ``strict``
refuses an input (or a model) without a pixel size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tileseg.engine.errors import PixelSizeError
from tileseg.engine.io.pixelsize import MeasuredSize, describe
from tileseg.engine.options import OutputGrid, PixelSizePolicy
from tileseg.engine.results import PixelSizeReport, PixelsRead
from tileseg.models.spec import ModelSpec

log = logging.getLogger(__name__)

MAX_UPSAMPLING = 4  # a coarser input than this is refused under "resample": it is a wrong size, or a wrong model


@dataclass(frozen=True)
class Resolution:
    """A run's reading plan.

    Attributes:
        input: the input's pixel size (metres, or None) and where it came from.
        model: the model's pixel size in metres, or None.
        level: the pyramid level read (0 the full resolution).
        grid: ``(height, width)`` of the grid the model sees; the level's own size when not resampled.
        read: the pixel size of that grid in metres, or None when unknown.
        policy: the policy applied.
        why: one sentence for people, which the job record and the output's tags carry.
    """

    input: MeasuredSize
    model: float | None
    level: int
    grid: tuple[int, int]
    resampled: bool
    read: float | None
    policy: PixelSizePolicy
    why: str

    def report(self, pixels_read: PixelsRead | None = None) -> PixelSizeReport:
        """The plan as the run's report, with the pixels decoded once the run is done."""
        return PixelSizeReport(
            input_pixel_size_m=self.input.metres,
            input_pixel_size_source=self.input.source,
            input_pixel_size_note=self.input.note,
            model_pixel_size_m=self.model,
            read_pixel_size_m=self.read,
            level=self.level,
            grid=list(self.grid),
            resampled=self.resampled,
            policy=self.policy.value,
            why=self.why,
            pixels_read=pixels_read,
        )


def plan_resolution(
    levels: list[tuple[int, int]],
    measured: MeasuredSize,
    spec: ModelSpec,
    policy: PixelSizePolicy = PixelSizePolicy.RESAMPLE,
    stated: float | None = None,
) -> Resolution:
    """The level and grid to read an input at.

    Args:
        levels: ``(height, width)`` of each pyramid level, level 0 first.
        measured: the input's pixel size from its metadata.
        spec: the model's spec (its pixel size and tolerance).
        policy: resample, native or strict.
        stated: the pixel size the user gave (metres), which overrides the metadata.

    Raises:
        PixelSizeError: ``strict`` and the input's or the model's pixel size is unknown.
    """
    policy = PixelSizePolicy(policy)
    if stated is not None:
        note = f"the file said {describe(measured.metres)}" if measured.metres else None
        measured = MeasuredSize(stated, "stated (pixel_size option)", note)
    model, tol = spec.input.pixel_size, spec.input.pixel_tolerance
    native = levels[0]

    def keep(why: str) -> Resolution:
        return Resolution(measured, model, 0, native, False, measured.metres, policy, why)

    if policy is PixelSizePolicy.STRICT and (measured.metres is None or model is None):
        missing = f"model {spec.name} states no pixel size" if model is None else "the input's pixel size is unknown"
        hint = "" if model is None else f" ({measured.note})" if measured.note else ""
        raise PixelSizeError(
            f"pixel_size_policy strict: {missing}{hint}; give the input's with pixel_size (e.g. 0.25um or 0.3m) "
            "or choose pixel_size_policy resample or native"
        )
    if policy is PixelSizePolicy.NATIVE:
        return keep(f"native policy: read at the input's own pixel size ({describe(measured.metres)})")
    if model is None:
        return keep(f"model {spec.name} states no pixel size: read at the input's own")
    if measured.metres is None:
        note = f" ({measured.note})" if measured.note else ""
        return keep(f"the input's pixel size is unknown{note}: read as it is, at the risk of the wrong scale")
    ratio = model / measured.metres  # input pixels per model pixel
    if abs(ratio - 1) <= tol:
        return keep(f"the input's {describe(measured.metres)} is within {tol:.0%} of the model's {describe(model)}")
    if ratio < 1 / MAX_UPSAMPLING:
        raise PixelSizeError(
            f"the input's pixel size {describe(measured.metres)} ({measured.source}) is {1 / ratio:.0f}x coarser than "
            f"the model's {describe(model)}: upsampling by more than {MAX_UPSAMPLING}x invents detail the network "
            "expects to see; check the pixel size, state it with pixel_size, or choose pixel_size_policy native"
        )
    level = choose_level(levels, ratio * (1 + tol))
    grid = (max(1, round(native[0] / ratio)), max(1, round(native[1] / ratio)))
    level_size = levels[level]
    downsample = native[0] / level_size[0]
    exact = abs(downsample / ratio - 1) <= tol
    grid = level_size if exact else grid
    read = measured.metres * native[0] / grid[0]
    how = "read as it is" if exact else f"resampled ({'area average' if ratio > downsample else 'bilinear'})"
    why = (
        f"the input's {describe(measured.metres)} ({measured.source}) differs from the model's {describe(model)} "
        f"by more than {tol:.0%}: level {level} ({level_size[1]}x{level_size[0]}) {how} to {grid[1]}x{grid[0]} "
        f"at {describe(read)}"
    )
    return Resolution(measured, model, level, grid, not exact, read, policy, why)


def choose_level(levels: list[tuple[int, int]], most: float) -> int:
    """The coarsest level whose downsample (from level 0) is at most ``most``: at least as fine as needed."""
    full = levels[0][0]
    fitting = [k for k, (h, _w) in enumerate(levels) if full / h <= most]
    return max(fitting, key=lambda k: full / levels[k][0]) if fitting else 0


def pixel_size_warnings(resolution: Resolution, spec: ModelSpec) -> list[str]:
    """A warning when the run reads at a pixel size far from the model's, or cannot tell."""
    model, read = resolution.model, resolution.read
    if model is None:
        return []
    if read is None:
        note = f"{spec.name} was trained at {describe(model)}; {resolution.why}"
        log.warning(note)
        return [note]
    ratio = read / model
    if abs(ratio - 1) > spec.input.pixel_tolerance and abs(1 / ratio - 1) > spec.input.pixel_tolerance:
        note = (
            f"the pixel size read ({describe(read)}) differs from the {describe(model)} that {spec.name} was "
            f"trained at by {max(ratio, 1 / ratio):.1f}x ({resolution.why}): expect a poorer result"
        )
        log.warning(note)
        return [note]
    return []


__all__ = ["OutputGrid", "PixelSizePolicy", "Resolution", "choose_level", "pixel_size_warnings", "plan_resolution"]
