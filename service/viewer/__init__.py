"""The viewer: a job's mask shown over its input in a browser, and all it takes in one place.

- :mod:`tileseg.viewer.render`: view copies of inputs, overviews on masks, and web tiles of either, read
  straight from the files (over the engine's raster IO only).
- :mod:`tileseg.viewer.preview`: a small colour picture of a mask.
- :mod:`tileseg.viewer.routes`: the HTTP side: the page at ``/`` with its assets (``ui/``), a job's live
  progress, its tile pyramids and tiles.

render and preview sit on the engine, so that a job's run can make its view copy and preview with them;
routes sit on the jobs and on the API's dependencies, and the API's app includes them. The engine imports
nothing of the viewer, and the jobs nothing of its routes (tests/test_layout.py checks both).
"""
