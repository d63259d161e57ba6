"""The object store client against a real S3 endpoint on loopback (moto's server): put, get, list, delete,
presign, and the errors a user sees."""

from __future__ import annotations

import httpx
import pytest

from tileseg import objectstore
from tileseg.objectstore import ObjectMissingError, ObjectStoreError, S3Url


def test_urls_split_and_join():
    url = S3Url.parse("s3://results/run-1/")
    assert (url.bucket, url.key) == ("results", "run-1/")
    assert url.join("jobs", "a/").url == "s3://results/run-1/jobs/a"
    assert S3Url.parse("s3://b").join("x").url == "s3://b/x"
    assert url.join("mask.tif").gdal_path == "/vsis3/results/run-1/mask.tif"
    for bad in ("https://host/key", "s3:///key", "/local/path"):
        with pytest.raises(ValueError):
            S3Url.parse(bad)


def test_round_trip_listing_ranges_and_deletion(tmp_path, s3):
    bucket = s3.bucket()
    data = bytes(range(256)) * 5000
    (tmp_path / "a.bin").write_bytes(data)
    objectstore.upload(tmp_path / "a.bin", S3Url(bucket, "p/a.bin"), content_type="image/tiff")
    objectstore.upload(tmp_path / "a.bin", S3Url(bucket, "p/sub/b.bin"))
    objectstore.upload(tmp_path / "a.bin", S3Url(bucket, "other/c.bin"))
    info = objectstore.head(S3Url(bucket, "p/a.bin"))
    assert (info.size, info.content_type) == (len(data), "image/tiff")
    assert b"".join(objectstore.stream(S3Url(bucket, "p/a.bin"))) == data
    assert b"".join(objectstore.stream(S3Url(bucket, "p/a.bin"), 1000, 1999)) == data[1000:2000]
    back = objectstore.download(S3Url(bucket, "p/sub/b.bin"), tmp_path / "b.bin")
    assert back.read_bytes() == data and not list(tmp_path.glob("*.part"))
    assert [u.key for u in objectstore.keys(S3Url(bucket, "p/"))] == ["p/a.bin", "p/sub/b.bin"]
    assert objectstore.delete_prefix(S3Url(bucket, "p/")) == 2
    assert s3.keys(bucket) == ["other/c.bin"]
    assert not objectstore.exists(S3Url(bucket, "p/a.bin"))


def test_a_presigned_url_needs_no_credentials(tmp_path, s3):
    bucket = s3.bucket()
    (tmp_path / "m.tif").write_bytes(b"mask bytes")
    objectstore.upload(tmp_path / "m.tif", S3Url(bucket, "m.tif"))
    url = objectstore.presigned(S3Url(bucket, "m.tif"), 60, filename="job-mask.tif")
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == b"mask bytes"
    assert "job-mask.tif" in answer.headers["content-disposition"]


def test_errors_name_the_object(tmp_path, s3):
    bucket = s3.bucket()
    with pytest.raises(ObjectMissingError, match=f"s3://{bucket}/none.tif"):
        objectstore.download(S3Url(bucket, "none.tif"), tmp_path / "x")
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())
    (tmp_path / "f").write_bytes(b"1")
    with pytest.raises(ObjectStoreError, match="s3://no-such-bucket/f.*NoSuchBucket"):
        objectstore.upload(tmp_path / "f", S3Url("no-such-bucket", "f"))


def test_a_failed_multipart_upload_leaves_nothing_at_the_key(tmp_path, s3, monkeypatch):
    bucket = s3.bucket()
    monkeypatch.setattr(objectstore, "MULTIPART_THRESHOLD", 5 * 1024**2)  # the store's smallest part
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (12 * 1024**2))
    real = objectstore.client()
    started = []
    original_create, original_part = real.create_multipart_upload, real.upload_part

    def create(**kwargs):
        started.append(kwargs["Key"])
        return original_create(**kwargs)

    def failing_part(**kwargs):  # parts go up in threads, in any order: the second one breaks
        if kwargs["PartNumber"] == 2:
            raise ConnectionResetError("the connection broke")
        return original_part(**kwargs)

    monkeypatch.setattr(real, "create_multipart_upload", create)
    monkeypatch.setattr(real, "upload_part", failing_part)
    with pytest.raises((ObjectStoreError, ConnectionResetError)):
        objectstore.upload(big, S3Url(bucket, "big.bin"))
    assert started == ["big.bin"], "a multipart upload was begun"
    assert s3.keys(bucket) == []
    assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
