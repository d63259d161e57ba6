"""The bands of a raster that feed a model: which of them (an explicit selection, or all but an alpha band,
which becomes the validity mask), whether the model takes their data type, and how their values are scaled to
the network's input (checked and worked out once per raster, from its header and a decimated read).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from tileseg.engine.errors import BandMismatchError, DtypeError, UnreadableInputError
from tileseg.models.spec import ModelSpec
from tileseg.urls import mask_text

STATS_SIDE = 1024  # longest side of the decimated read that percentile statistics are taken from
STATS_BLOCKS = 16  # blocks read for the statistics of a tiled image without a pyramid (a 4 x 4 grid)


def select_bands(src, spec: ModelSpec, bands: tuple[int, ...] | None) -> tuple[tuple[int, ...], int | None]:
    """The 1-based band indexes to feed the model, and the alpha band (used as the validity mask) if any.

    An alpha band is dropped; ``bands`` selects explicitly; any other mismatch is an error (there is no
    implicit grey/RGB conversion).
    """
    alpha = next((i + 1 for i, ci in enumerate(src.colorinterp) if ci == ColorInterp.alpha), None)
    if bands:
        bad = [b for b in bands if not 1 <= b <= src.count]
        if bad:
            raise BandMismatchError(f"band {bad[0]} does not exist: the input has bands 1..{src.count}")
        chosen = tuple(bands)
    else:
        chosen = tuple(i for i in range(1, src.count + 1) if i != alpha)
    if len(chosen) != spec.input.bands:
        alpha_note = f" (band {alpha} is alpha and is used as the mask)" if alpha and not bands else ""
        hint = ""
        if not bands and len(chosen) > spec.input.bands:
            hint = f"; choose {spec.input.bands} with --bands, e.g. --bands {_listed(range(1, spec.input.bands + 1))}"
        elif not bands and len(chosen) == 1:  # a grey image (fluorescence, a panchromatic band) for a colour model
            repeated = _listed([chosen[0]] * spec.input.bands)
            hint = f"; a single band feeds all {spec.input.bands} repeated: --bands {repeated}"
        raise BandMismatchError(
            f"model {spec.name} takes {spec.input.bands} band(s), the input gives {len(chosen)}{alpha_note}{hint}"
        )
    return chosen, alpha


def _listed(bands) -> str:
    return ",".join(map(str, bands))


def check_dtype(src, spec: ModelSpec, bands: tuple[int, ...]) -> str:
    """The selected bands' data type, if the model takes it (from the header)."""
    dtypes = {src.dtypes[b - 1] for b in bands}
    if len(dtypes) > 1:
        raise DtypeError(f"the selected bands mix data types ({', '.join(sorted(dtypes))})")
    dtype = dtypes.pop()
    if dtype not in spec.input.dtypes:
        raise DtypeError(f"model {spec.name} does not take {dtype} input; it takes {', '.join(spec.input.dtypes)}")
    return dtype


@dataclass(frozen=True)
class Scaling:
    """How raw band values become the network's input: clip to ``[low, high]`` (dtypes other than uint8),
    then ``x * a + b``, which is the dtype's scaling to [0, 1] folded into the spec's mean/std. The
    arithmetic runs where the network does (:class:`tileseg.engine.batches.BatchRunner`), so that windows travel
    to the device as raw uint8."""

    low: np.ndarray
    high: np.ndarray
    a: np.ndarray
    b: np.ndarray
    clip: bool


def band_scaling(src, spec: ModelSpec, bands: tuple[int, ...]) -> Scaling:
    """How to scale the selected bands: uint8 by 255; any other dtype stretched between the image's 2nd
    and 98th percentiles, taken once per image from a decimated read (which GDAL serves from overviews),
    never per tile, so that neighbouring tiles see the same values."""
    dtype = check_dtype(src, spec, bands)
    if dtype == "uint8":
        return uint8_scaling(spec)
    low, high = percentiles(src, bands)
    return stretch_scaling(spec, low, high, clip=True)


def uint8_scaling(spec: ModelSpec) -> Scaling:
    """The scaling of uint8 bands: divided by 255, then the spec's normalisation; nothing to clip."""
    bands = spec.input.bands
    return stretch_scaling(spec, np.zeros(bands), np.full(bands, 255.0), clip=False)


def stretch_scaling(spec: ModelSpec, low: np.ndarray, high: np.ndarray, clip: bool) -> Scaling:
    """The scaling that maps ``[low, high]`` per band to [0, 1] and then normalises by the spec's mean/std,
    folded into one multiply-add (the factors computed in float64, applied in float32)."""
    mean = np.asarray(spec.input.mean, dtype=np.float64)
    std = np.asarray(spec.input.std, dtype=np.float64)
    span = np.where(high > low, high - low, 1.0)
    a = 1.0 / (span * std)
    b = (-low / span - mean) / std
    f32 = np.float32
    return Scaling(low.astype(f32), high.astype(f32), a.astype(f32), b.astype(f32), clip=clip)


def percentiles(src, bands: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The 2nd and 98th percentiles of each of ``bands`` of the open dataset ``src`` (valid pixels only), from a
    sample whose cost does not grow with the image: :func:`stats_sample`."""
    try:
        sample = stats_sample(src, bands)
    except RasterioError as err:
        raise UnreadableInputError(mask_text(f"cannot read {src.name}: {err}")) from err
    low, high = np.zeros(len(bands)), np.ones(len(bands))
    for i, band in enumerate(sample):
        values = band.compressed()
        values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if values.size:
            low[i], high[i] = np.percentile(values, [2, 98])
    return low, high


def stats_sample(src, bands: tuple[int, ...]) -> np.ma.MaskedArray:
    """``(bands, h, w)`` values to take statistics from, reading what a small image costs whatever the size:

    * a pyramid: its coarsest level with a side of :data:`STATS_SIDE` or more (GDAL serves the decimated read
      from it);
    * tiled, larger than :data:`STATS_SIDE`, no pyramid: :data:`STATS_BLOCKS` blocks spread evenly over the
      image, side by side. A decimated read of the whole image would decode every block: over HTTP, the whole
      file (119 % of a 2048^2 uint16 GeoTIFF's bytes for a 250^2 ROI, the blocks read twice);
    * anything else (small, or in strips): a decimated read.
    """
    side = max(src.width, src.height)
    factors = [f for f in src.overviews(bands[0]) if side / f >= STATS_SIDE]
    block_h, block_w = src.block_shapes[bands[0] - 1]
    if not factors and side > STATS_SIDE and block_w < src.width and block_h < src.height:
        return _block_sample(src, bands, block_h, block_w)
    scale = max(factors) if factors else max(side / STATS_SIDE, 1)
    shape = (len(bands), max(1, round(src.height / scale)), max(1, round(src.width / scale)))
    return src.read(bands, out_shape=shape, masked=True, resampling=Resampling.nearest)


def _block_sample(src, bands: tuple[int, ...], block_h: int, block_w: int) -> np.ma.MaskedArray:
    rows, cols = -(-src.height // block_h), -(-src.width // block_w)
    per_side = max(1, int(STATS_BLOCKS**0.5))
    picks = [
        (int(r), int(c))
        for r in np.unique(np.linspace(0, rows - 1, min(per_side, rows)).round())
        for c in np.unique(np.linspace(0, cols - 1, min(per_side, cols)).round())
    ]
    parts = []
    for r, c in picks:
        window = Window(c * block_w, r * block_h, block_w, block_h).intersection(Window(0, 0, src.width, src.height))
        parts.append(src.read(bands, window=window, masked=True).reshape(len(bands), 1, -1))
    return np.ma.concatenate(parts, axis=2)
