"""A run's options, declared once: the engine takes them, and the ``tileseg segment`` command, the HTTP form
of ``POST /segment`` (with its OpenAPI schema) and the job record derive from them.

Each field says where it applies through ``json_schema_extra={"scope": ...}``: ``both`` (the default), or
``cli`` for what a server decides itself (its batch size, its reader threads). A new option is one field
here: the command line gets a ``--flag`` (:func:`tileseg.cli.options.click_options`), the form a field and
its schema a property (:func:`tileseg.api.schemas.form_properties`), the job record a key
(:class:`tileseg.jobs.intake.JobOptions` adds what only jobs have: ``probabilities``).
"""

from __future__ import annotations

import enum
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tileseg.models.spec import BlendMode, parse_length

BAND_NUMBERS = r"[0-9]{1,4}(,[0-9]{1,4})*"
BAND_NAMES = r"[A-Za-z][A-Za-z0-9_-]{0,31}(,[A-Za-z][A-Za-z0-9_-]{0,31})*"  # a STAC item's common names
BANDS_PATTERN = rf"^({BAND_NUMBERS}|{BAND_NAMES})$"
ASSET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
MAX_TILE = 8192  # the largest core: a window of 8192^2 already takes gigabytes of activations
DEFAULT_BATCH = 4  # tiles per forward pass where nothing was measured


class Precision(str, enum.Enum):
    """The network's arithmetic: ``auto`` measures what the card allows on the device and takes the fastest;
    ``int8`` (a statically quantized program, CPU) is taken only where the card allows it."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"


class Compile(str, enum.Enum):
    """``torch.compile``: ``auto`` compiles when measured to save more time than compiling costs."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class RuntimeChoice(str, enum.Enum):
    """Who runs the network: ``auto`` measures PyTorch and the exported runtimes installed, and takes the fastest."""

    AUTO = "auto"
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Connectivity(str, enum.Enum):
    """Which neighbours join pixels into one region (one polygon): ``4`` shares an edge, ``8`` also a corner."""

    FOUR = "4"
    EIGHT = "8"


class ObjectType(str, enum.Enum):
    """What QuPath makes of each polygon of a pixel-space GeoJSON: editable annotations, or light detections."""

    ANNOTATION = "annotation"
    DETECTION = "detection"


class PixelSizePolicy(str, enum.Enum):
    """``resample`` to the model's pixel size when known; ``native`` never; ``strict`` refuses unknown sizes."""

    RESAMPLE = "resample"
    NATIVE = "native"
    STRICT = "strict"


class OutputGrid(str, enum.Enum):
    """Where the mask is written: on the ``input``'s grid (level 0) or on the ``model``'s (the virtual grid)."""

    INPUT = "input"
    MODEL = "model"


def _cli_only(description: str) -> dict[str, Any]:
    return {"description": description, "json_schema_extra": {"scope": "cli"}}


class SegmentOptions(BaseModel):
    """What a run may change; None means the model's default. The command line takes the same names."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    tile: int | None = Field(
        None,
        ge=1,
        le=MAX_TILE,
        description="Output core size in pixels, a multiple of the network's stride; auto (the default): measured "
        "fastest for exact models, the model's own for blended ones.",
        json_schema_extra={"auto": True},
    )
    blend: BlendMode | None = Field(None, description="crop (exact), gaussian or cosine (default: the model's).")
    overlap: float = Field(0.0, ge=0, lt=1, description="Blended modes: extra overlap, a fraction of the window.")
    bands: tuple[int, ...] | tuple[str, ...] | None = Field(
        None,
        description="1-based bands to use, e.g. 1,2,3; of a STAC item, the assets to stack by their common name, "
        "e.g. red,green,blue.",
    )
    asset: str | None = Field(
        None,
        pattern=ASSET_PATTERN,
        description="Of a STAC item: the asset to segment (default: visual, when the item has one).",
    )
    tta: bool = Field(False, description="Average probabilities over flips.")
    cog: bool = Field(False, description="Write a Cloud Optimized GeoTIFF with overviews.")
    precision: Precision = Field(
        Precision.AUTO, description="auto: the fastest the model card allows, measured on this device."
    )
    runtime: RuntimeChoice = Field(
        RuntimeChoice.AUTO,
        description="auto: PyTorch or an exported runtime (ONNX Runtime, OpenVINO), measured fastest on this device.",
    )
    compile: Compile = Field(
        Compile.AUTO, **_cli_only("torch.compile; auto: when measured to save more time than it costs.")
    )
    prune: int | None = Field(
        None, ge=1, le=16, description="U-Net++: run only the L-level sub-network (applied when the model is loaded)."
    )
    min_area: float = Field(
        0.0, ge=0, description="Vectors: leave out regions smaller than this, in the input's area unit (m², µm², px²)."
    )
    simplify: float = Field(
        0.0,
        ge=0,
        description="Vectors: simplify outlines, keeping each polygon valid, by this tolerance in pixels (0: exact).",
    )
    vector_classes: tuple[int, ...] | None = Field(
        None, description="Vectors: the class indices to make polygons of, e.g. 1,3 (default: all but background)."
    )
    connectivity: Connectivity = Field(
        Connectivity.FOUR, description="Vectors: pixels joined by an edge (4) or also by a corner (8) are one region."
    )
    object_type: ObjectType = Field(
        ObjectType.ANNOTATION, description="Vectors of pixel-space inputs: QuPath's objectType in the GeoJSON."
    )
    pixel_size: str | None = Field(
        None,
        max_length=32,
        description="The input's pixel size with its unit (e.g. 0.25um, 0.3m), when its metadata lacks it or is wrong.",
    )
    pixel_size_policy: PixelSizePolicy = Field(
        PixelSizePolicy.RESAMPLE,
        description="resample to the model's pixel size; native: read as it is; strict: refuse unknown pixel sizes.",
    )
    output_grid: OutputGrid = Field(
        OutputGrid.INPUT, description="Write the mask on the input's grid, or on the model's (resampled) grid."
    )
    roi: str | None = Field(
        None,
        max_length=4096,
        description="Only segment a region: auto (tissue found on a low-resolution level), or a GeoJSON/GeoPackage "
        "file of polygons in the input's coordinates (a server takes auto only).",
    )
    batch: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Tiles per forward pass; auto (the default): measured.",
        json_schema_extra={"scope": "cli", "auto": True},
    )
    memory: str | None = Field(
        None,
        max_length=32,
        **_cli_only(
            "Memory the network's forward pass may take, e.g. 800MB or 2GiB (default: TILESEG_MEMORY_BUDGET, else a "
            "fair share of what is free)."
        ),
    )
    readers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Reader threads preparing batches ahead of the network; 0 reads in the network's own thread. "
        "auto (the default): 0 for a local file on a CPU, where the network takes every core and a reader beside "
        "it only slows it; 2 otherwise (remote reads wait on the network, a GPU leaves the CPU free).",
        json_schema_extra={"scope": "cli", "auto": True},
    )

    @field_validator("tile", "batch", "readers", mode="before")
    @classmethod
    def _auto(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in ("auto", "") else value

    @field_validator("memory")
    @classmethod
    def _parse_memory(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from tileseg.engine.runtime.device import parse_bytes

        try:
            parse_bytes(value)
        except Exception as err:
            raise ValueError(str(err)) from None
        return value.strip()

    @field_validator("bands", mode="before")
    @classmethod
    def _parse_bands(cls, value: Any) -> Any:
        hint = (
            "give 1-based band numbers separated by commas, e.g. 1,2,3, or a STAC item's common names, "
            "e.g. red,green,blue"
        )
        if isinstance(value, str) and re.fullmatch(BAND_NAMES, value):
            return tuple(part.lower() for part in value.split(","))
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and not v.isdigit() for v in value):
            if not re.fullmatch(BAND_NAMES, ",".join(value)):
                raise ValueError(hint)
            return tuple(v.lower() for v in value)
        value = _int_list(value, hint)
        if value is not None and any(int(b) < 1 for b in value):
            raise ValueError("band numbers start at 1")
        return value

    @field_validator("vector_classes", mode="before")
    @classmethod
    def _parse_classes(cls, value: Any) -> Any:
        return _int_list(value, "give class indices separated by commas, e.g. 1,3")

    @field_validator("pixel_size")
    @classmethod
    def _parse_pixel_size(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_length(value)
        return value.strip()

    @property
    def pixel_size_m(self) -> float | None:
        """The stated pixel size in metres, or None."""
        return parse_length(self.pixel_size) if self.pixel_size else None

    @field_validator("bands")
    @classmethod
    def _some_bands(cls, value: tuple[int, ...] | tuple[str, ...] | None) -> tuple[int, ...] | tuple[str, ...] | None:
        return value or None

    @property
    def band_numbers(self) -> tuple[int, ...] | None:
        """``bands`` when they are 1-based numbers (of one raster), else None."""
        return self.bands if self.bands and isinstance(self.bands[0], int) else None

    @property
    def band_names(self) -> tuple[str, ...] | None:
        """``bands`` when they are common names (of a STAC item's assets), else None."""
        return self.bands if self.bands and isinstance(self.bands[0], str) else None

    def to_record(self) -> dict[str, Any]:
        """The options as JSON (enums as their values, bands as a list): tags, job records, the API."""
        data = self.model_dump(mode="json")
        data["bands"] = list(self.bands) if self.bands else None
        data["vector_classes"] = list(self.vector_classes) if self.vector_classes is not None else None
        return data


def _int_list(value: Any, hint: str) -> Any:
    """``"1,2,3"`` -> ``(1, 2, 3)``; an empty text is None; anything else as it is (pydantic checks it)."""
    if isinstance(value, str):
        if not value:
            return None
        if not re.fullmatch(BANDS_PATTERN, value):
            raise ValueError(hint)
        return tuple(int(part) for part in value.split(","))
    return value


def base_type(annotation: Any) -> Any:
    """The type a field holds, without its ``None``: ``int | None`` -> int, ``tuple[int, ...] | None`` -> tuple,
    enums and plain types as they are (what the command line and the form schema are made from)."""
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    if args and getattr(annotation, "__origin__", None) is not tuple:
        annotation = args[0]
    return getattr(annotation, "__origin__", annotation)


def scope(model: type[BaseModel], name: str) -> str:
    """Where a field applies: ``both`` or ``cli``."""
    extra = model.model_fields[name].json_schema_extra
    return str(extra.get("scope", "both")) if isinstance(extra, dict) else "both"


__all__ = [
    "ASSET_PATTERN",
    "BANDS_PATTERN",
    "DEFAULT_BATCH",
    "MAX_TILE",
    "Compile",
    "Connectivity",
    "ObjectType",
    "OutputGrid",
    "PixelSizePolicy",
    "Precision",
    "RuntimeChoice",
    "SegmentOptions",
    "base_type",
    "scope",
]
