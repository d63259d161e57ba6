"""The overlap-tile engine: any-size raster in, seamless mask GeoTIFF out. No HTTP and no jobs in here.

plan the tiles (:mod:`.tiling`) -> read mirror-padded windows (:mod:`.io`, through :mod:`.readplan`) -> run
batches in the measured runtime (:mod:`.batches`, :mod:`.runtime`) -> aggregate each tile's prediction
(:mod:`.prediction`) into finished rows, stitched or blended (:mod:`.stitching`, :mod:`.blending`) -> the
sinks (:mod:`.sinks`, :mod:`.vectors`, made by :mod:`.outputs`); :mod:`.pipeline` only orchestrates.
Bands of tile rows on many processes: :mod:`.shards`. Pictures for the viewer: :mod:`.views`.
"""

from tileseg.engine.options import SegmentOptions
from tileseg.engine.pipeline import predict_strips, run_file, segment
from tileseg.engine.results import SegmentResult
from tileseg.engine.tiling import tile_settings

__all__ = ["SegmentOptions", "SegmentResult", "predict_strips", "run_file", "segment", "tile_settings"]
