"""Tile planning: where each tile's core lies, which input window feeds it, and which output to keep.

U-Net's overlap-tile strategy. The output is cut into *cores* on a regular grid whose step is a multiple
of the network's total stride. Each core is predicted from an input *window* enlarged by the halo on
every side; the parts of a window outside the image are mirrored (reflect) from the image. The network
maps the window to an output whose centre is the core.

Because every window starts on the stride grid of one virtual, mirror-padded whole image, a
translation-equivariant network computes, tile by tile, exactly what it would compute on that whole
image: the seams are exact. Blended modes step by less than a window and weight the overlapping
predictions instead (for networks where that equality cannot hold).

All coordinates are ``(row, col)`` pixels of the input image; a window may start before 0 or end past
the image, which is what the mirror padding fills.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tileseg.engine.errors import TileGeometryError
from tileseg.engine.options import DEFAULT_BATCH, MAX_TILE, SegmentOptions
from tileseg.models.spec import BlendMode, Geometry, ModelSpec

if TYPE_CHECKING:
    from tileseg.engine.runtime.choice import Choice


@dataclass(frozen=True)
class TileSettings:
    """How to tile, checked against a model's geometry.

    Attributes:
        core: the output core length in pixels (``--tile``); a multiple of the model's stride.
        blend: crop (exact) or a weighted blend of overlapping windows.
        overlap: blended modes only: extra overlap as a fraction of the window, ``0 <= overlap < 1``.
        batch: tiles per forward pass.
    """

    geometry: Geometry
    core: int
    blend: BlendMode = BlendMode.CROP
    overlap: float = 0.0
    batch: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "blend", parse_blend(self.blend))
        g = self.geometry
        if not 0 < self.core <= MAX_TILE:
            raise TileGeometryError(
                f"tile {self.core} is out of range: give a core between {g.multiple} and {MAX_TILE}"
            )
        if g.fixed_window is not None and self.window != g.fixed_window:
            raise TileGeometryError(
                f"tile {self.core} needs a {self.window} px window, but the model takes only {g.fixed_window} px "
                f"windows: give tile {g.fixed_window - 2 * g.halo}"
            )
        if self.core % g.multiple:
            below = self.core - self.core % g.multiple
            nearest = ", ".join(str(n) for n in (below, below + g.multiple) if n > 0)
            raise TileGeometryError(
                f"tile {self.core} breaks the model's geometry: the core must be a multiple of its stride "
                f"{g.multiple} so that every tile starts on the same pooling grid; nearest valid: {nearest}"
            )
        if not 0 <= self.overlap < 1:
            raise TileGeometryError(f"overlap {self.overlap} is out of range: give 0 <= overlap < 1")
        if self.overlap and self.blend is BlendMode.CROP:
            raise TileGeometryError("overlap applies to the blended modes only (gaussian, cosine), not to crop")
        if self.batch < 1:
            raise TileGeometryError(f"batch {self.batch} is out of range: give at least 1")
        if self.step < g.multiple:
            most = (self.core - g.multiple) / self.window
            raise TileGeometryError(
                f"overlap {self.overlap} leaves no step between windows of {self.window} px around a {self.core} px "
                f"core: give at most {most:.3f}, or a larger tile"
            )

    @property
    def margin(self) -> int:
        """Output pixels predicted on each side of a core (the halo less the network's own shrink)."""
        return self.geometry.halo - self.geometry.shrink

    @property
    def output_size(self) -> int:
        """Length of the network's output for one window (at least the core plus both margins)."""
        return self.geometry.window_output(self.core + 2 * self.margin)

    @property
    def window(self) -> int:
        """Length of the input window fed to the network."""
        return self.geometry.window(self.core)

    @property
    def step(self) -> int:
        """Distance between neighbouring cores: the core, less the extra overlap in blended modes."""
        if self.blend is BlendMode.CROP:
            return self.core
        reduced = self.core - math.ceil(self.overlap * self.window)
        return reduced - reduced % self.geometry.multiple


def parse_blend(value: str | BlendMode) -> BlendMode:
    """A blend mode from its name, with the valid names in the error."""
    try:
        return BlendMode(value)
    except ValueError:
        valid = ", ".join(m.value for m in BlendMode)
        raise TileGeometryError(f"unknown blend mode {value!r}; valid: {valid}") from None


@dataclass(frozen=True)
class Tile:
    """One tile: its place in the grid and the image region its core covers."""

    index: int
    row: int
    col: int
    y: int  # first image row of the core
    x: int  # first image column of the core
    height: int  # core rows inside the image
    width: int  # core columns inside the image


@dataclass(frozen=True)
class TilePlan:
    """The tiles that cover an image of ``height`` x ``width``, in row-major order."""

    settings: TileSettings
    height: int
    width: int

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.settings.step)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.settings.step)

    def __len__(self) -> int:
        return self.rows * self.cols

    def __iter__(self) -> Iterator[Tile]:
        step = self.settings.step
        for r in range(self.rows):
            y = r * step
            for c in range(self.cols):
                x = c * step
                yield Tile(r * self.cols + c, r, c, y, x, min(step, self.height - y), min(step, self.width - x))

    def window_origin(self, tile: Tile) -> tuple[int, int]:
        """Image coordinates of the first input pixel of the tile's window (may be negative)."""
        halo = self.settings.geometry.halo
        return tile.y - halo, tile.x - halo


def tile_settings(
    spec: ModelSpec,
    options: SegmentOptions,
    shape: tuple[int, int] | None = None,
    choice: Choice | None = None,
) -> TileSettings:
    """The tile settings of a run, from the options, the tuner's ``choice`` (core and batch) and the model's
    defaults; checked against its geometry.

    Without ``--tile``, and given the image's ``shape``, the core (the tuner's, else the model's default) is
    evened out over the image (:meth:`~tileseg.models.spec.Geometry.evened`): a 512-pixel image takes two
    256-pixel cores a side rather than two of 384, 40 % less work for the same exact result. Networks that are
    not translation-equivariant (transformers) keep their default core, whose window is the size they were
    trained on.
    """
    geometry = spec.geometry
    core = options.tile
    batch = options.batch or (choice.batch if choice else DEFAULT_BATCH)
    if core is None:
        core = choice.core if choice else geometry.default_tile
        if shape is not None and geometry.equivariant:
            core = geometry.evened(core, shape)
    return TileSettings(
        geometry, core=core, blend=options.blend or geometry.blend, overlap=options.overlap, batch=batch
    )


def window_is_free(spec: ModelSpec, options: SegmentOptions) -> bool:
    """Whether the tuner may choose the window: only for exact runs (a translation-equivariant network in crop
    mode, no fixed window), whose mask does not depend on it, and only when ``--tile`` is not given."""
    geometry = spec.geometry
    blend = options.blend or geometry.blend
    return options.tile is None and geometry.equivariant and blend is BlendMode.CROP and geometry.fixed_window is None


@dataclass(frozen=True)
class TileBand(TilePlan):
    """The tiles of tile rows ``first .. stop - 1`` of an image's plan: what one shard runs
    (:mod:`tileseg.engine.shards.run`).

    The tiles keep their place in the whole image's grid (their windows, halo and mirror padding are the
    whole plan's, so a band's cores equal the whole run's); only their ``index`` counts from the band's first
    tile, which is the order the stitcher expects.
    """

    first: int = 0
    stop: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.first < self.stop <= self.rows:
            raise ValueError(f"tile rows {self.first}..{self.stop} are not a band of the plan's {self.rows}")

    def __len__(self) -> int:
        return (self.stop - self.first) * self.cols

    def __iter__(self) -> Iterator[Tile]:
        step, cols = self.settings.step, self.cols
        for r in range(self.first, self.stop):
            y = r * step
            for c in range(cols):
                x = c * step
                index = (r - self.first) * cols + c
                yield Tile(index, r, c, y, x, min(step, self.height - y), min(step, self.width - x))
