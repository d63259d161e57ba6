"""The API's JSON shapes (a contract: see the README), and the multipart form of ``POST /segment``."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tileseg.api.errors import ErrorDetail, RequestError, describe_validation
from tileseg.engine.options import BAND_NUMBERS, BANDS_PATTERN, base_type
from tileseg.engine.results import PixelSizeReport, PixelsRead, RoiReport, RunResult
from tileseg.jobs.intake import JobOptions, JobOptionsRecord, form_fields
from tileseg.jobs.store import Job, JobStatus


class InputInfo(BaseModel):
    name: str
    width: int
    height: int
    bands: int
    dtype: str
    crs: str | None


class Progress(BaseModel):
    tiles_done: int
    tiles_total: int
    percent: float


class ShardCounts(BaseModel):
    """A sharded job's shards, counted by state (their tiles are the job's ``progress``)."""

    total: int
    queued: int
    running: int
    done: int


class Timings(BaseModel):
    created: datetime
    started: datetime | None
    finished: datetime | None
    seconds: float | None = Field(description="Run time of the last attempt (so far, while running).")


class Links(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self")
    mask: str
    probabilities: str | None = Field(description="Null unless the job asked for probabilities.")
    vectors: str | None = Field(None, description="Null unless the job asked for vectors (add ?format=geojson).")
    instances: str | None = Field(
        None, description="Null unless the job asked for objects (instances=true): their uint32 label GeoTIFF."
    )
    objects: str | None = Field(None, description="Null unless the job asked for objects: their table (CSV).")
    preview: str
    tiles: str = Field(description="The viewer's tile pyramids of the input and the mask (GET it to describe them).")


class JobResult(RunResult):
    """A succeeded job's summary of its run, and the objects it found."""

    objects: dict[str, int] | None = Field(
        None, description='Objects found per class (e.g. {"nucleus": 412}) when the job asked for them; else null.'
    )


class JobOut(BaseModel):
    """A job as ``GET /jobs/{id}`` returns it."""

    id: str
    status: JobStatus
    model: str
    options: JobOptionsRecord
    input: InputInfo
    progress: Progress
    shards: ShardCounts | None = Field(
        None, description="A sharded job's shards by state, once it is planned; null for a job run whole."
    )
    timings: Timings
    attempts: int
    error: ErrorDetail | None
    result: JobResult | None = Field(
        None,
        description="The run's summary once the job succeeded (the input's pixel size, the level read and "
        "why, the region of interest's share); null before, and for failed or canceled jobs.",
    )
    links: Links

    @classmethod
    def of(cls, job: Job, base: str = "") -> JobOut:
        """The API's view of a job row; ``base`` is the app's root path (behind a proxy)."""
        url = f"{base}/jobs/{job.id}"
        total = job.tiles_total
        percent = 100.0 if job.status is JobStatus.SUCCEEDED else (100.0 * job.tiles_done / total if total else 0.0)
        end = job.finished or job.read_at  # both on the database's clock, as job.started is
        seconds = round(end - job.started, 3) if job.started is not None and end is not None else None
        return cls(
            id=job.id,
            status=job.status,
            model=job.model,
            options=JobOptionsRecord(**JobOptions(**job.options).to_record()),
            input=InputInfo(**job.input),
            progress=Progress(tiles_done=job.tiles_done, tiles_total=total, percent=round(percent, 1)),
            shards=ShardCounts(**job.shards) if job.shards else None,
            timings=Timings(
                created=_time(job.created), started=_time(job.started), finished=_time(job.finished), seconds=seconds
            ),
            attempts=job.attempts,
            error=ErrorDetail(code=job.error_code, message=job.error_message or "") if job.error_code else None,
            result=JobResult.model_validate(job.result) if job.result else None,
            links=Links(
                self_=url,
                mask=f"{url}/mask",
                preview=f"{url}/preview.png",
                tiles=f"{url}/tiles",
                probabilities=f"{url}/probabilities" if job.options.get("probabilities") else None,
                vectors=f"{url}/vectors" if job.options.get("vectors") else None,
                instances=f"{url}/instances" if job.options.get("instances") else None,
                objects=f"{url}/objects" if job.options.get("instances") else None,
            ),
        )


class JobList(BaseModel):
    jobs: list[JobOut]
    limit: int
    offset: int


class SegmentForm(BaseModel):
    """The fields of ``POST /segment`` besides the file, as they arrive (text), checked."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    source: str | None = Field(None, min_length=1, max_length=4096)
    callback: str | None = Field(None, min_length=1, max_length=2048)

    @classmethod
    def parse(cls, fields: dict[str, str], has_file: bool) -> tuple[SegmentForm, JobOptions]:
        """The form's model and source, and the job's options.

        Raises:
            RequestError: a missing or unparsable field, or not exactly one of ``file`` and ``source``.
        """
        own = {k: v for k, v in fields.items() if k in cls.model_fields}
        options = {k: v for k, v in fields.items() if k not in cls.model_fields and v != ""}
        unknown = sorted(set(options) - set(form_fields()))
        if unknown:  # the server's own settings (batch, readers) are not the client's to set
            raise RequestError(f"{unknown[0]}: not a field of this form")
        try:
            form = cls(**own)
            job_options = JobOptions(**options)
        except ValidationError as err:
            raise RequestError(describe_validation(err.errors())) from None
        if has_file == (form.source is not None):
            raise RequestError("send exactly one of `file` (an upload) and `source` (a path on the server)")
        return form, job_options


INT_LIST_PATTERN = f"^{BAND_NUMBERS}$"


def form_properties() -> dict[str, dict[str, Any]]:
    """The OpenAPI schema of each option field of the form, derived from the options model's types and
    constraints, so that the schema and the validation cannot drift apart."""
    properties = {}
    for name in form_fields():
        field = JobOptions.model_fields[name]
        kind = base_type(field.annotation)
        prop: dict[str, Any] = {"description": field.description}
        if kind is bool:
            prop["type"] = "boolean"
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            prop.update(type="string", enum=[m.value for m in kind])
        elif kind is int or kind is float:
            prop["type"] = "integer" if kind is int else "number"
            for rule in field.metadata:
                for cls, key in ((Ge, "minimum"), (Le, "maximum"), (Gt, "exclusiveMinimum"), (Lt, "exclusiveMaximum")):
                    if isinstance(rule, cls):
                        prop[key] = getattr(
                            rule,
                            {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt"}[key],
                        )
        elif kind is tuple:  # bands, vector_classes: lists as text in a form
            prop.update(type="string", pattern=BANDS_PATTERN if name == "bands" else INT_LIST_PATTERN)
        else:
            prop["type"] = "string"
            for rule in field.metadata:
                for attr, key in (("pattern", "pattern"), ("max_length", "maxLength")):
                    if getattr(rule, attr, None) is not None:
                        prop[key] = getattr(rule, attr)
        properties[name] = prop
    return properties


FORM_FIELDS = frozenset({"file", "source", "model", "callback", *form_fields()})

SEGMENT_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "The image (any raster GDAL reads: GeoTIFF, COG, PNG, JPEG, ...). Give this or `source`.",
        },
        "source": {
            "type": "string",
            "minLength": 1,
            "maxLength": 4096,
            "description": "Instead of an upload: a path under one of the server's TILESEG_INPUT_ROOTS, or an "
            "s3:// or http(s):// URL under a TILESEG_SOURCE_ALLOW prefix: a raster read by range requests, or a STAC "
            "item (.json; every asset it lists must be under a prefix too), with `asset` or `bands` by common name.",
        },
        "model": {"type": "string", "minLength": 1, "maxLength": 200, "description": "A served model (GET /models)."},
        "callback": {
            "type": "string",
            "minLength": 1,
            "maxLength": 2048,
            "description": "An http(s) URL under a TILESEG_CALLBACK_ALLOW prefix: the job's status is posted to it, "
            "signed (X-Tileseg-Signature), when the job ends.",
        },
        **form_properties(),
    },
}


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


__all__ = [
    "FORM_FIELDS",
    "SEGMENT_FORM_SCHEMA",
    "JobList",
    "JobResult",
    "JobOut",
    "PixelSizeReport",
    "PixelsRead",
    "RoiReport",
    "RunResult",
    "SegmentForm",
]
