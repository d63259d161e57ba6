"""Reading ``multipart/form-data`` as it arrives: the file goes straight to disk, its bytes counted.

Starlette's own form parser spools a file into the system's temporary folder before the route sees it,
with no limit on its size. Here the body is parsed chunk by chunk as it comes off the socket: the file
part is written to the job's folder, text fields are kept (small, few), and the whole body is counted,
so a request past the limit is refused while it is still arriving. Memory holds one chunk at a time.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qsl

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from tileseg.api.errors import RequestError, UploadTooLargeError

MAX_FIELD_BYTES = 8 << 10  # one text field
MAX_PARTS = 32
DRAIN_LIMIT = 64 << 20  # after refusing, read at most this much more so that the client hears the answer


@dataclass
class ReceivedForm:
    """The text fields of a form, and the file it carried (already on disk) if any."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None  # the client's name for the file: shown, never a path
    file_size: int = 0
    has_file: bool = False


class _FormWriter:
    """python-multipart callbacks that sort the parts into fields and the file."""

    def __init__(self, destination: Path, file_field: str, allowed: frozenset[str]):
        self.form = ReceivedForm()
        self.destination = destination
        self.file_field = file_field
        self.allowed = allowed
        self.file: BinaryIO | None = None
        self.pending = bytearray()  # file bytes parsed from the current chunk, written once it is parsed
        self._headers: list[tuple[bytes, bytes]] = []
        self._name = b""
        self._value = b""
        self._part: str | None = None
        self._is_file = False
        self._text = bytearray()
        self._parts = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
        }

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise RequestError(f"the form has more than {MAX_PARTS} parts")
        self._headers, self._part, self._is_file, self._text = [], None, False, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((self._name.lower(), self._value))
        self._name, self._value = b"", b""

    def _headers_finished(self) -> None:
        disposition = next((v for k, v in self._headers if k == b"content-disposition"), None)
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            raise RequestError("a form part has no name (Content-Disposition: form-data; name=...)")
        name = options[b"name"].decode("utf-8", "replace")
        if name not in self.allowed:
            close = difflib.get_close_matches(name, sorted(self.allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RequestError(f"unknown form field {name!r}{hint} Fields: {', '.join(sorted(self.allowed))}")
        if name == self.file_field:
            if self.form.has_file:
                raise RequestError(f"send one {self.file_field!r}, not several")
            self.form.has_file = True
            raw = options.get(b"filename", b"")
            self.form.filename = raw.decode("utf-8", "replace")[-255:] or None
            self.file = open(self.destination, "wb")
            self._is_file = True
        elif name in self.form.fields:
            raise RequestError(f"the field {name!r} is given twice")
        self._part = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.pending += data[start:end]
            self.form.file_size += end - start
        else:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                raise RequestError(f"the field {self._part!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if not self._is_file and self._part is not None:
            try:
                self.form.fields[self._part] = self._text.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(f"the field {self._part!r} is not UTF-8 text") from None

    def flush(self) -> None:
        if self.pending and self.file is not None:
            self.file.write(self.pending)
        self.pending.clear()

    def close(self) -> None:
        self.flush()
        if self.file is not None:
            self.file.close()


async def receive_form(
    request: Request, destination: Path, max_bytes: int, allowed: frozenset[str], file_field: str = "file"
) -> ReceivedForm:
    """Parse a ``multipart/form-data`` request body as it arrives, writing its file part to ``destination``.
    (A form without a file may also come as ``application/x-www-form-urlencoded``.)

    Args:
        request: the request; its body is consumed.
        destination: where the file part goes (its folder exists).
        max_bytes: the largest body accepted.
        allowed: the field names the form may have.
        file_field: the name of the file part.

    Raises:
        RequestError: not multipart, malformed, unknown or repeated fields.
        UploadTooLargeError: the body is larger than ``max_bytes`` (by its Content-Length, or as counted).
    """
    kind, params = parse_options_header(request.headers.get("content-type"))
    if kind == b"application/x-www-form-urlencoded":  # a form without a file (a `source`), as curl -d sends it
        return await _receive_urlencoded(request, allowed - {file_field})
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise RequestError("send the request as multipart/form-data (a `file` or a `source`, a `model`, options)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        await _drain(request)
        raise UploadTooLargeError(f"the request has {int(declared)} bytes; the limit is {max_bytes}")
    writer = _FormWriter(destination, file_field, allowed)
    parser = MultipartParser(params[b"boundary"], writer.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise UploadTooLargeError(f"the request has more than {max_bytes} bytes, the limit")
            try:
                parser.write(chunk)
            except MultipartParseError as err:
                raise RequestError(f"the multipart body is malformed: {err}") from None
            if writer.pending:
                await run_in_threadpool(writer.flush)  # disk writes off the event loop
        try:
            parser.finalize()
        except MultipartParseError as err:
            raise RequestError(f"the multipart body is malformed: {err}") from None
    except (RequestError, UploadTooLargeError):
        await _drain(request)
        raise
    finally:
        writer.close()
    return writer.form


async def _receive_urlencoded(request: Request, allowed: frozenset[str]) -> ReceivedForm:
    limit = MAX_FIELD_BYTES * MAX_PARTS
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            await _drain(request)
            raise RequestError(f"a form without a file has at most {limit} bytes; upload files as multipart/form-data")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise RequestError("the form is not valid UTF-8 application/x-www-form-urlencoded") from None
    form = ReceivedForm()
    for name, value in pairs:
        if name not in allowed:
            raise RequestError(f"unknown form field {name!r}; fields: {', '.join(sorted(allowed))}")
        if name in form.fields:
            raise RequestError(f"the field {name!r} is given twice")
        form.fields[name] = value
    return form


async def _drain(request: Request) -> None:
    """Read and drop the rest of a refused body (up to a bound), so that the client reads the answer
    instead of a connection reset while it is still sending."""
    dropped = 0
    try:
        async for chunk in request.stream():
            dropped += len(chunk)
            if dropped > DRAIN_LIMIT:
                break
    except Exception:  # the client went away, or the stream was already read: nothing more to drop
        pass


__all__ = ["ReceivedForm", "receive_form"]
