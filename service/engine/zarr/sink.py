"""The mask (and its probabilities) as OME-Zarr images, when OUTPUT ends in ``.zarr``.

:class:`ZarrMaskSink` is the Zarr counterpart of :class:`tileseg.engine.sinks.MaskSink`, fed the same strips:
the class indices (the card's, nodata where the input had none) go into an OME-Zarr image with a pyramid made
by 2x2 mode, the probabilities (uint8, 0..255) into another with a 2x2-mean pyramid, both with the output's pixel
size in their ``coordinateTransformations`` (:mod:`tileseg.engine.zarr.image`).

Where the mask goes (:func:`zarr_target`):

* ``mask.zarr`` (any path ending in ``.zarr``): a standalone image, Zarr v2 / NGFF 0.4 (see
  :data:`STANDALONE_NGFF`), whose multiscales
  metadata says what it is (a class-index mask, which model, the run's provenance) and whose ``image-label``
  block gives each class's value, name and colour;
* ``image.ome.zarr/labels/NAME``, inside the OME-Zarr image the run reads: NGFF ``labels`` of that image (in its
  own Zarr and NGFF version, on its level-0 grid), listed in ``labels``' metadata when the run commits.

A ``.zarr`` path where no Zarr can be written is refused before any tile runs (:func:`check_zarr_paths`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tileseg.engine.errors import OptionsError
from tileseg.engine.io.ngff import labels_attributes, ngff_block
from tileseg.engine.io.zarr_raster import ZarrRaster
from tileseg.engine.sinks import ClassIndices, probability_bytes
from tileseg.engine.stitching import Strip
from tileseg.engine.zarr.image import ZarrImageWriter, is_zarr_folder, mean_2x2, mode_2x2
from tileseg.models.spec import ModelSpec

# Standalone images are Zarr v2 with NGFF 0.4: GDAL 3.10 (rasterio's wheels, QGIS) cannot read the Zarr v3 that
# zarr-python writes ("Unsupported codec: bytes", measured), and 0.4 is what most viewers read; ome-zarr-py reads
# both. Labels take the version of the image they belong to.
STANDALONE_NGFF = "0.4"


NO_IMAGE = object()  # an input that is no local OME-Zarr image, for check_zarr_paths


def is_zarr_path(path) -> bool:
    """Whether an output path names a Zarr: it, or a folder it lies in, ends in ``.zarr``."""
    return path is not None and any(part.lower().endswith(".zarr") for part in Path(path).parts)


@dataclass(frozen=True)
class LabelTarget:
    """The mask written as NGFF labels of the input image: ``image/labels/name``, in the image's NGFF version."""

    image: Path
    name: str
    version: str
    size: tuple[int, int]


def check_zarr_paths(output, probabilities, cog: bool, source=None) -> None:
    """Check a run's Zarr outputs from their paths alone, before any work.

    Args:
        output, probabilities: the run's mask and probabilities paths (local).
        cog: whether Cloud Optimized GeoTIFFs were asked for.
        source: the input's path or URL (:data:`NO_IMAGE` for one that is no local OME-Zarr image), if known: a
            mask inside a ``.zarr`` folder must be labels of it.

    Raises:
        OptionsError: OUTPUT and ``--probabilities`` not both Zarr (or both not); ``--cog``; a path that holds
            something else than a Zarr; a name without ``.zarr`` outside a Zarr; a path inside a Zarr that is not
            the input image's ``labels/NAME``.
    """
    if probabilities is not None and is_zarr_path(output) != is_zarr_path(probabilities):
        raise OptionsError(f"{output} and {probabilities}: write both as .zarr or neither")
    if cog:
        raise OptionsError(f"{output}: --cog makes Cloud Optimized GeoTIFFs; a .zarr output is chunked already")
    if probabilities is not None and not Path(probabilities).name.lower().endswith(".zarr"):
        raise OptionsError(f"{probabilities}: a standalone Zarr output's name ends in .zarr")
    for path in (Path(output), *([Path(probabilities)] if probabilities else [])):
        if path.exists() and not is_zarr_folder(path):
            raise OptionsError(f"{path} exists and is not a Zarr: remove it, or give another OUTPUT")
    inside = _enclosing_zarr(Path(output))
    if inside is None:
        if not Path(output).name.lower().endswith(".zarr"):
            raise OptionsError(f"{output}: a standalone Zarr output's name ends in .zarr")
        return
    if source is not None and (source is NO_IMAGE or Path(source).absolute() != inside):
        raise OptionsError(
            f"{output} lies inside the Zarr {inside.name}, which is not the OME-Zarr image this run reads: "
            "give a standalone .zarr, or IMAGE.ome.zarr/labels/NAME to add labels to the input image"
        )
    if Path(output).absolute().parent != inside / "labels":
        raise OptionsError(f"{output}: labels of {inside.name} go to {inside.name}/labels/NAME")


def zarr_target(output: Path, probabilities, full, cog: bool, grid) -> LabelTarget | None:
    """Check a run's Zarr outputs (:func:`check_zarr_paths`) against its input ``full`` and the output's
    ``grid``; the labels target where the mask goes into the input OME-Zarr image, else None.

    Raises:
        OptionsError: see :func:`check_zarr_paths`; a mask inside a Zarr that is not the input OME-Zarr image;
            labels whose grid is not the image's level 0.
    """
    inside = _enclosing_zarr(Path(output))
    local_image = isinstance(full, ZarrRaster) and isinstance(full.location, Path) and full.ngff is not None
    # labels go into the local OME-Zarr image the run reads; any other input has no image to put them in
    check_zarr_paths(output, probabilities, cog, full.location if local_image else NO_IMAGE)
    if inside is None:
        return None
    if (grid.height, grid.width) != full.levels[0]:
        raise OptionsError(
            f"labels of {inside.name} must be on its level-0 grid {full.levels[0]}, not "
            f"{(grid.height, grid.width)}: leave output_grid as input"
        )
    return LabelTarget(inside, Path(output).name, full.ngff, full.levels[0])


def _enclosing_zarr(output: Path) -> Path | None:
    """The ``.zarr`` folder ``output`` lies in, or None."""
    return next((p for p in output.absolute().parents if p.name.lower().endswith(".zarr")), None)


class ZarrMaskSink:
    """The mask of a run and, if asked, its probabilities, as OME-Zarr images.

    Args:
        grid: the output's grid (``height``, ``width``).
        spec: the model's spec (classes, colours).
        output: the mask's folder.
        probabilities: the probabilities' folder, or None.
        metres: the output's pixel size, or None when unknown.
        label: where the mask goes as labels of the input image (:func:`zarr_target`), or None.
    """

    def __init__(self, grid, spec: ModelSpec, output: Path, probabilities, metres, label: LabelTarget | None = None):
        self.spec, self.metres, self.label = spec, metres, label
        # no GeoZarr here: a georeferenced grid's CRS and transform are kept in the metadata, for people
        self.place = {"crs": grid.crs.to_string(), "transform": list(grid.transform)[:6]} if grid.crs else {}
        self.indices = ClassIndices.of(spec)
        shape = (grid.height, grid.width)
        output.parent.mkdir(parents=True, exist_ok=True)
        version = label.version if label else STANDALONE_NGFF
        dtype, nodata = self.indices.dtype, self.indices.nodata
        self.mask = ZarrImageWriter(output, (1, *shape), dtype, nodata, mode_2x2, version)
        self.probs = None
        if probabilities is not None:
            Path(probabilities).parent.mkdir(parents=True, exist_ok=True)
            self.probs = ZarrImageWriter(
                Path(probabilities), (spec.num_classes, *shape), np.uint8, 0, mean_2x2, STANDALONE_NGFF
            )

    def put(self, strip: Strip) -> None:
        self.mask.write_rows(self.indices(strip)[None])
        if self.probs is not None:
            self.probs.write_rows(probability_bytes(strip))

    def finish(self, tags: dict[str, str]) -> None:
        about = {"model": self.spec.name, **self.place, "tileseg": tags}
        mask_meta = {
            "name": f"{self.spec.name} mask",
            "kind": "class-index mask",
            "nodata": self.indices.nodata,
            "method": "tileseg: each level is the mode of 2x2 blocks of the one above",
            **about,
        }
        self.mask.close(self.metres, mask_meta, self._image_label())
        if self.probs is not None:
            names = [f"p({c.name})" for c in self.spec.classes]
            probs_meta = {
                "name": f"{self.spec.name} probabilities",
                "type": "mean",
                "kind": "class probabilities, uint8 0..255 (0 where nodata)",
                "channels": names,
                "method": "tileseg: each level is the mean of 2x2 blocks of the one above",
                **about,
            }
            self.probs.close(self.metres, probs_meta)

    def _image_label(self) -> dict[str, Any]:
        colors = [{"label-value": c.index, "rgba": [*_rgb(c.color), 255]} for c in self.spec.classes]
        properties = [{"label-value": c.index, "class": c.name} for c in self.spec.classes]
        block: dict[str, Any] = {"colors": colors, "properties": properties}
        if self.label is not None:
            block["source"] = {"image": "../../"}
        return block

    def commit(self) -> None:
        if self.probs is not None:
            self.probs.commit()
        self.mask.commit()
        if self.label is not None:
            add_label(self.label)

    def discard(self) -> None:
        for writer in (self.mask, self.probs):
            if writer is not None:
                writer.discard()


def add_label(label: LabelTarget) -> None:
    """List ``label.name`` in the image's ``labels`` group (made when missing)."""
    import zarr

    group = zarr.open_group(label.image / "labels", mode="a", zarr_format=2 if label.version == "0.4" else 3)
    names = list(ngff_block(group.attrs.asdict())[1].get("labels") or [])
    if label.name not in names:
        group.attrs.update(labels_attributes(label.version, [*names, label.name]))


def _rgb(color: str) -> list[int]:
    text = color.lstrip("#")
    return [int(text[i : i + 2], 16) for i in (0, 2, 4)]


__all__ = [
    "STANDALONE_NGFF",
    "LabelTarget",
    "ZarrMaskSink",
    "add_label",
    "check_zarr_paths",
    "is_zarr_path",
    "zarr_target",
]
