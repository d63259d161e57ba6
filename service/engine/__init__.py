"""The overlap-tile engine: any-size raster in, seamless mask GeoTIFF out. No HTTP and no jobs in here.

plan the tiles (:mod:`.tiling`) -> read mirror-padded windows (:mod:`.io.read`) -> run batches in the measured
runtime (:mod:`.batches`, :mod:`.runtime`) -> aggregate each tile's prediction (:mod:`.prediction`) into
finished rows, stitched or blended (:mod:`.stitching`, :mod:`.blending`) -> write them (:mod:`.io.write`);
:mod:`.pipeline` joins the pieces.
"""

from tileseg.engine.pipeline import (
    SegmentOptions,
    SegmentResult,
    predict_strips,
    run_file,
    segment,
    tile_settings,
)

__all__ = ["SegmentOptions", "SegmentResult", "predict_strips", "run_file", "segment", "tile_settings"]
