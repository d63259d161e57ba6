"""One image on many processes: row bands of the tile plan, exact at their seams.

- :mod:`.plan`: how an image is split into bands of tile rows, and the bands' outputs assembled into one mask.
- :mod:`.run`: one band run in a process of its own, its strips written to shard files.

A band's strips equal the whole run's because, in crop mode, each tile row's strip depends on its own tiles
alone (their windows, halo and mirror padding are the whole image's).
"""
