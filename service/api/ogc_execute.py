"""An OGC execute request, as a tileseg job: executing the ``segment`` process submits a job through the job
service, exactly as ``POST /segment`` does: the same checks, keys, limits and workers; an OGC job *is* a tileseg
job. The ``image`` input is an ``href`` that the server's ``source`` rules allow, or an inline base64 ``value``
for small images; a synchronous execution waits for the job a while, then answers as an asynchronous one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from tileseg.api.errors import RequestError, UploadTooLargeError, describe_validation
from tileseg.api.ogc_process import MAX_INLINE_BYTES
from tileseg.jobs.callbacks import job_callbacks
from tileseg.jobs.intake import JobOptions, form_fields
from tileseg.jobs.service import JobService, Upload
from tileseg.jobs.store import Job

SYNC_WAIT_SECONDS = 60.0  # a synchronous execution waits this long, then answers as an asynchronous one
POLL_SECONDS = 0.25
OUTPUTS = ("mask", "vectors", "instances", "objects")  # what an execute request may list under "outputs"


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, refused past ``limit`` bytes while it is still arriving."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLargeError(f"the request has {declared} bytes; the limit is {limit}: send larger images by href")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise UploadTooLargeError(f"the request has more than {limit} bytes: send larger images by href")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise RequestError("the execute request is not JSON") from None
    if not isinstance(data, dict):
        raise RequestError('the execute request is a JSON object: {"inputs": {...}, "outputs": {...}}')
    return data


def parse_execute(body: dict[str, Any]) -> tuple[dict[str, Any], bool, bool]:
    """The inputs, whether vectors were asked for as an output, and whether the raw mask is wanted. Listing
    ``instances`` or ``objects`` as an output asks for the objects (the ``instances`` input)."""
    inputs = body.get("inputs")
    if not isinstance(inputs, dict):
        raise RequestError('the execute request needs "inputs": {"image": {"href": ...}, "model": ...}')
    outputs = body.get("outputs") or {}
    if not isinstance(outputs, dict):
        raise RequestError('"outputs" is an object: {"mask": {}, "vectors": {}}')
    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown:
        raise RequestError(f"no output {unknown[0]!r}: the outputs are {', '.join(OUTPUTS)}")
    if {"instances", "objects"} & set(outputs):
        inputs = {**inputs, "instances": True}
    return inputs, "vectors" in outputs, body.get("response") == "raw"


async def submit(
    jobs: JobService, owner: str | None, inputs: dict[str, Any], want_vectors: bool, subscriber: Any = None
) -> Job:
    """Submit the job through the job service, as ``POST /segment`` does (the same checks, the same job); a
    ``subscriber``'s URIs are checked as ``POST /segment``'s ``callback`` is, before anything is read."""
    values = {name: _plain(name, value) for name, value in inputs.items() if name != "image"}
    model = values.pop("model", None)
    if not isinstance(model, str) or not model:
        raise RequestError("the input `model` is required: a served model's name (GET /models)")
    unknown = sorted(set(values) - set(form_fields()))
    if unknown:
        raise RequestError(f"no input {unknown[0]!r}: the inputs are image, model, {', '.join(form_fields())}")
    if want_vectors:
        values["vectors"] = True
    try:
        options = JobOptions(**values)
    except ValidationError as err:
        raise RequestError(describe_validation(err.errors())) from None
    callback = await run_in_threadpool(job_callbacks, list(jobs.settings.callback_allow), None, subscriber)
    image = inputs.get("image")
    job_id, files = jobs.new_job_files()
    try:
        source, size = _image(image, files.upload)
    except BaseException:
        files.remove()
        raise
    upload = Upload(files.upload, f"inline-{job_id[:8]}.tif", size) if source is None else None
    return await run_in_threadpool(jobs.submit, job_id, model, options, owner, upload, source, callback)


def _plain(name: str, value: Any) -> Any:
    """An input's value: given plainly, or as a qualified value ``{"value": ...}``."""
    if isinstance(value, dict) and "value" in value:
        return value["value"]
    if isinstance(value, (dict, list)):
        raise RequestError(f"the input {name!r} takes one plain value")
    return value


def _image(image: Any, destination: Any) -> tuple[str | None, int]:
    """The ``image`` input: ``(source, 0)`` for an href (checked later by the same rules as ``source``), or
    ``(None, size)`` once an inline value is decoded and written to ``destination``."""
    if isinstance(image, dict) and "href" in image:
        href = str(image["href"])
        # a file: URI names a path on the server: the path is what the source rules judge; anything else
        # goes to them as it came (they refuse what they do not take)
        parts = urlsplit(href)
        return (unquote(parts.path) if parts.scheme == "file" and parts.netloc in ("", "localhost") else href), 0
    text = image.get("value") if isinstance(image, dict) else image
    if not isinstance(text, str) or not text:
        raise RequestError('the input `image` is required: {"href": "<path or URL>"} or {"value": "<base64>"}')
    if len(text) > (MAX_INLINE_BYTES * 4) // 3 + 4:
        raise UploadTooLargeError(f"an inline image has at most {MAX_INLINE_BYTES} bytes: send larger ones by href")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("the input `image` value is not base64") from None
    destination.write_bytes(data)
    return None, len(data)


async def wait(jobs: JobService, job: Job, owner: str | None) -> Job:
    """The job once it has finished, or as it stands after ``SYNC_WAIT_SECONDS``."""
    deadline = time.monotonic() + SYNC_WAIT_SECONDS
    while not job.status.finished and time.monotonic() < deadline:
        await asyncio.sleep(POLL_SECONDS)
        job = await run_in_threadpool(jobs.get, job.id, owner)
    return job


__all__ = ["POLL_SECONDS", "SYNC_WAIT_SECONDS", "parse_execute", "read_json", "submit", "wait"]
