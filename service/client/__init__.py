"""A Python client of the tileseg service: ``tileseg segment`` run on a server, from a script or a notebook.

    from tileseg.client import Client

    client = Client("http://127.0.0.1:8000", api_key=None)
    client.segment("scene.tif", "mask.tif", model="unet-em", vectors="regions.gpkg")

A run is a job on the server: :meth:`Client.submit` uploads the image (streamed from disk) or names it as
``source`` (a URL, or a path under the server's input folders), :meth:`Client.wait` polls the job and reports
its tiles, :meth:`Client.download` streams each result into a temporary file beside the destination and
renames it, so that a broken transfer never leaves half a mask. :meth:`Client.segment` does all three and
cancels the job on the server when interrupted (Ctrl-C).

Only httpx and the standard library: a notebook calling a server needs no torch. The options are the
command line's (``tile=512``, ``roi="auto"``, ``blend="gaussian"``); the server checks them and answers
unknown or invalid ones with its own message.

Errors: every failure is a :class:`ClientError` carrying the server's ``code``, ``message`` and HTTP
``status``; each subclass also inherits the builtin it resembles (:class:`Unauthorized` is a
``PermissionError``, :class:`ModelNotFound` a ``LookupError``, :class:`Refused` a ``ValueError``).

The package: :class:`Client` and its jobs (:mod:`.client`), the requests and their retries
(:mod:`.exchange`), the errors (:mod:`.errors`).
"""

from tileseg.client.client import Client, vector_format
from tileseg.client.errors import (
    ClientError,
    JobCanceled,
    JobFailed,
    ModelNotFound,
    NotFound,
    Refused,
    ServerError,
    Unauthorized,
    Unreachable,
    error_of,
)
from tileseg.client.exchange import retry_after

__all__ = [
    "Client",
    "ClientError",
    "JobCanceled",
    "JobFailed",
    "ModelNotFound",
    "NotFound",
    "Refused",
    "ServerError",
    "Unauthorized",
    "Unreachable",
    "error_of",
    "retry_after",
    "vector_format",
]
