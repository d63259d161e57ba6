"""Pictures of the engine's outputs for people: what the web page shows.

- :mod:`.render`: view copies of inputs (8-bit display bands with overviews), overviews on masks, and web tiles
  of either, read straight from the files.
- :mod:`.preview`: a small colour picture of a mask.

The jobs make view copies and previews with these when a run ends; the API's viewer routes
(:mod:`tileseg.api.routes_viewer`) serve them.
"""
