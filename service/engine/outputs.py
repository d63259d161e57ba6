"""A run's outputs: the sinks its strips go to, and the provenance tags the mask carries.

:func:`make_sinks` builds the sinks of a read plan (the polygons, then the mask and its probabilities);
:func:`provenance_tags` says how the mask was made (model and card, options, runtime, pixel size, region of
interest), so that a mask found on disk later can be traced to its run.
"""

from __future__ import annotations

import json
from pathlib import Path

from tileseg import __version__, models
from tileseg.engine.instances.decode import bytes_per_pixel
from tileseg.engine.instances.sink import InstanceSink, check_instances
from tileseg.engine.instances.table import check_table_path
from tileseg.engine.io.slide import SlideRaster
from tileseg.engine.options import SegmentOptions
from tileseg.engine.readplan import ReadPlan
from tileseg.engine.results import RuntimeReport
from tileseg.engine.sinks import MaskSink, Sink
from tileseg.engine.vectors.sink import VectorSink, check_vector_path
from tileseg.engine.zarr.sink import ZarrMaskSink, is_zarr_path, zarr_target
from tileseg.models.base import SegmentationNet


def make_sinks(
    plan: ReadPlan, spec, options: SegmentOptions, output: Path, probabilities, vectors, instances=None, objects=None
) -> list[Sink]:
    """The run's sinks: the polygons first (the likelier to fail, so finished first), then the mask (a GeoTIFF,
    or OME-Zarr images when OUTPUT ends in ``.zarr``: :mod:`tileseg.engine.zarr.sink`). With an instance model,
    the objects (label GeoTIFF ``instances``, table ``objects``, and the features at ``vectors``: one per object)
    come from one :class:`~tileseg.engine.instances.sink.InstanceSink` instead of the polygons of the classes."""
    target = plan.target
    zarr = is_zarr_path(output) or is_zarr_path(probabilities)
    label = zarr_target(output, probabilities, plan.full, options.cog, target) if zarr else None  # before any tile
    vector_sink: Sink | None
    if wants_objects(spec, instances, objects, vectors):
        vector_sink = InstanceSink(target, spec, instances, objects, vectors, plan.target_pixel_size, options.cog)
    else:
        vector_sink = VectorSink.of(vectors, spec, target, options, plan.target_pixel_size)
    mask_sink: Sink
    if zarr:
        mask_sink = ZarrMaskSink(target, spec, output, probabilities, plan.target_pixel_size, label)
    else:
        mask_sink = MaskSink(target, spec, output, probabilities, options.cog or isinstance(plan.full, SlideRaster))
    return [mask_sink] if vector_sink is None else [vector_sink, mask_sink]


def wants_objects(spec, instances, objects, vectors) -> bool:
    """Whether a run makes objects: an instance output asked for, or vectors of an instance model.

    Raises:
        OptionsError: an instance output asked of a model without an instance decoding (naming those with one).
    """
    if instances is not None or objects is not None:
        if spec.instances is None:
            check_instances(spec, models.instance_models())
        return True
    return vectors is not None and spec.instances is not None


def check_outputs(spec, vectors=None, instances=None, objects=None) -> None:
    """Refuse, before any work, outputs that cannot be written or that the model cannot make.

    Raises:
        OptionsError: an unwritable or unknown vector or table format; instance outputs of a model without them.
    """
    if vectors is not None:
        check_vector_path(vectors)
    if objects is not None:
        check_table_path(objects)
    wants_objects(spec, instances, objects, vectors)


def object_counts(sinks) -> dict[str, int] | None:
    """Objects per class of a run's instance sink, or None when it made no objects."""
    found = [s.counts for s in sinks if isinstance(s, InstanceSink)]
    return found[0] if found else None


def measures_objects(spec, instances=None, objects=None, vectors=None) -> bool:
    """Whether the objects are measured (their table, or one feature each): then their mean probability and
    band means are summed; the label GeoTIFF alone needs the classes only."""
    measured = objects is not None or (vectors is not None and spec.instances is not None)
    return measured and wants_objects(spec, instances, objects, vectors)


def keeps_probabilities(spec, probabilities, instances=None, objects=None, vectors=None) -> bool:
    """Whether the runner must hand on probabilities: asked for, or for the objects' mean probability."""
    return probabilities is not None or measures_objects(spec, instances, objects, vectors)


def object_bytes_per_pixel(spec, instances=None, objects=None, vectors=None) -> int:
    """What decoding the objects holds per pixel of a strip (0 when no objects are asked for): the memory
    budget counts it with the band of tile rows, so that the window is chosen for the whole run's memory."""
    if not wants_objects(spec, instances, objects, vectors):
        return 0
    measured = measures_objects(spec, instances, objects, vectors)
    return bytes_per_pixel(spec.input.bands if measured else 0, measured)


def provenance_tags(
    model: SegmentationNet, plan: ReadPlan, options: SegmentOptions, runtime: RuntimeReport
) -> dict[str, str]:
    """The provenance tags of a mask: model, options, runtime, the pixel size read and why, the region of
    interest; for an input without a CRS whose pixel size is known, TIFF resolution tags (pixels per
    centimetre) as slide viewers read them."""
    full, pixel = plan.full, plan.target_pixel_size
    tags = {
        "TILESEG_MODEL": model.spec.name,
        "TILESEG_CARD_SHA256": _card_hash(model),
        "TILESEG_VERSION": __version__,
        "TILESEG_OPTIONS": json.dumps(
            {**options.to_record(), "tile": runtime.tile, "blend": runtime.blend, "precision": runtime.precision}
        ),
        "TILESEG_RUNTIME": json.dumps({**runtime.tuning, "window": runtime.window, "device": runtime.device}),
        "TILESEG_SOURCE": full.info.name,
        "TILESEG_PIXEL_SIZE": json.dumps(plan.resolution.report().model_dump(exclude={"pixels_read"})),
    }
    if full.crs is None and pixel is not None:
        per_cm = f"{0.01 / pixel:.6f}"
        tags.update(TIFFTAG_XRESOLUTION=per_cm, TIFFTAG_YRESOLUTION=per_cm, TIFFTAG_RESOLUTIONUNIT="3")
    if plan.roi:
        roi = plan.roi
        tags["TILESEG_ROI"] = json.dumps({"source": roi.source, "area_share": round(float(roi.mask.mean()), 4)})
    return tags


def _card_hash(model: SegmentationNet) -> str:
    path = getattr(model, "checkpoint_path", None)
    return models.card_hash(path) if path else "unknown"


__all__ = [
    "check_outputs",
    "keeps_probabilities",
    "make_sinks",
    "measures_objects",
    "object_bytes_per_pixel",
    "object_counts",
    "provenance_tags",
    "wants_objects",
]
