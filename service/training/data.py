"""Training data: adapters that turn a data set on disk into labelled images held in memory.

An adapter lists the image/mask pairs of a data set, splits them into training and validation, and says
what the classes are. Labels are stored by *channel*, not by the index written in the data set's masks:
channel ``c`` is the network's output channel ``c`` and the model card's ``classes[c]``, whose ``index``
is the value the engine writes for it. Pixels that count for nothing (Dubai's "unlabeled") get
:data:`IGNORE_INDEX`, which the loss and the metrics skip.

Each mask value is mapped to a channel through a 256-entry lookup table, so one adapter differs from the
next only in its file layout, its split and its table:

* ``isbi2012``: labels {0, 255}, class = value // 255 (0 membrane, 1 cell); images 0-24 train, 25-29
  validation.
* ``dubai``: index masks 0..5; 0 (unlabeled) is ignored, channel ``c`` is class index ``c + 1``; tiles 1-7
  train, tile 8 validation.
* ``folder``: ``images/`` and ``masks/`` with matching stems; the mask values present are the classes,
  255 is ignored; the last ``val_fraction`` of the sorted stems validate.

Only 8-bit images are taken: the engine scales uint8 by 255, and training must see what serving sees.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tileseg.models.spec import ClassInfo, InstanceSpec
from tileseg.training.errors import TrainingDataError

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MIN_STD = 1e-3  # a constant band would give std 0, which the spec refuses; such a band carries nothing anyway

ISBI_LICENSE = (
    "ISBI 2012 EM segmentation challenge data (Cardona et al. 2010, as carried by github.com/zhixuhao/unet): "
    "research use, citing Cardona et al. 2010 'An integrated micro- and macroarchitectural analysis of the "
    "Drosophila brain by computer-assisted serial section electron microscopy' and the ISBI 2012 challenge."
)
DUBAI_PIXEL_SIZE = (
    "not established: the images carry no georeferencing and the data set does not publish a ground sampling "
    "distance (MBRSC satellite imagery, cut into tiles of varying size)"
)
DUBAI_LICENSE = (
    "CC0 1.0: 'Semantic segmentation of aerial imagery' by Humans in the Loop / MBRSC "
    "(Mohammed Bin Rashid Space Center)."
)

# Colours of the data set's own colour masks, so that predictions look like its published labels.
DUBAI_CLASSES = (
    ClassInfo(1, "building", "#3c1098"),
    ClassInfo(2, "land", "#8429f6"),
    ClassInfo(3, "road", "#6ec1e4"),
    ClassInfo(4, "vegetation", "#fedd3a"),
    ClassInfo(5, "water", "#e2a929"),
)
ISBI_CLASSES = (ClassInfo(0, "membrane", "#000000", background=True), ClassInfo(1, "cell", "#ffffff"))
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass(frozen=True)
class Pair:
    """One image and its mask on disk."""

    name: str
    image: Path
    mask: Path


@dataclass
class Sample:
    """One labelled image in memory: ``image`` (bands, H, W) uint8, ``label`` (H, W) uint8 channels with
    :data:`IGNORE_INDEX` where nothing is known."""

    name: str
    image: np.ndarray
    label: np.ndarray


@dataclass(frozen=True)
class DataSource:
    """A data set's files, split, classes and terms, before any pixel is read."""

    kind: str
    train: tuple[Pair, ...]
    val: tuple[Pair, ...]
    classes: tuple[ClassInfo, ...]
    lut: np.ndarray  # uint8[256]: mask value -> channel, or IGNORE_INDEX
    license: str
    split: str
    val_split: str  # the validation part alone, for the metrics
    citation: str = ""
    pixel_size: str = ""  # the imagery's ground sampling distance, or what is known of it
    instance_channel: int | None = None  # the channel whose connected regions are separate objects (cells)
    read_label: Callable[[Path], np.ndarray] | None = None  # label file -> (H, W) uint8 channels; None: read_mask
    instances: InstanceSpec | None = None  # how the trained classes decode into objects, for the card
    read_objects: Callable[[Path], np.ndarray] | None = None  # label file -> (H, W) true objects (instance sets)
    kinds: dict[str, str] = field(default_factory=dict)  # image name -> its kind, for per-kind metrics

    def load(self) -> Dataset:
        """Read every pair into memory, checking bands and sizes."""
        train = [load_pair(p, self.lut, self.read_label) for p in self.train]
        val = [load_pair(p, self.lut, self.read_label) for p in self.val]
        bands = {s.image.shape[0] for s in train + val}
        if len(bands) != 1:
            raise TrainingDataError(f"the {self.kind} images mix band counts {sorted(bands)}; give one kind of image")
        return Dataset(source=self, train=train, val=val, bands=bands.pop())


@dataclass
class Dataset:
    """A data set in memory."""

    source: DataSource
    train: list[Sample]
    val: list[Sample]
    bands: int
    _stats: tuple[tuple[float, ...], tuple[float, ...]] | None = field(default=None, repr=False)

    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        return self.source.classes

    def band_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-band mean and std of the training images after scaling to [0, 1]."""
        if self._stats is None:
            self._stats = band_stats([s.image for s in self.train])
        return self._stats


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Map a uint8 array (bands, H, W) to float32 the way the engine does: ``(x / 255 - mean) / std``.

    The arithmetic is the engine's own (one multiply-add per pixel with the factors computed in float64),
    so a network sees bit for bit the values in training that it will see in service. A float32 array on
    the same 0..255 scale (an interpolated, elastically deformed crop) is taken too.
    """
    if image.dtype not in (np.uint8, np.float32):
        raise TrainingDataError(f"normalize takes uint8 images, got {image.dtype}")
    mean64 = np.asarray(mean, dtype=np.float64)
    std64 = np.asarray(std, dtype=np.float64)
    if mean64.shape != (image.shape[0],) or std64.shape != (image.shape[0],):
        raise TrainingDataError(f"need one mean and one std per band ({image.shape[0]})")
    a = (1.0 / (255.0 * std64)).astype(np.float32)
    b = (-mean64 / std64).astype(np.float32)
    out = image.astype(np.float32)
    out *= a[:, None, None]
    out += b[:, None, None]
    return out


def band_stats(images: Sequence[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and std over all pixels of ``images`` (each (bands, H, W) uint8), in [0, 1] units."""
    bands = images[0].shape[0]
    total = np.zeros(bands)
    total_sq = np.zeros(bands)
    count = 0
    for image in images:
        flat = image.reshape(bands, -1).astype(np.float64)
        total += flat.sum(axis=1)
        total_sq += (flat * flat).sum(axis=1)
        count += flat.shape[1]
    mean = total / count
    var = np.maximum(total_sq / count - mean * mean, 0.0)
    std = np.maximum(np.sqrt(var) / 255.0, MIN_STD)
    return tuple(float(m) for m in mean / 255.0), tuple(float(s) for s in std)


def read_image(path: Path) -> np.ndarray:
    """An 8-bit image file as (bands, H, W) uint8, without its alpha band (the engine drops alpha too)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import rasterio  # GeoTIFFs may carry more bands than PIL understands
            from rasterio.enums import ColorInterp

            with rasterio.open(path) as src:
                bands = [i + 1 for i, ci in enumerate(src.colorinterp) if ci != ColorInterp.alpha]
                data = src.read(bands)
        else:
            with Image.open(path) as img:
                if img.mode not in ("L", "RGB"):
                    converted = img.convert("L" if img.mode in ("1", "LA", "I;16") else "RGB")
                    data = np.asarray(converted)
                else:
                    data = np.asarray(img)
                data = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
    except (OSError, ValueError) as err:
        raise TrainingDataError(f"cannot read image {path}: {err}") from err
    if data.dtype != np.uint8:
        raise TrainingDataError(f"{path} is {data.dtype}; training takes 8-bit images only")
    return np.ascontiguousarray(data)


def read_mask(path: Path) -> np.ndarray:
    """A single-band 8-bit mask file as (H, W) uint8."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "1"):
                raise TrainingDataError(f"mask {path} has mode {img.mode}; masks are single-band 8-bit index images")
            data = np.asarray(img.convert("L") if img.mode == "1" else img)
    except OSError as err:
        raise TrainingDataError(f"cannot read mask {path}: {err}") from err
    return np.ascontiguousarray(data, dtype=np.uint8)


def load_pair(pair: Pair, lut: np.ndarray, read_label: Callable[[Path], np.ndarray] | None = None) -> Sample:
    """Read a pair and map its mask values to channels through ``lut`` (the mask read by ``read_label``, or
    as an 8-bit index image)."""
    image = read_image(pair.image)
    mask = read_mask(pair.mask) if read_label is None else read_label(pair.mask)
    if image.shape[1:] != mask.shape:
        raise TrainingDataError(
            f"{pair.image.name} is {image.shape[2]}x{image.shape[1]} but its mask {pair.mask.name} is "
            f"{mask.shape[1]}x{mask.shape[0]}"
        )
    return Sample(pair.name, image, lut[mask])


def pair_files(image_dir: Path, mask_dir: Path, image_suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Pair]:
    """Pair the images of ``image_dir`` with the masks of ``mask_dir`` by file stem; check their sizes.

    Raises:
        TrainingDataError: a folder is missing or empty, an image has no mask (or a mask no image), or an
            image and its mask differ in size.
    """
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise TrainingDataError(f"no folder {folder}")
    images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in image_suffixes}
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise TrainingDataError(f"no images ({', '.join(image_suffixes)}) in {image_dir}")
    lonely = sorted(set(images) ^ set(masks))
    if lonely:
        which = [
            f"{images[s].name} has no mask" if s in images else f"mask {masks[s].name} has no image" for s in lonely
        ]
        raise TrainingDataError(f"images and masks do not pair up in {image_dir.parent}: {'; '.join(which[:5])}")
    pairs = []
    for stem in sorted(images):
        pair = Pair(stem, images[stem], masks[stem])
        _check_sizes(pair)
        pairs.append(pair)
    return pairs


def _check_sizes(pair: Pair) -> None:
    # Only the headers are read here, so a mismatch is found before minutes are spent decoding pixels.
    image, mask = _size(pair.image), _size(pair.mask)
    if image != mask:
        raise TrainingDataError(
            f"{pair.image} is {image[0]}x{image[1]} but its mask {pair.mask} is {mask[0]}x{mask[1]}"
        )


def _size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import rasterio

            with rasterio.open(path) as src:
                return src.width, src.height
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError) as err:  # rasterio's errors are OSErrors too
        raise TrainingDataError(f"cannot open {path}: {err}") from err


def _number(stem: str) -> int:
    match = re.search(r"\d+", stem)
    if match is None:
        raise TrainingDataError(f"file name {stem!r} carries no number to sort by")
    return int(match.group())


def isbi2012(root: str | Path) -> DataSource:
    """ISBI 2012 (``root`` is the ``isbi2012`` folder): ``train/images`` and ``train/labels``, 30 images.

    Sorted by the number in the file name, images 0-24 train and 25-29 validate.
    """
    root = Path(root)
    pairs = sorted(pair_files(root / "train" / "images", root / "train" / "labels"), key=lambda p: _number(p.name))
    if len(pairs) < 2:
        raise TrainingDataError(f"{root} holds {len(pairs)} labelled image(s); ISBI 2012 has 30")
    n_train = 25 if len(pairs) == 30 else max(1, round(len(pairs) * 25 / 30))
    lut = (np.arange(256) // 255).astype(np.uint8)  # {0, 255} -> {0 membrane, 1 cell}
    return DataSource(
        kind="isbi2012",
        train=tuple(pairs[:n_train]),
        val=tuple(pairs[n_train:]),
        classes=ISBI_CLASSES,
        lut=lut,
        license=ISBI_LICENSE,
        split=f"images {pairs[0].name}-{pairs[n_train - 1].name} train, "
        f"{pairs[n_train].name}-{pairs[-1].name} validation",
        val_split=f"images {pairs[n_train].name}-{pairs[-1].name}",
        citation="Cardona et al. 2010; ISBI 2012 EM segmentation challenge",
        instance_channel=1,
    )


def dubai(root: str | Path) -> DataSource:
    """Dubai aerial imagery (``root`` is the ``dubai_aerial`` folder): ``tileN/images/*.jpg`` with
    ``tileN/masks/*.png``; tiles 1-7 train, tile 8 validates (with fewer tiles: the last one validates).

    Mask value 0 (unlabeled) is ignored; values 1-5 are channels 0-4.
    """
    root = Path(root)
    tiles = sorted((p for p in root.glob("tile*") if p.is_dir()), key=lambda p: _number(p.name))
    if len(tiles) < 2:
        raise TrainingDataError(f"{root} needs at least two tileN folders (found {len(tiles)})")
    per_tile = [
        [
            Pair(f"{t.name}/{p.name}", p.image, p.mask)
            for p in pair_files(t / "images", t / "masks", (".jpg", ".jpeg", ".png"))
        ]
        for t in tiles
    ]
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[1:6] = np.arange(5)
    val_tile = tiles[-1].name
    return DataSource(
        kind="dubai",
        train=tuple(p for pairs in per_tile[:-1] for p in pairs),
        val=tuple(per_tile[-1]),
        classes=DUBAI_CLASSES,
        lut=lut,
        license=DUBAI_LICENSE,
        split=f"{tiles[0].name}-{tiles[-2].name} train, {val_tile} validation",
        val_split=f"{val_tile} ({len(per_tile[-1])} images)",
        citation="Humans in the Loop / MBRSC, Semantic segmentation of aerial imagery",
        pixel_size=DUBAI_PIXEL_SIZE,
    )


def folder(
    root: str | Path, val_fraction: float = 0.2, class_names: Sequence[str] | None = None, license: str = ""
) -> DataSource:
    """A generic folder: ``images/`` and ``masks/`` with matching stems, masks holding class indices.

    The classes are the mask values found (255 is ignored), in increasing order; ``class_names`` names them.
    The last ``val_fraction`` of the pairs, sorted by stem, validate (at least one).
    """
    root = Path(root)
    if not 0 < val_fraction < 1:
        raise TrainingDataError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    pairs = pair_files(root / "images", root / "masks")
    if len(pairs) < 2:
        raise TrainingDataError(f"{root} holds {len(pairs)} pair(s); training and validation need at least 2")
    present = np.zeros(256, dtype=bool)
    for pair in pairs:  # masks are small next to images; reading them twice costs little
        present[np.unique(read_mask(pair.mask))] = True
    present[IGNORE_INDEX] = False
    values = np.flatnonzero(present)
    if len(values) < 2:
        raise TrainingDataError(f"the masks in {root / 'masks'} hold {len(values)} class value(s); need at least 2")
    if class_names is not None and len(class_names) != len(values):
        raise TrainingDataError(
            f"{len(class_names)} class names given, but the masks hold {len(values)} values {values.tolist()}"
        )
    names = list(class_names) if class_names else [f"class{v}" for v in values]
    classes = tuple(ClassInfo(int(v), names[i], PALETTE[i % len(PALETTE)]) for i, v in enumerate(values))
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[values] = np.arange(len(values))
    n_val = min(len(pairs) - 1, max(1, math.ceil(len(pairs) * val_fraction)))
    return DataSource(
        kind="folder",
        train=tuple(pairs[:-n_val]),
        val=tuple(pairs[-n_val:]),
        classes=classes,
        lut=lut,
        license=license or "unknown: see the data set's own terms",
        split=f"{len(pairs) - n_val} train, last {n_val} by name validation ({pairs[-n_val].name}..{pairs[-1].name})",
        val_split=f"last {n_val} by name ({pairs[-n_val].name}..{pairs[-1].name})",
        instance_channel=1 if len(values) == 2 else None,
    )
