"""A job's objects (``instances=true``): what a job of an instance model makes besides its mask, and the checks
made before such a job exists.

A job that asks for objects writes, beside its mask, the label GeoTIFF (``instances.tif``: 0 = no object, 1..N
one object each) and the objects' table (``objects.csv``), from the engine's instance sink in the mask's pass
(:mod:`tileseg.engine.instances.sink`); with ``vectors=true`` its GeoPackage holds one feature per object. They
are published, staged in S3 and expired with the job's other results (:mod:`tileseg.jobs.files`,
:mod:`tileseg.jobs.objects`). A model whose card declares no instance decoding is refused at submission, never
as a failed job.
"""

from __future__ import annotations

import os
from typing import Any

from tileseg.engine.errors import OptionsError
from tileseg.engine.instances.sink import FIELDS, check_instances
from tileseg.engine.options import ObjectType
from tileseg.engine.outputs import wants_objects
from tileseg.engine.vectors.sink import export
from tileseg.jobs.errors import NoInstanceOutputError
from tileseg.jobs.files import JobFiles
from tileseg.jobs.intake import JobOptions
from tileseg.jobs.store import Job
from tileseg.models.spec import ModelSpec

# what a pixel-space GeoJSON of an instance job carries as each detection's measurements (QuPath's); the band
# means (band_1, ...) are added from the GeoPackage's fields
MEASUREMENTS = FIELDS[4:]


def check_objects(options: JobOptions, spec: ModelSpec, served: Any) -> None:
    """Refuse ``instances=true`` for a model without an instance decoding, before the job exists.

    Args:
        options: the job's options.
        spec: the model's spec.
        served: the served models (:class:`~tileseg.jobs.modelpool.ServedModels`): the message names those
            of them that make objects.

    Raises:
        NoInstanceOutputError: (a 400) the model has no instance output; the message names the models with one.
    """
    if not options.instances or spec.instances is not None:
        return
    with_objects = [name for name in served.names if served.spec(name).instances is not None]
    try:
        check_instances(spec, with_objects)
    except OptionsError as err:
        raise NoInstanceOutputError(f"instances=true: {err}") from None


def object_outputs(options: JobOptions, files: JobFiles) -> dict[str, Any]:
    """The engine's ``instances`` and ``objects`` keywords for a run writing into ``files`` (None: not asked)."""
    if not options.instances:
        return {"instances": None, "objects": None}
    return {"instances": files.instances, "objects": files.objects}


def keeps_probabilities(options: JobOptions, spec: ModelSpec) -> bool:
    """Whether a shard of this job keeps its probabilities: asked for, or needed by the objects' decoding (an
    object's ``probability``), as :func:`tileseg.engine.shards.plan.segment_sharded` keeps them."""
    objects = wants_objects(spec, True if options.instances else None, None, True if options.vectors else None)
    return options.probabilities or objects


def export_vectors(job: Job, gpkg: str | os.PathLike, target: str | os.PathLike) -> None:
    """Convert a job's stored GeoPackage to ``target``'s format: an instance job's features are QuPath
    detections with their numbers as measurements, any other job's are regions as its ``object_type`` says."""
    import pyogrio

    fields = list(pyogrio.read_info(gpkg)["fields"])
    if "perimeter_px" in fields:  # the objects of an instance model (tileseg.engine.instances.sink.FIELDS)
        bands = tuple(name for name in fields if name.startswith("band_"))
        export(gpkg, target, ObjectType.DETECTION, MEASUREMENTS + bands)
        return
    export(gpkg, target, ObjectType(job.options.get("object_type") or ObjectType.ANNOTATION.value))


__all__ = ["MEASUREMENTS", "check_objects", "export_vectors", "keeps_probabilities", "object_outputs"]
