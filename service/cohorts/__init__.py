"""Many inputs in one run: ``tileseg segment INPUT... --out-dir DIR``.

* :mod:`~tileseg.cohorts.inputs` expands INPUTs (files, folders, globs, ``@lists``, ``s3://`` prefixes, STAC
  documents) into named sources; :mod:`~tileseg.cohorts.stac_search` takes the items of a STAC API's search;
  :mod:`~tileseg.cohorts.catalogs` reads STAC ItemCollections and static catalogs.
* :mod:`~tileseg.cohorts.runner` segments each source with one loaded model into ``DIR/NAME/`` and records each
  attempt in ``DIR/manifest.jsonl`` (:mod:`~tileseg.cohorts.manifest`); :mod:`~tileseg.cohorts.pool` spreads the
  inputs over worker processes.

The guarantees, written once:

1. **Outputs appear only whole.** An input's outputs are written into ``DIR/.partial/NAME.PID/`` and moved into
   place as ``DIR/NAME/`` by one rename once all are complete; only then is its manifest line written.
2. **A line is there whole or not at all.** Each line is one ``write`` on a file opened for appending, flushed
   to disk (``fsync``) before the next input starts; a torn line is skipped by readers.
3. **A crash loses at most the inputs in flight.** Running the same command again skips each input whose last
   attempt succeeded with the same options hash and whose outputs are there, unchanged since (the mask's size
   and modification time); anything else is done again. Staging folders left by a killed run are removed.
4. **A failing input does not stop the run** (unless ``--fail-fast``); it is recorded with its error, and the
   command exits 1.
5. **Ctrl-C stops cleanly**: the input in flight leaves no output and is recorded as ``interrupted``.

This layer uses the engine, the object store and the leaves; nothing of the jobs or the HTTP layer.
"""
