"""The ``segment`` process in OGC API – Processes' documents: its summary and description, a job's
``statusInfo`` and its results, with the standard's conformance classes, link relations and job states.

One process, ``segment``. Its inputs are ``image`` (an ``href`` that the server's ``source`` rules allow, or an
inline base64 ``value`` for small images), ``model`` and the options of ``POST /segment``'s form, described by
the same schemas (:func:`tileseg.api.schemas.form_properties`). Its outputs are ``mask`` and ``vectors`` and, of a
model with an instance decoding, ``instances`` and ``objects``; its results link to the job's own result routes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from tileseg import __version__
from tileseg.api.schemas import form_properties
from tileseg.jobs.service import JobService
from tileseg.jobs.store import Job, JobStatus

PROCESS_ID = "segment"
MAX_INLINE_BYTES = 16 << 20  # a decoded inline image; larger ones go by href, or by POST /segment's upload

SPEC = "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf"
CONFORMANCE = [
    f"{SPEC}/{name}" for name in ("core", "ogc-process-description", "json", "job-list", "callback", "dismiss")
]
REL = "http://www.opengis.net/def/rel/ogc/1.0"
MASK_TYPE = "image/tiff; application=geotiff"
VECTORS_TYPE = "application/geopackage+sqlite3"
OBJECTS_TYPE = "text/csv"

# The standard's job states, from the job table's: a canceled job is dismissed; so is an expired one, whose
# results the server has removed.
OGC_STATUS = {
    JobStatus.QUEUED: "accepted",
    JobStatus.RUNNING: "running",
    JobStatus.SUCCEEDED: "successful",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELED: "dismissed",
    JobStatus.EXPIRED: "dismissed",
}


def link(href: str, rel: str, title: str, type_: str = "application/json") -> dict[str, str]:
    return {"href": href, "rel": rel, "type": type_, "title": title}


def summary(base: str) -> dict[str, Any]:
    return {
        "id": PROCESS_ID,
        "title": "Segment an image",
        "description": "Segment a raster tile by tile with a served model, into a class-index mask GeoTIFF "
        "(and, if asked, its regions as polygons).",
        "version": __version__,
        "jobControlOptions": ["sync-execute", "async-execute", "dismiss"],
        "outputTransmission": ["reference", "value"],
        "links": [link(f"{base}/ogc/processes/{PROCESS_ID}", "self", "The process description")],
    }


def description(base: str, models: Iterable[str]) -> dict[str, Any]:
    """The process, its inputs (``image``, ``model`` (one of ``models``) and the options) and outputs (``mask``,
    ``vectors``, ``instances``, ``objects``)."""
    options = {}
    for name, prop in form_properties().items():
        schema = {k: v for k, v in prop.items() if k != "description"}
        options[name] = {"title": name, "description": prop["description"], "schema": schema, "minOccurs": 0}
    image_schema = {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/tiff"}
    return {
        **summary(base),
        "inputs": {
            "image": {
                "title": "The image",
                "description": "An href to a raster the server may read (a path under its input folders, as "
                f"POST /segment's `source`), or an inline base64 `value` of at most {MAX_INLINE_BYTES} bytes.",
                "schema": image_schema,
                "minOccurs": 1,
                "maxOccurs": 1,
            },
            "model": {
                "title": "The model",
                "description": "A served model (GET /models).",
                "schema": {"type": "string", "enum": list(models)},
                "minOccurs": 1,
                "maxOccurs": 1,
            },
            **options,
        },
        "outputs": {
            "mask": {
                "title": "The mask",
                "description": "A class-index GeoTIFF on the input's grid.",
                "schema": {"type": "string", "contentEncoding": "binary", "contentMediaType": MASK_TYPE},
            },
            "vectors": {
                "title": "The polygons",
                "description": "Each region of each object class as a polygon (asked for by listing this output, "
                "or with the `vectors` input).",
                "schema": {"type": "string", "contentEncoding": "binary", "contentMediaType": VECTORS_TYPE},
            },
            "instances": {
                "title": "The objects' labels",
                "description": "A uint32 GeoTIFF on the mask's grid, 0 no object, 1..N one object each; a model "
                "with an instance decoding only (asked for by listing this output, or with the `instances` input).",
                "schema": {"type": "string", "contentEncoding": "binary", "contentMediaType": MASK_TYPE},
            },
            "objects": {
                "title": "The objects' table",
                "description": "One row per object of `instances`: id, class, area, perimeter, centroid, "
                "probability, band means (made with `instances`).",
                "schema": {"type": "string", "contentMediaType": OBJECTS_TYPE},
            },
        },
    }


def status_info(job: Job, base: str) -> dict[str, Any]:
    """A job in the standard's ``statusInfo`` shape."""
    status = OGC_STATUS[job.status]
    total = job.tiles_total
    progress = 100 if status == "successful" else (int(100 * job.tiles_done / total) if total else 0)
    url = f"{base}/ogc/jobs/{job.id}"
    links = [
        link(url, "self", "The job's status"),
        link(f"{base}/jobs/{job.id}", "alternate", "The job in tileseg's API"),
    ]
    if status == "successful":
        links.append(link(f"{url}/results", f"{REL}/results", "The results"))
    message = f"{job.error_code}: {job.error_message}" if job.error_code else f"{job.tiles_done}/{total} tiles"
    info = {
        "jobID": job.id,
        "processID": PROCESS_ID,
        "type": "process",
        "status": status,
        "message": message,
        "created": _time(job.created),
        "started": _time(job.started),
        "finished": _time(job.finished),
        "updated": _time(job.finished or job.read_at or job.started or job.created),
        "progress": progress,
        "links": links,
    }
    return {k: v for k, v in info.items() if v is not None}


def job_results(jobs: JobService, job_id: str, owner: str | None, base: str) -> dict[str, Any]:
    """A job's results document: links to its own result routes (``mask``; ``vectors``, ``instances`` and
    ``objects`` when asked for)."""
    job, _ = jobs.result(job_id, "mask", owner)
    results = {"mask": {"href": f"{base}/jobs/{job.id}/mask", "type": MASK_TYPE}}
    if job.options.get("vectors"):
        results["vectors"] = {"href": f"{base}/jobs/{job.id}/vectors", "type": VECTORS_TYPE}
    if job.options.get("instances"):
        results["instances"] = {"href": f"{base}/jobs/{job.id}/instances", "type": MASK_TYPE}
        results["objects"] = {"href": f"{base}/jobs/{job.id}/objects", "type": OBJECTS_TYPE}
    return results


def _time(value: float | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc).isoformat()


__all__ = [
    "CONFORMANCE",
    "MASK_TYPE",
    "MAX_INLINE_BYTES",
    "OBJECTS_TYPE",
    "PROCESS_ID",
    "REL",
    "VECTORS_TYPE",
    "description",
    "link",
    "job_results",
    "status_info",
    "summary",
]
