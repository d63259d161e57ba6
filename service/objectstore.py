"""Objects in S3 and S3-compatible stores (MinIO, Ceph, on-premise): put, get, list, delete, presign.

The one place the product talks to object storage through an S3 client (boto3): the CLI's ``OUTPUT`` at an
``s3://`` URL and the service's results store (``TILESEG_RESULTS_URL``). Reading rasters by range goes through
GDAL instead (:mod:`tileseg.engine.io.remote`).

Credentials and the endpoint come from where boto3 and the AWS CLI look (the ``AWS_*`` variables, profiles,
instance roles; ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for a store of one's own): nothing here takes
them from elsewhere, and messages name an object only by its masked URL.

An upload never leaves a half-written object at its key: a small file is one PUT, a big one a multipart
upload that the store makes visible only when it completes (and that is aborted when a part fails).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tileseg.errors import TilesegError
from tileseg.urls import mask_text, mask_url

MULTIPART_THRESHOLD = 64 * 1024**2  # bytes: bigger files go up in parts of this size, several at once
CHUNK = 1024**2  # bytes read at a time when an object is streamed


class ObjectStoreError(TilesegError, OSError):
    """An object could not be written, read or removed (a missing bucket, no credentials, a refusal)."""

    code = "object_store_error"


class ObjectMissingError(ObjectStoreError, FileNotFoundError):
    """No object at that key."""

    code = "object_missing"


@dataclass(frozen=True)
class S3Url:
    """An ``s3://bucket/key`` URL, split."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> S3Url:
        """Split ``url``.

        Raises:
            ValueError: not an ``s3://`` URL with a bucket.
        """
        parts = urlsplit(str(url))
        if parts.scheme.lower() != "s3" or not parts.netloc:
            raise ValueError(f"not an s3:// URL with a bucket: {mask_url(str(url))}")
        return cls(parts.netloc, parts.path.lstrip("/"))

    def join(self, *names: str) -> S3Url:
        """The key ``names`` below this one, taken as a folder (``/`` between them)."""
        key = "/".join([self.key.rstrip("/"), *(n.strip("/") for n in names)]).lstrip("/")
        return S3Url(self.bucket, key)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def gdal_path(self) -> str:
        """The path GDAL reads this object by (range requests): ``/vsis3/bucket/key``."""
        return f"/vsis3/{self.bucket}/{self.key}"

    def __str__(self) -> str:
        return self.url


def is_s3(url: object) -> bool:
    """Whether ``url`` is an ``s3://`` URL."""
    return isinstance(url, str) and url[:5].lower() == "s3://"


_local = threading.local()


def client() -> Any:
    """A boto3 S3 client from the environment as it is now, one per thread (boto3's clients are thread-safe,
    but their sessions are not), with the standard retry mode for throttling and 5xx."""
    import boto3
    from botocore.config import Config

    env = (
        os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
        os.environ.get("AWS_PROFILE"),
        os.environ.get("AWS_ACCESS_KEY_ID"),
        os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
    )
    cached = getattr(_local, "client", None)
    if cached is not None and cached[0] == env:
        return cached[1]
    endpoint, profile, _, region = env
    session = boto3.session.Session(profile_name=profile or None)
    path_style = {"addressing_style": "path"} if endpoint else {}  # MinIO, moto: no bucket.host DNS
    config = Config(retries={"mode": "standard", "max_attempts": 6}, s3=path_style)
    made = session.client("s3", endpoint_url=endpoint or None, region_name=region or None, config=config)
    _local.client = (env, made)
    return made


@contextmanager
def _errors(action: str, url: S3Url) -> Iterator[None]:
    """botocore's errors as the product's, naming the masked URL."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            raise ObjectMissingError(f"{url}: no such object") from err
        raise ObjectStoreError(f"could not {action} {url}: {code or err}") from err
    except (BotoCoreError, Boto3Error) as err:  # Boto3Error: a transfer's failure, with the store's reason
        raise ObjectStoreError(f"could not {action} {url}: {mask_text(str(err))}") from err


def upload(path: str | Path, url: S3Url, content_type: str | None = None) -> None:
    """Put the local file ``path`` at ``url``: one PUT, or a multipart upload above
    :data:`MULTIPART_THRESHOLD` (visible only once whole; aborted on failure).

    Raises:
        ObjectStoreError: the store refused or could not be reached (after retries).
    """
    from boto3.s3.transfer import TransferConfig

    transfer = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)
    extra = {"ContentType": content_type} if content_type else None
    with _errors("upload to", url):
        client().upload_file(str(path), url.bucket, url.key, ExtraArgs=extra, Config=transfer)


def download(url: S3Url, path: str | Path) -> Path:
    """Fetch the object at ``url`` into ``path`` (written beside it first, then renamed).

    Raises:
        ObjectMissingError: no such object; ObjectStoreError: any other failure.
    """
    path = Path(path)
    part = path.with_name(path.name + ".part")
    try:
        with _errors("download", url):
            client().download_file(url.bucket, url.key, str(part))
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class ObjectInfo:
    """What :func:`head` tells of an object."""

    size: int
    content_type: str | None


def head(url: S3Url) -> ObjectInfo:
    """The object's size and content type.

    Raises:
        ObjectMissingError: no such object.
    """
    with _errors("look up", url):
        answer = client().head_object(Bucket=url.bucket, Key=url.key)
    return ObjectInfo(int(answer["ContentLength"]), answer.get("ContentType"))


def exists(url: S3Url) -> bool:
    """Whether an object lies at ``url``."""
    try:
        head(url)
    except ObjectMissingError:
        return False
    return True


def stream(url: S3Url, start: int | None = None, end: int | None = None) -> Iterator[bytes]:
    """The object's bytes (or those from ``start`` to ``end`` inclusive) in chunks, as the store sends them.

    Raises:
        ObjectMissingError, ObjectStoreError: when the object is first asked for.
    """
    args: dict[str, Any] = {"Bucket": url.bucket, "Key": url.key}
    if start is not None:
        args["Range"] = f"bytes={start}-{'' if end is None else end}"
    with _errors("read", url):
        body = client().get_object(**args)["Body"]
    return _chunks(body)


def _chunks(body) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


@dataclass(frozen=True)
class Listed:
    """An object found by :func:`listing`: where it is and when it was last written (seconds since the epoch,
    on the store's clock)."""

    url: S3Url
    modified: float


def listing(prefix: S3Url) -> list[Listed]:
    """Every object whose key starts with ``prefix``'s key, with its time."""
    found: list[Listed] = []
    with _errors("list", prefix):
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=prefix.key):
            found.extend(
                Listed(S3Url(prefix.bucket, item["Key"]), item["LastModified"].timestamp())
                for item in page.get("Contents", ())
            )
    return found


def keys(prefix: S3Url) -> list[S3Url]:
    """Every object whose key starts with ``prefix``'s key."""
    return [item.url for item in listing(prefix)]


def delete_many(urls: list[S3Url]) -> None:
    """Remove these objects (of one bucket), a thousand a request."""
    for start in range(0, len(urls), 1000):
        batch = urls[start : start + 1000]
        with _errors("delete", batch[0]):
            client().delete_objects(
                Bucket=batch[0].bucket, Delete={"Objects": [{"Key": u.key} for u in batch], "Quiet": True}
            )


def delete(url: S3Url) -> None:
    """Remove the object at ``url`` (nothing happens when there is none)."""
    with _errors("delete", url):
        client().delete_object(Bucket=url.bucket, Key=url.key)


def delete_prefix(prefix: S3Url) -> int:
    """Remove every object under ``prefix`` (a folder: its key should end in ``/``); returns how many."""
    found = keys(prefix)
    delete_many(found)
    return len(found)


def reachable(prefix: S3Url) -> bool:
    """Whether the bucket of ``prefix`` answers with these credentials (``/readyz``)."""
    try:
        with _errors("reach", prefix):
            client().head_bucket(Bucket=prefix.bucket)
    except ObjectStoreError:
        return False
    return True


def presigned(url: S3Url, seconds: int, filename: str | None = None) -> str:
    """A URL that lets its holder GET the object for ``seconds`` without credentials (and, with ``filename``,
    download it under that name)."""
    params: dict[str, Any] = {"Bucket": url.bucket, "Key": url.key}
    if filename:
        params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
    with _errors("sign", url):
        return str(client().generate_presigned_url("get_object", Params=params, ExpiresIn=int(seconds)))


__all__ = [
    "ObjectInfo",
    "ObjectMissingError",
    "ObjectStoreError",
    "S3Url",
    "client",
    "delete",
    "delete_prefix",
    "download",
    "exists",
    "head",
    "is_s3",
    "Listed",
    "delete_many",
    "keys",
    "listing",
    "presigned",
    "reachable",
    "stream",
    "upload",
]
