"""Checks made before a job exists: its options, where its input lies, and whether the model can take it.

Everything here reads headers only (size, format, bands, dtype, the TIFF's block index, pyramid levels, pixel
size; of a slide, OpenSlide's properties and one tile), so that a bad request is answered at once and a
decompression bomb is refused before anything is decoded.
The same checks run again, fully, when the engine opens the input; these only answer earlier.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, create_model, field_validator

from tileseg.engine import tile_settings
from tileseg.engine.errors import OptionsError, TooLargeError
from tileseg.engine.io import ALLOWED_DRIVERS, RasterInfo
from tileseg.engine.io.fetch import without_ranges
from tileseg.engine.io.inputs import inspect_input
from tileseg.engine.io.remote import RemoteUrl, http_get, parse_remote
from tileseg.engine.io.stac import PIN, is_item_name, read_item
from tileseg.engine.options import SegmentOptions, scope
from tileseg.engine.resolution import plan_resolution
from tileseg.jobs.allowlist import RAW_GDAL, allowed_url
from tileseg.jobs.errors import ShardsNeedQueueError, SourceNotAllowedError
from tileseg.models.spec import BlendMode, ModelSpec

# Formats without internal tiles: reaching any window decodes every row above it, so their size is
# bounded more tightly than that of tiled GeoTIFFs (a small PNG can claim 10^10 pixels).
UNTILED_DRIVERS = frozenset({"PNG", "JPEG", "BMP", "WEBP"})
MAX_SHARDS = 4096  # a job's shards: rows in the job table and messages in the broker


class JobOptions(SegmentOptions):
    """A job's options: the engine's (:class:`tileseg.engine.options.SegmentOptions`), of which the form takes
    those not scoped to the command line, and what only jobs have."""

    probabilities: bool = Field(False, description="Also write per-class probabilities.")
    vectors: bool = Field(False, description="Also write every region of every object class as a polygon.")
    instances: bool = Field(
        False,
        description="Also write the objects (a model with an instance decoding, e.g. unet-nuclei): a uint32 label "
        "GeoTIFF on the mask's grid and a table of the objects; with vectors, one feature per object.",
    )
    shards: int | None = Field(
        None,
        ge=1,
        le=MAX_SHARDS,
        description="Queue mode: run the image in this many bands of tile rows, each on any worker, the mask exact "
        "at the seams (1: one worker); auto (the default): one shard per TILESEG_SHARD_PIXELS past that size.",
        json_schema_extra={"auto": True},
    )

    @field_validator("shards", mode="before")
    @classmethod
    def _auto_shards(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in ("auto", "") else value

    @field_validator("roi")
    @classmethod
    def _roi_auto_only(cls, value: str | None) -> str | None:
        # a path in a request would let a client make the server read any of its files
        if value is not None and value.strip().lower() != "auto":
            raise ValueError("a job takes roi=auto only (polygon files are for the command line)")
        return value

    def segment_options(self, batch: int | None = None, memory: str | None = None) -> SegmentOptions:
        """The engine's options for this job, with the server's batch size and memory budget (None: the
        tuner's batch; the budget of TILESEG_MEMORY_BUDGET or a fair share)."""
        own = self.model_dump(exclude={"probabilities", "vectors", "instances", "shards"})
        return SegmentOptions(**{**own, "batch": batch, "memory": memory})

    def to_record(self) -> dict[str, Any]:
        """The options as the job table and the API show them: the form's fields."""
        data = super().to_record()
        return {name: data[name] for name in form_fields()}


def check_shards(options: JobOptions, spec: ModelSpec, queue_mode: bool) -> None:
    """Refuse ``shards`` > 1 where it cannot run, before the job exists.

    Raises:
        ShardsNeedQueueError: the server runs its jobs itself (``TILESEG_MODE=embedded``).
        OptionsError: a blended mode, whose windows are weighted across tile rows: not exact in shards.
    """
    if options.shards is None or options.shards == 1:
        return
    if not queue_mode:
        raise ShardsNeedQueueError(
            f"shards={options.shards}: this server runs its jobs itself (TILESEG_MODE=embedded), one job on one "
            "worker; shards run on queue workers (TILESEG_MODE=queue). Leave shards out, or give shards=1"
        )
    blend = options.blend or spec.geometry.blend
    if blend is not BlendMode.CROP:
        raise OptionsError(
            f"shards={options.shards}: {blend.value} blending weights windows across tile rows, so shards would not "
            "be exact; give blend=crop (for a translation-equivariant model) or shards=1"
        )


def form_fields() -> list[str]:
    """The option fields of ``POST /segment`` (those not scoped to the command line), in declaration order."""
    return [name for name in JobOptions.model_fields if scope(JobOptions, name) != "cli"]


# The job record's options, as the API shows them: the form's fields of JobOptions, typed and described as there.
JobOptionsRecord = create_model(  # type: ignore[call-overload]  # fields built from another model's
    "JobOptionsRecord",
    __config__=ConfigDict(frozen=True),
    **{name: (JobOptions.model_fields[name].annotation, JobOptions.model_fields[name]) for name in form_fields()},
)


@dataclass(frozen=True)
class InputLimits:
    """What inputs the service takes."""

    max_pixels: int | None = None
    max_untiled_pixels: int | None = None
    allowed_drivers: frozenset[str] = ALLOWED_DRIVERS


def resolve_source(text: str, roots: list[str], allow: list[str] | None = None) -> Path | RemoteUrl:
    """The file, remote raster or STAC item a ``source`` names, if the server allows it.

    A path must resolve (symlinks followed) to a file under one of ``roots``; a URL (``s3://``, ``https://``,
    ``http://``) must lie under one of the ``allow`` prefixes (TILESEG_SOURCE_ALLOW), see :func:`allowed_url`,
    and an http(s) URL must not redirect off them (:func:`check_redirects`). A STAC item (a ``.json`` path or
    URL) is read only once its own name passed, and then every asset it lists must pass the same checks
    (:func:`check_item`); the URL returned pins the item's content (``#sha256=``), so that the worker reads
    the item that was checked.

    Raises:
        SourceNotAllowedError: anything else. The message never says whether a path outside the roots exists.
    """
    allow = allow or []
    if "://" in text or text.startswith(("/vsi", "\\\\")) or "\x00" in text or text.upper().startswith(RAW_GDAL):
        remote = allowed_url(text, allow)
        if is_item_name(remote):
            return check_item(remote, roots, allow)
        check_redirects(remote, allow)
        return remote
    if not roots:
        raise SourceNotAllowedError(
            "this server takes no `source` paths (TILESEG_INPUT_ROOTS is not set): upload the file instead"
        )
    candidates = [Path(text)] if os.path.isabs(text) else [Path(root) / text for root in roots]
    for candidate in candidates:
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            continue
        inside = any(resolved.is_relative_to(root) for root in roots)
        if inside and resolved.is_file():
            if is_item_name(resolved):
                check_item(resolved, roots, allow)
            return resolved
    raise SourceNotAllowedError(
        f"`source` {text!r} is not a file under the server's input folders ({', '.join(roots)})"
    )


def check_item(where: Path | RemoteUrl, roots: list[str], allow: list[str]) -> Path | RemoteUrl:
    """Read the STAC item at ``where`` (its name already allowed; a redirect followed only onto an allowed
    URL) and check every asset it lists as a ``source`` of its own, before any asset is requested.

    Returns:
        ``where``, a remote item's URL pinned to the content read (``url#sha256=<hex>``).

    Raises:
        SourceNotAllowedError: an asset (or a redirect of the item) that the server does not read from.
        UnreadableInputError: the item cannot be read, or is no STAC item.
    """
    shown = where.masked if isinstance(where, RemoteUrl) else where.name
    item = read_item(where.url if isinstance(where, RemoteUrl) else where, hop=_hop_check(shown, allow))
    for asset in item.assets.values():
        href = asset.href
        try:
            if "://" in href or href.startswith(("/vsi", "\\\\")) or href.upper().startswith(RAW_GDAL):
                remote = allowed_url(href, allow)
            else:
                resolve_source(href, roots, allow)
                continue
        except SourceNotAllowedError as err:
            raise SourceNotAllowedError(f"STAC item {shown}: asset {asset.key}: {err}") from None
        if is_item_name(remote):
            raise SourceNotAllowedError(f"STAC item {shown}: asset {asset.key} is another item; it is refused")
        check_redirects(remote, allow)
    return RemoteUrl(f"{where.url}{PIN}{item.digest}") if isinstance(where, RemoteUrl) else where


def check_redirects(remote: RemoteUrl, allow: list[str]) -> None:
    """Ask an http(s) source for its first byte, following a redirect only onto a URL ``allow`` takes.

    GDAL's ``/vsicurl/`` follows redirects by itself (libcurl's FOLLOWLOCATION, which GDAL 3.10 offers no
    option to turn off), so this asks first, at submission: a source that redirects off the allow-list is
    refused before GDAL requests anything. (A server that answers differently later is not caught here: the
    allow-list is of servers the operator trusts that far.)

    Raises:
        SourceNotAllowedError: a redirect off the allow-list.
        UnreadableInputError: no answer, or an error status, after retries.
    """
    if remote.scheme == "s3":
        return
    http_get(remote.url, 1024, _hop_check(remote.masked, allow), byte_range=(0, 0))


def fetch_without_ranges(remote: RemoteUrl, dest: Path, max_bytes: int, allow: list[str]) -> Path | None:
    """Where an http(s) ``source`` was fetched whole to (``dest``) when its server ignores Range requests, its
    redirects followed only onto the allow-list; None when ranges work (it is read where it lies).

    Raises:
        NoRangeSupportError: no Range, and more than ``max_bytes``.
        SourceNotAllowedError, UnreadableInputError.
    """
    if is_item_name(remote):
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    return without_ranges(remote, dest, max_bytes, _hop_check(remote.masked, allow))


def pin_source(input_path: str, allow: Sequence[str]) -> None:
    """Before a worker reads a job's remote ``source``: check its host again, here and now, and pin the address
    checked for this process's reads (:func:`allowed_url`). Nothing for local paths and ``s3://``.

    Raises:
        SourceNotAllowedError: the host now resolves off the allow-list rules.
    """
    remote = parse_remote(input_path.split("#", 1)[0]) if "://" in input_path else None
    if remote is not None and remote.scheme != "s3" and allow:
        allowed_url(remote.url, list(allow))


def _hop_check(shown: str, allow: list[str]):
    def hop(target: str) -> None:
        try:
            allowed_url(target, allow)
        except SourceNotAllowedError as err:
            raise SourceNotAllowedError(f"`source` {shown} redirects off the allow-list: {err}") from None

    return hop


def check_input(
    path: str | os.PathLike | RemoteUrl,
    spec: ModelSpec,
    options: JobOptions,
    limits: InputLimits,
    name: str | None = None,
) -> RasterInfo:
    """Check, from headers alone, that ``spec``'s model can segment the input at ``path`` with ``options``:
    the engine's own choice of reader (a whole-slide image through OpenSlide, any other raster through
    GDAL), its size and format limits, bands, dtype, the pixel size plan and the tile settings.

    Args:
        path: the input on the server's disk, or a remote raster (:func:`resolve_source`).
        spec: the model's spec (after serving options such as prune).
        options: the job's options.
        limits: format and size limits.
        name: the name to report the input under (a client's file name), default the path's.

    Returns:
        What the input is (the job record's ``input``).

    Raises:
        UnreadableInputError (not an image, empty, truncated, a corrupt slide), UnsupportedFormatError,
        TooLargeError, BandMismatchError, DtypeError, PixelSizeError, TileGeometryError.
    """
    if (options.asset or options.band_names) and not is_item_name(path):
        raise OptionsError(
            "asset and band names (e.g. bands=red,green,blue) choose from a STAC item: give its URL (.json) as "
            "`source`, or band numbers (e.g. bands=1,2,3)"
        )
    header = inspect_input(path, spec, options.bands, limits.allowed_drivers, limits.max_pixels, options.asset)
    info = header.info
    label = name or info.name
    pixels = info.width * info.height
    if limits.max_untiled_pixels and info.driver in UNTILED_DRIVERS and pixels > limits.max_untiled_pixels:
        raise TooLargeError(
            f"{label} is a {info.driver} of {info.width}x{info.height} = {pixels} pixels; "
            f"{info.driver} has no tiles to read by window, and the limit for such formats is "
            f"{limits.max_untiled_pixels}: convert it to a tiled GeoTIFF"
        )
    plan_resolution(header.levels, header.pixel_size, spec, options.pixel_size_policy, options.pixel_size_m)
    tile_settings(spec, options.segment_options())
    return dataclasses.replace(info, name=label)


__all__ = [
    "InputLimits",
    "JobOptions",
    "JobOptionsRecord",
    "form_fields",
    "UNTILED_DRIVERS",
    "allowed_url",
    "check_input",
    "check_item",
    "check_redirects",
    "check_shards",
    "fetch_without_ranges",
    "pin_source",
    "resolve_source",
]
