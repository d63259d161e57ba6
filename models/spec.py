"""The model spec: everything the tiling engine needs to know about a network, stored in its model card.

Geometry, in the terms the engine uses (all lengths in pixels, the same along both axes):

* A network maps an input window of length ``I`` to an output of length ``O = I - 2 * shrink``; output
  pixel ``j`` lies over input pixel ``j + shrink``. Padded networks have ``shrink = 0``; the original
  valid-convolution U-Net has ``shrink = 92`` (572 -> 388).
* The network accepts a window when ``O % multiple == offset``: ``multiple`` is the total stride (or the
  ViT patch size) and ``offset`` is 0 for padded networks, 4 for a 4-pooling valid U-Net.
* ``halo`` is the context, in input pixels, that every output pixel needs on each side. When the halo
  covers the receptive field and tiles start on the stride grid, a translation-equivariant network gives
  the same result tile by tile as on the whole image.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

INTEGER_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32")
DEFAULT_DTYPES = INTEGER_DTYPES + ("float32", "float64")
DEFAULT_PIXEL_TOLERANCE = 0.1
UNITS = {"m": 1.0, "cm": 1e-2, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "nm": 1e-9}  # metres per unit


class BlendMode(str, enum.Enum):
    """How overlapping predictions are combined.

    ``crop`` keeps only the valid centre of each prediction (exact for convolutional networks);
    ``gaussian`` and ``cosine`` weight overlapping probabilities, for networks where exactness cannot hold.
    """

    CROP = "crop"
    GAUSSIAN = "gaussian"
    COSINE = "cosine"


@dataclass(frozen=True)
class ClassInfo:
    """One output class: the index written into the mask, a name and a display colour ``#rrggbb``.

    ``background`` marks a class that is not made of objects (EM membranes, unlabelled ground): vector output
    leaves it out unless asked for. Cards write the key only when it is true.
    """

    index: int
    name: str
    color: str
    background: bool = False

    @property
    def rgb(self) -> tuple[int, int, int]:
        value = self.color.lstrip("#")
        return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


@dataclass(frozen=True)
class InputSpec:
    """What the network takes: band count, accepted dtypes and normalisation.

    Scaling to [0, 1] happens before ``(x - mean) / std``: uint8 is divided by 255; every other dtype is
    stretched between the 2nd and 98th percentiles of the image, computed once per image.
    """

    bands: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtypes: tuple[str, ...] = DEFAULT_DTYPES
    pixel_size: float | None = None  # the pixel size the model was trained at, in metres; None: not known
    pixel_tolerance: float = DEFAULT_PIXEL_TOLERANCE  # relative difference still taken as the same pixel size

    def __post_init__(self) -> None:
        if len(self.mean) != self.bands or len(self.std) != self.bands:
            raise ValueError(f"mean and std need {self.bands} values each, one per band")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if self.pixel_size is not None and not self.pixel_size > 0:
            raise ValueError(f"pixel_size must be positive, not {self.pixel_size}")
        if not 0 <= self.pixel_tolerance < 1:
            raise ValueError(f"pixel_tolerance must be in [0, 1), not {self.pixel_tolerance}")


LENGTH_PATTERN = r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(nm|um|µm|mm|cm|m)?\s*"


def parse_length(text: str, default_unit: str | None = None) -> float:
    """A length with its unit (``"0.25um"``, ``"4 nm"``, ``"0.3m"``), in metres: the one parser of pixel sizes
    given as text (segment options, ``tileseg models add``).

    Args:
        text: a positive number followed by one of the units of :data:`UNITS`.
        default_unit: the unit of a bare number; None (the default) refuses a bare number.

    Raises:
        ValueError: no positive number, no unit (and no ``default_unit``), or an unknown unit.
    """
    match = re.fullmatch(LENGTH_PATTERN, str(text))
    unit = (match.group(2) or default_unit) if match else None
    if not match or not unit or float(match.group(1)) <= 0:
        raise ValueError(
            f"{text!r} is not a pixel size: give a positive number and its unit ({', '.join(UNITS)}), "
            "e.g. 0.25um or 0.3m"
        )
    return float(match.group(1)) * UNITS[unit]


def pixel_size_record(metres: float | None, tolerance: float) -> dict[str, Any] | None:
    """A card's pixel size: ``{"value", "unit", "tolerance"}``, in micrometres below a millimetre (microscopy),
    in metres above (geodata); None when not known."""
    if metres is None:
        return None
    unit = "um" if metres < 1e-3 else "m"
    return {"value": round(metres / UNITS[unit], 12), "unit": unit, "tolerance": tolerance}


def parse_pixel_size(value: Any) -> tuple[float | None, float]:
    """A card's pixel size in metres and its tolerance, from ``{"value", "unit", "tolerance"}``, or from the
    plain number in metres (or null) that older cards carry.

    Raises:
        ValueError: an unknown unit, or a value that is not a positive number.
    """
    if value is None:
        return None, DEFAULT_PIXEL_TOLERANCE
    if isinstance(value, (int, float)):
        return float(value), DEFAULT_PIXEL_TOLERANCE
    unit = str(value.get("unit", "m"))
    if unit not in UNITS:
        raise ValueError(f"pixel size unit {unit!r} is not one of {', '.join(UNITS)}")
    return float(value["value"]) * UNITS[unit], float(value.get("tolerance", DEFAULT_PIXEL_TOLERANCE))


@dataclass(frozen=True)
class Geometry:
    """Tiling geometry of a network (see the module docstring)."""

    halo: int
    multiple: int
    offset: int = 0
    shrink: int = 0
    default_tile: int = 256
    equivariant: bool = True
    blend: BlendMode = BlendMode.CROP
    # the one input length the network takes (an exported file with fixed sizes); None: any accepted length
    fixed_window: int | None = None

    def __post_init__(self) -> None:
        if self.multiple < 1 or not 0 <= self.offset < self.multiple:
            raise ValueError("need multiple >= 1 and 0 <= offset < multiple")
        if self.fixed_window is not None and self.fixed_window < 2 * self.halo + 1:
            raise ValueError("a fixed window must be longer than twice the halo")
        if self.halo < self.shrink:
            raise ValueError("the halo must be at least the shrink: each output pixel needs its input")
        object.__setattr__(self, "blend", BlendMode(self.blend))

    @property
    def output_smaller(self) -> bool:
        return self.shrink > 0

    def input_length(self, output_length: int) -> int:
        """The input length the network needs for this output length."""
        return output_length + 2 * self.shrink

    def window_output(self, min_output: int) -> int:
        """The smallest output length the network accepts that is at least ``min_output``."""
        return min_output + (self.offset - min_output) % self.multiple

    def window(self, core: int) -> int:
        """The input window around a ``core``: the core with the halo on each side, grown to a length the
        network accepts."""
        return self.input_length(self.window_output(core + 2 * (self.halo - self.shrink)))

    def evened(self, core: int, shape: tuple[int, int]) -> int:
        """``core`` evened out over an image of ``shape``: for each side, the smallest core on the stride grid
        that covers it in as many cores as ``core`` does; of the two, the one with the least work over the whole
        image (tile rows x tile columns x window², the larger on a tie). A 512-pixel image takes two 256-pixel
        cores a side rather than two of 384; a 2048-row strip takes two rows of 1024-pixel cores rather than two
        of 1088 (2176 rows predicted for 2048), even though its 100,000 columns then take 98 cores, not 92."""
        height, width = shape

        def tight(side: int) -> int:
            count = math.ceil(side / core)
            return min(core, math.ceil(math.ceil(side / count) / self.multiple) * self.multiple)

        def work(size: int) -> int:
            return math.ceil(height / size) * math.ceil(width / size) * self.window(size) ** 2

        return min(sorted({tight(height), tight(width)}, reverse=True), key=work)


def reflect_indices(start: int, length: int, size: int) -> np.ndarray:
    """Indices into an axis of ``size`` pixels for positions ``start .. start + length - 1``, mirrored at both
    ends without repeating the edge pixel (``-1 -> 1``, ``size -> size - 2``), as often as needed: a pad may
    be larger than the image. The mirror padding of tiling, of training crops and of validation alike."""
    positions = np.arange(start, start + length)
    if size == 1:
        return np.zeros(length, dtype=np.intp)
    period = 2 * (size - 1)
    folded = np.mod(positions, period)
    return np.where(folded < size, folded, period - folded).astype(np.intp)


@dataclass(frozen=True)
class InstanceSpec:
    """How a network's classes decode into separate objects (nuclei, cells, buildings): the card's ``instances``.

    An object is a connected region (8-connected) of ``seed`` pixels, first eroded by ``erode`` pixels (a pixel
    stays a seed when every pixel within that many 4-neighbour steps is one; outside the image counts as seed),
    so that cores joined by a thin bridge come apart; it grows into every pixel of the ``grow`` classes whose
    nearest seed pixel lies within ``distance`` pixels (Euclidean; ties go to the first in row order; with an
    erosion, ``distance`` must reach past it); objects smaller than ``min_area`` pixels are dropped. Every step
    looks at most ``erode`` or ``distance`` pixels away, so a tiled or striped run decodes exactly what the
    whole image decodes.
    """

    seed: int  # the class index of object cores
    grow: tuple[int, ...]  # the class indices an object may grow into (its cores and contours)
    distance: int = 2
    min_area: int = 1
    decoding: str = "seeds"
    erode: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "grow", tuple(int(g) for g in self.grow))
        if self.decoding != "seeds":
            raise ValueError(f"instance decoding {self.decoding!r} is not known; the engine decodes 'seeds'")
        if self.distance < 0 or self.min_area < 1 or self.erode < 0:
            raise ValueError("need an instance distance >= 0, a min_area >= 1 and an erode >= 0")
        if self.seed not in self.grow:
            raise ValueError("the seed class must be one of the classes objects grow into")


@dataclass(frozen=True)
class ModelSpec:
    """The part of a model card that the engine reads (``tileseg.models.load(...).spec``)."""

    name: str
    arch: str
    input: InputSpec
    classes: tuple[ClassInfo, ...]
    geometry: Geometry
    precision: str = "fp32"  # the reduced precision the card allows on CPU ("bf16") or "fp32"
    int8: bool = False  # whether the card allows its int8 program (calibrated ranges in the card's ``int8``)
    options: dict[str, Any] = field(default_factory=dict)  # serving options the architecture takes (prune)
    instances: InstanceSpec | None = None  # how the classes decode into objects; None: no instance output

    def __post_init__(self) -> None:
        if self.instances is not None:
            known = {c.index for c in self.classes}
            unknown = sorted(set(self.instances.grow) - known)
            if unknown:
                raise ValueError(f"instances name class indices {unknown} that the model does not have")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for entry in data["classes"]:
            if not entry["background"]:
                del entry["background"]
        data["geometry"]["blend"] = self.geometry.blend.value
        data["geometry"]["output_smaller"] = self.geometry.output_smaller
        data["input"]["pixel_size"] = pixel_size_record(self.input.pixel_size, self.input.pixel_tolerance)
        del data["input"]["pixel_tolerance"]
        if not self.int8:  # cards written before int8 existed stay as they were
            del data["int8"]
        if self.instances is None:
            del data["instances"]
        else:
            data["instances"]["grow"] = list(self.instances.grow)
            if not self.instances.erode:  # cards written before the erosion existed stay as they were
                del data["instances"]["erode"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        geometry = {k: v for k, v in data["geometry"].items() if k != "output_smaller"}
        inp = data["input"]
        pixel_size, tolerance = parse_pixel_size(inp.get("pixel_size"))
        return cls(
            name=data["name"],
            arch=data["arch"],
            input=InputSpec(
                bands=int(inp["bands"]),
                mean=tuple(float(v) for v in inp["mean"]),
                std=tuple(float(v) for v in inp["std"]),
                dtypes=tuple(inp.get("dtypes", DEFAULT_DTYPES)),
                pixel_size=pixel_size,
                pixel_tolerance=tolerance,
            ),
            classes=tuple(
                ClassInfo(int(c["index"]), str(c["name"]), str(c["color"]), bool(c.get("background", False)))
                for c in data["classes"]
            ),
            geometry=Geometry(**geometry),
            precision=data.get("precision", "fp32"),
            int8=bool(data.get("int8", False)),
            options=dict(data.get("options", {})),
            instances=InstanceSpec(**data["instances"]) if data.get("instances") else None,
        )
