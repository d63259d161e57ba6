"""A run's read plan: what the model reads (which pyramid level, on which grid, inside which region) and
where the mask goes (the input's grid or the model's), decided once before any tile is run.

:func:`read_plan` opens it over an input: the pixel size decides the level and the grid
(:mod:`tileseg.engine.resolution`), the ``roi`` option the region (:mod:`tileseg.engine.roi`). The pipeline
then tiles :attr:`ReadPlan.source` and hands the strips it makes to :meth:`ReadPlan.output_strips`, which
puts them on the output's grid with its validity.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tileseg.engine.io.resample import ResampledRaster
from tileseg.engine.io.source import RasterSource
from tileseg.engine.options import OutputGrid, SegmentOptions
from tileseg.engine.resolution import Resolution, plan_resolution
from tileseg.engine.results import PixelsRead
from tileseg.engine.roi import Roi, region_of_interest
from tileseg.engine.stitching import Strip, regrid_strips
from tileseg.models.spec import ModelSpec


@dataclass(frozen=True)
class ReadPlan:
    """What a run reads and where its mask goes.

    Attributes:
        full: the input at level 0.
        resolution: the level and grid read, and why.
        grid: the grid the model sees: ``full``, one of its levels, or a level resampled.
        roi: the region of interest, or None.
        source: what is tiled: ``grid``, restricted to the region.
        target: the output's grid: ``full`` or ``grid`` (by ``output_grid``), restricted to the region.
    """

    full: RasterSource
    resolution: Resolution
    grid: RasterSource
    roi: Roi | None
    source: RasterSource
    target: RasterSource

    @property
    def target_pixel_size(self) -> float | None:
        """The output's pixel size in metres, or None when unknown."""
        size = self.full.pixel_size.metres
        return None if size is None else size * self.full.height / self.target.height

    def output_strips(self, strips: Iterable[Strip]) -> Iterator[Strip]:
        """``source``'s strips on the target's grid, each with the target's validity of its rows."""
        shape, out = (self.source.height, self.source.width), (self.target.height, self.target.width)
        if self.target is not self.source and shape != out:
            strips = regrid_strips(strips, shape, out)
        for strip in strips:
            strip.valid = self.target.read_valid(strip.y, 0, strip.height, self.target.width)
            yield strip

    def pixels_read(self) -> PixelsRead:
        """Pixels decoded from level 0 and from the level the grid is made of."""
        level_0 = self.full.pixels_read
        if self.grid is self.full:
            return PixelsRead(level_0=level_0, grid=level_0)
        level = getattr(self.grid, "base", self.grid)  # a resampled grid counts its level's
        return PixelsRead(level_0=level_0, grid=int(getattr(level, "pixels_read", 0)))


@contextmanager
def read_plan(full, spec: ModelSpec, options: SegmentOptions) -> Iterator[ReadPlan]:
    """The read plan of a run over ``full`` (the input at level 0); a level's reader is closed on the way out.

    Raises:
        PixelSizeError: see :func:`tileseg.engine.resolution.plan_resolution`.
        RoiError: see :func:`tileseg.engine.roi.region_of_interest`.
    """
    resolution = plan_resolution(full.levels, full.pixel_size, spec, options.pixel_size_policy, options.pixel_size_m)
    with reading_grid(full, resolution) as grid:
        roi = region_of_interest(full, grid, options.roi) if options.roi else None
        target = full if options.output_grid is OutputGrid.INPUT else grid
        yield ReadPlan(
            full=full,
            resolution=resolution,
            grid=grid,
            roi=roi,
            source=roi.restrict(grid) if roi else grid,
            target=roi.restrict(target) if roi else target,
        )


@contextmanager
def reading_grid(full, resolution: Resolution) -> Iterator[RasterSource]:
    """The reader of the grid the model sees: ``full`` itself, one of its pyramid levels, or a level
    resampled to a virtual grid (:class:`ResampledRaster`); a level's reader is closed on the way out."""
    if resolution.level == 0 and not resolution.resampled:
        yield full
        return
    level = full.at_level(resolution.level) if resolution.level else full
    try:
        yield ResampledRaster(level, *resolution.grid) if resolution.resampled else level
    finally:
        if level is not full:
            level.close()


__all__ = ["ReadPlan", "read_plan", "reading_grid"]
