"""The bands of a raster that feed a model: which of them (an explicit selection, or all but an alpha band,
which becomes the validity mask), whether the model takes their data type, and how their values are scaled to
the network's input (checked and worked out once per raster, from its header and a decimated read).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError

from tileseg.engine.errors import BandMismatchError, DtypeError, UnreadableInputError
from tileseg.models.spec import ModelSpec
from tileseg.urls import mask_text

STATS_SIDE = 1024  # longest side of the decimated read that percentile statistics are taken from


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
        hint = (
            ""
            if bands
            else f"; choose {spec.input.bands} with --bands, e.g. --bands "
            f"{','.join(map(str, range(1, spec.input.bands + 1)))}"
            if len(chosen) > spec.input.bands
            else ""
        )
        raise BandMismatchError(
            f"model {spec.name} takes {spec.input.bands} band(s), the input gives {len(chosen)}{alpha_note}{hint}"
        )
    return chosen, alpha


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
    """The 2nd and 98th percentiles of each of ``bands`` of the open dataset ``src``, from a read decimated to
    at most :data:`STATS_SIDE` a side (valid pixels only)."""
    scale = max(src.width, src.height) / STATS_SIDE
    shape = (len(bands), max(1, round(src.height / max(scale, 1))), max(1, round(src.width / max(scale, 1))))
    try:
        sample = src.read(bands, out_shape=shape, masked=True, resampling=Resampling.nearest)
    except RasterioError as err:
        raise UnreadableInputError(mask_text(f"cannot read {src.name}: {err}")) from err
    low, high = np.zeros(len(bands)), np.ones(len(bands))
    for i, band in enumerate(sample):
        values = band.compressed()
        values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if values.size:
            low[i], high[i] = np.percentile(values, [2, 98])
    return low, high
