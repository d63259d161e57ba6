"""OME-NGFF metadata: what an OME-Zarr image's ``multiscales`` says, and what a written one says.

An OME-Zarr image is a Zarr group whose attributes hold ``multiscales`` (NGFF 0.4, Zarr v2: at the top of the
attributes; NGFF 0.5, Zarr v3: under ``ome``): the ``axes`` (``t``, ``c``, ``z``, ``y``, ``x``, each with a
type and, for space, a unit) and one entry per pyramid level, its array's ``path`` and its
``coordinateTransformations`` (a ``scale`` per axis, in the axes' units). The pixel size of level 0 is its
``y``/``x`` scale times the unit's length; the levels are the arrays, full resolution first.

:func:`read_multiscales` reads that from a group's attributes; :func:`image_attributes` writes it (with the
``image-label`` block that tells a viewer the image is a label image: class values, colours, names), so that
the reader (:mod:`.zarr_raster`) and the writer (:mod:`tileseg.engine.zarr.sink`) speak of the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tileseg.engine.errors import UnsupportedFormatError
from tileseg.engine.io.pixelsize import UNKNOWN, MeasuredSize

# NGFF's units of length (UDUNITS-2 names) in metres; a unit not named here gives an unknown pixel size
LENGTHS = {
    "angstrom": 1e-10,
    "picometer": 1e-12,
    "nanometer": 1e-9,
    "micrometer": 1e-6,
    "millimeter": 1e-3,
    "centimeter": 1e-2,
    "decimeter": 1e-1,
    "meter": 1.0,
    "kilometer": 1e3,
    "inch": 0.0254,
    "foot": 0.3048,
}
SPATIAL = ("y", "x")


@dataclass(frozen=True)
class Multiscales:
    """An OME-Zarr image's first multiscales entry.

    Attributes:
        version: the NGFF version (``0.4``, ``0.5``).
        axes: the axes' names in array order (``("c", "y", "x")``, say).
        paths: each level's array path, full resolution first.
        pixel_size: level 0's pixel size and where it came from.
        name: the image's name, if it gives one.
    """

    version: str
    axes: tuple[str, ...]
    paths: tuple[str, ...]
    pixel_size: MeasuredSize
    name: str | None = None


def ngff_block(attributes: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The NGFF version and the attributes holding ``multiscales``/``labels`` (0.5's ``ome``, else the top)."""
    ome = attributes.get("ome")
    if isinstance(ome, dict):
        return str(ome.get("version", "0.5")), ome
    multiscales = attributes.get("multiscales") or [{}]
    return str(multiscales[0].get("version", "0.4")), attributes


def read_multiscales(attributes: dict[str, Any], where: str) -> Multiscales | None:
    """The first ``multiscales`` entry of a group's attributes, or None when the group is no OME-Zarr image.

    Raises:
        UnsupportedFormatError: a multiscales entry without datasets, or without ``y`` and ``x`` axes.
    """
    version, block = ngff_block(attributes)
    entries = block.get("multiscales")
    if not entries:
        return None
    entry = entries[0]
    datasets = entry.get("datasets") or []
    axes_meta = entry.get("axes") or [{"name": n} for n in ("t", "c", "z", "y", "x")[-_rank(datasets) :]]
    axes = tuple(str(a["name"] if isinstance(a, dict) else a) for a in axes_meta)
    if not datasets or not all(a in axes for a in SPATIAL):
        raise UnsupportedFormatError(f"{where}: an OME-Zarr multiscales entry needs datasets and y and x axes")
    paths = tuple(str(d["path"]) for d in datasets)
    return Multiscales(version, axes, paths, _pixel_size(entry, axes_meta, axes), entry.get("name"))


def _rank(datasets: list) -> int:
    """Axes of an NGFF 0.3 entry (no ``axes``): as many as a level's scale has, else 5."""
    for transform in (datasets[0].get("coordinateTransformations") or []) if datasets else []:
        if transform.get("type") == "scale":
            return len(transform["scale"])
    return 5


def _pixel_size(entry: dict[str, Any], axes_meta: list, axes: tuple[str, ...]) -> MeasuredSize:
    """Level 0's ``y``/``x`` scale (and the entry's own scale, if any) in metres."""
    scale = [1.0] * len(axes)
    for transforms in (entry["datasets"][0].get("coordinateTransformations"), entry.get("coordinateTransformations")):
        for transform in transforms or []:
            if transform.get("type") == "scale":
                scale = [a * float(b) for a, b in zip(scale, transform["scale"], strict=False)]
    sizes = []
    for name in SPATIAL:
        meta = axes_meta[axes.index(name)]
        unit = meta.get("unit") if isinstance(meta, dict) else None
        if unit is None:
            return UNKNOWN
        if unit not in LENGTHS:
            return MeasuredSize(None, "OME-Zarr", note=f"the NGFF axis {name}'s unit {unit!r} is not a length")
        sizes.append(scale[axes.index(name)] * LENGTHS[unit])
    if min(sizes) <= 0:
        return MeasuredSize(None, "OME-Zarr", note="the NGFF scale of y or x is not positive")
    return MeasuredSize(sum(sizes) / 2, "OME-Zarr multiscales scale")


def unit_of(metres: float | None) -> tuple[str | None, float]:
    """The NGFF unit to write a pixel size of ``metres`` in, and the size in it (micrometres for microscopy,
    metres above a millimetre; no unit and 1 when unknown)."""
    if metres is None:
        return None, 1.0
    return ("micrometer", metres / 1e-6) if metres < 1e-3 else ("meter", metres)


def image_attributes(
    version: str,
    axes: tuple[str, ...],
    shapes: list[tuple[int, ...]],
    metres: float | None,
    metadata: dict[str, Any],
    label: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The attributes of a written OME-Zarr image: its multiscales (levels ``0``, ``1``, ... whose ``y``/``x``
    scale grows with the level's downsampling) and, for a label image, its ``image-label`` block.

    Args:
        version: ``0.5`` (Zarr v3, under ``ome``) or ``0.4`` (Zarr v2).
        axes: the arrays' axes: ``("y", "x")`` or ``("c", "y", "x")``.
        shapes: each level's array shape, full resolution first.
        metres: level 0's pixel size, or None when unknown.
        metadata: the multiscales entry's ``metadata`` (how it was made, by what).
        label: the ``image-label`` block, or None.
    """
    unit, size = unit_of(metres)
    axes_meta = [
        {"name": a, "type": "channel"} if a == "c" else {"name": a, "type": "space", **({"unit": unit} if unit else {})}
        for a in axes
    ]
    full = shapes[0]
    datasets = []
    for k, shape in enumerate(shapes):
        scale = [1.0 if a == "c" else size * full[i] / shape[i] for i, a in enumerate(axes)]
        datasets.append({"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    entry: dict[str, Any] = {"name": metadata.get("name", "mask"), "axes": axes_meta, "datasets": datasets}
    entry.update(type=metadata.get("type", "mode"), metadata=metadata)
    block: dict[str, Any] = {"multiscales": [entry]}
    if label is not None:
        block["image-label"] = {**label, "version": version} if version == "0.4" else label
    if version == "0.4":
        entry["version"] = "0.4"
        return block
    return {"ome": {"version": version, **block}}


def labels_attributes(version: str, names: list[str]) -> dict[str, Any]:
    """The attributes of an image's ``labels`` group listing ``names``."""
    return {"labels": names} if version == "0.4" else {"ome": {"version": version, "labels": names}}


__all__ = [
    "LENGTHS",
    "Multiscales",
    "image_attributes",
    "labels_attributes",
    "ngff_block",
    "read_multiscales",
    "unit_of",
]
