"""What a run reports, declared once: the engine fills these records, jobs store them (``model_dump``) and
the API's schemas are these very classes (see :mod:`tileseg.api.schemas`). :class:`SegmentResult` is what
:func:`tileseg.engine.segment` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from tileseg.engine.io.read import RasterInfo
    from tileseg.engine.runtime.choice import Choice
    from tileseg.engine.runtime.runtimes import Runtime
    from tileseg.engine.tiling import TileSettings


class PixelsRead(BaseModel):
    level_0: int = Field(description="Pixels decoded from the input's full-resolution level.")
    grid: int = Field(description="Pixels decoded from the level the model's grid was made of.")


class PixelSizeReport(BaseModel):
    """Which pixel size a run read at, from which pyramid level, and why (metres throughout)."""

    input_pixel_size_m: float | None = Field(description="The input's pixel size; null when unknown.")
    input_pixel_size_source: str = Field(
        description="Where it came from: the CRS's transform, TIFF resolution tags, OME-XML, the slide's "
        "properties (openslide.mpp-x), `stated (pixel_size option)`, or `none`."
    )
    input_pixel_size_note: str | None = Field(
        None, description="Why a pixel size in the file was not used (e.g. a 72-dpi writer's default)."
    )
    model_pixel_size_m: float | None = Field(description="The pixel size the model was trained at; null: unknown.")
    read_pixel_size_m: float | None = Field(description="The pixel size of the grid the model saw.")
    level: int = Field(description="The pyramid level read (0: full resolution; k: overview or slide level k).")
    grid: list[int] = Field(description="[height, width] of the grid the model saw.")
    resampled: bool = Field(description="Whether the level was resampled on the fly to the model's pixel size.")
    policy: str = Field(description="The pixel_size_policy applied: resample, native or strict.")
    why: str = Field(description="The reason for this choice, in one sentence.")
    pixels_read: PixelsRead | None = Field(None, description="Pixels decoded; null before the run.")


class RoiReport(BaseModel):
    """The region of interest's share of the image and of the tiles, and the time it saved."""

    source: str = Field(description="`auto` (tissue found on a low-resolution level) or the polygon file's name.")
    area_share: float = Field(description="Share of the image's area inside the region, 0..1.")
    tiles_skipped: int = Field(description="Tiles wholly outside the region, never read or run.")
    skipped_share: float = Field(description="Share of the tiles skipped, 0..1.")
    seconds_saved_estimate: float = Field(description="Time saved, estimated from the time per tile that ran.")


class RuntimeReport(BaseModel):
    """How the network ran: the tile settings, the runtime the tuner chose and why, the device."""

    tile: int = Field(description="The core: output pixels a side of each tile.")
    window: int = Field(description="The input window a side of each tile (the core and its halo).")
    step: int = Field(description="The distance between tiles.")
    blend: str = Field(description="crop, gaussian or cosine.")
    batch: int
    precision: str
    runtime: str = Field(description="The runtime's label (precision/format/mode).")
    runtime_reason: str = Field(description="Why the tuner chose it.")
    device: str
    tuning: dict[str, Any] = Field(description="The tuner's choice: measured Mpx/s, peak MB, ...")


class RunResult(BaseModel):
    """A succeeded job's summary of its run."""

    pixel_size: PixelSizeReport
    roi: RoiReport | None = Field(description="Null unless the job asked for a region of interest (roi=auto).")
    tiles_total: int
    tiles_skipped: int = Field(description="Tiles not run: outside the region of interest or wholly nodata.")
    seconds: float = Field(description="The engine's run time.")
    warnings: list[str] = Field(description="What the user should know, e.g. a model run at the wrong scale.")
    runtime: dict[str, Any] | None = Field(
        None,
        description="How the network ran: runtime (precision/format/mode), tile and window run, batch, the "
        "tuner's measured Mpx/s and peak MB, and why it was chosen.",
    )


@dataclass
class SegmentResult:
    """What a finished run produced and how it went.

    Attributes:
        pixel_size: the pixel sizes, the level read and why, the pixels decoded.
        runtime: the tile settings and the runtime the network ran in.
        roi: the region of interest's share of the tiles and the time it saved, or None.
    """

    output: Path
    probabilities: Path | None
    input: RasterInfo
    tiles_total: int
    tiles_skipped: int
    seconds: float
    runtime: RuntimeReport
    pixel_size: PixelSizeReport
    warnings: list[str] = field(default_factory=list)
    roi: RoiReport | None = None
    vectors: Path | None = None
    instances: Path | None = None
    objects_table: Path | None = None
    objects: dict[str, int] | None = None  # objects found per class, on an instance run


def runtime_report(settings: TileSettings, runtime: Runtime, choice: Choice, device) -> RuntimeReport:
    """How a run ran (or, before it, is to run) in ``runtime``."""
    return RuntimeReport(
        tile=settings.core,
        window=settings.window,
        step=settings.step,
        blend=settings.blend.value,
        batch=settings.batch,
        precision=runtime.precision,
        runtime=runtime.label,
        runtime_reason=choice.reason,
        device=str(device),
        tuning=choice.summary(),
    )


__all__ = [
    "PixelSizeReport",
    "PixelsRead",
    "RoiReport",
    "RunResult",
    "RuntimeReport",
    "SegmentResult",
    "runtime_report",
]
