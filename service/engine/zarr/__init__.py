"""Masks and probabilities written as OME-Zarr images when OUTPUT ends in ``.zarr`` (reading Zarr is the io
folder's: :mod:`tileseg.engine.io.zarr_raster`).

- :mod:`.image`: an OME-Zarr image written a chunk row at a time, its multiscale pyramid made at the end.
- :mod:`.sink`: the run's sink for it (a standalone image, or NGFF ``labels`` of an OME-Zarr input).
"""
