"""The viewer's costs: the view copy of an input and the mask's overviews (made once, when a job succeeds),
and the time to render one tile at the finest and the coarsest zoom. Prints a table.

    python -m bench.viewer [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import morecantile
import numpy as np
import rasterio

from tileseg.engine.views.render import add_overviews, pyramid, render_tile, write_view

IMAGES = ["geotiff/RGB.byte.tif", "large/bmng_5400x2700_epsg4326_tiled.tif", "large/cmu_small_region.svs"]


def _tile_seconds(path: Path, layer: str, zoom: str, rounds: int = 20) -> float:
    info = pyramid(path)
    z = info.max_zoom if zoom == "finest" else info.min_zoom
    if info.kind == "xyz":
        west, south, east, north = info.bounds
        tile = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, z)
        x, y = tile.x, tile.y
    else:
        x = y = 0
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        render_tile(path, layer, z, x, y)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("TILESEG_SHARED_DATA", "../shared/data"))
    args = parser.parse_args()
    print("| image | size | view copy s | mask overviews s | tile ms (finest / coarsest zoom) |")
    print("|---|---|---:|---:|---:|")
    for name in IMAGES:
        source = Path(args.data) / name
        with tempfile.TemporaryDirectory() as tmp, rasterio.open(source) as src:
            view, mask = Path(tmp) / "view.tif", Path(tmp) / "mask.tif"
            profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 1, "dtype": "uint8"}
            profile.update(tiled=True, compress="deflate", nodata=255)
            if src.crs:
                profile.update(crs=src.crs, transform=src.transform)
            with rasterio.open(mask, "w", **profile) as dst:
                for _, window in dst.block_windows(1):
                    dst.write(
                        np.full((window.height, window.width), window.col_off // 256 % 4, np.uint8), 1, window=window
                    )
            start = time.perf_counter()
            write_view(source, view)
            view_s = time.perf_counter() - start
            start = time.perf_counter()
            add_overviews(mask)
            ovr_s = time.perf_counter() - start
            tiles = "/".join(f"{1000 * _tile_seconds(view, 'input', z):.1f}" for z in ("finest", "coarsest"))
            print(f"| {name} | {src.width}x{src.height}x{src.count} | {view_s:.2f} | {ovr_s:.2f} | {tiles} |")


if __name__ == "__main__":
    main()
