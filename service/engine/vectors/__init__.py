"""Polygons of the mask's regions, made in the same pass as the mask.

- :mod:`.polygons`: the regions of each strip labelled and polygonized, regions open at a strip's lower edge
  carried to the next strip and merged, so that a region crossing any seam is one polygon.
- :mod:`.sink`: the vector sink of a run (GeoPackage, GeoJSON with QuPath's fields, FlatGeobuf, GeoParquet).
"""
