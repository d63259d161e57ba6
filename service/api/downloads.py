"""Result downloads: a file on this machine, or an object in S3 (``TILESEG_RESULTS_URL``), streamed through
the API (with single byte ranges, as GDAL's ``/vsicurl/`` and download managers ask) or, with
``TILESEG_RESULTS_REDIRECT``, a redirect to a presigned URL that the client follows to the store itself."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from tileseg import objectstore
from tileseg.jobs.errors import ResultGoneError
from tileseg.jobs.service import ResultRef
from tileseg.objectstore import ObjectMissingError, S3Url

PRESIGNED_SECONDS = 900  # how long a redirect's presigned URL may be used
ONE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def send(
    ref: ResultRef,
    media_type: str,
    filename: str,
    disposition: str = "attachment",
    range_header: str | None = None,
    redirect: bool = False,
) -> Response:
    """The answer that hands ``ref`` to the client; a result removed since the job was read (the sweeper, a
    DELETE) is a 410, not an error of the server."""
    if isinstance(ref, Path):
        try:
            stat = ref.stat()
        except FileNotFoundError:
            raise _gone() from None
        return FileResponse(
            ref, media_type=media_type, filename=filename, stat_result=stat, content_disposition_type=disposition
        )
    if redirect:
        return RedirectResponse(objectstore.presigned(ref, PRESIGNED_SECONDS, filename), status_code=307)
    return _stream(ref, media_type, filename, disposition, range_header)


def _stream(ref: S3Url, media_type: str, filename: str, disposition: str, range_header: str | None) -> Response:
    try:
        size = objectstore.head(ref).size
    except ObjectMissingError:
        raise _gone() from None
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'{disposition}; filename="{filename}"',  # the routes' names: [A-Za-z0-9._-]
    }
    wanted = _range(range_header, size)
    if wanted is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(objectstore.stream(ref), media_type=media_type, headers=headers)
    if wanted == (-1, -1):
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    start, end = wanted
    headers["Content-Length"] = str(end - start + 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(objectstore.stream(ref, start, end), 206, media_type=media_type, headers=headers)


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range asked for, clipped to the object; None for the whole object (no header, or
    several ranges: answered whole, as HTTP allows); ``(-1, -1)`` when it lies outside."""
    match = ONE_RANGE.match((header or "").strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(size - 1, int(last)) if last else size - 1
    if start >= size or start > end:
        return (-1, -1)
    return start, end


def _gone() -> ResultGoneError:
    return ResultGoneError("the results of this job have expired and were removed")


__all__ = ["PRESIGNED_SECONDS", "send"]
