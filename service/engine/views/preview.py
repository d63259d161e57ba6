"""A small colour picture of a mask, for people: the classes in their card's colours, nodata transparent.

The mask is read decimated (nearest neighbour, so class indices stay class indices); GDAL serves the read
from the overviews of a COG, and from a strided read otherwise. Memory follows the preview, not the mask.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling

from tileseg.engine.io import gdal_env

PREVIEW_SIDE = 512


def render_preview(mask: str | os.PathLike, output: str | os.PathLike, side: int = PREVIEW_SIDE) -> Path:
    """Write an RGBA PNG of ``mask`` whose longest side is at most ``side`` pixels.

    Colours come from the mask's colour table (written from the model card); without one, classes are
    spread over a grey ramp. The PNG appears only when complete.
    """
    output = Path(output)
    with gdal_env(), rasterio.open(mask) as src:
        scale = max(src.width, src.height) / side
        shape = (max(1, round(src.height / max(scale, 1))), max(1, round(src.width / max(scale, 1))))
        classes = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        nodata = src.nodata
        try:
            table = src.colormap(1)
        except ValueError:  # no colour table
            table = {}
    palette = np.zeros((int(classes.max(initial=0)) + 1, 4), dtype=np.uint8)
    for index in range(len(palette)):
        grey = int(255 * index / max(1, len(palette) - 1))
        palette[index] = table.get(index, (grey, grey, grey, 255))
    rgba = palette[classes]
    if nodata is not None:
        rgba[classes == int(nodata)] = 0
    tmp = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        Image.fromarray(rgba).save(tmp, format="PNG")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


__all__ = ["render_preview"]
