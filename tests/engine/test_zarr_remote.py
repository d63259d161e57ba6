"""Zarr and OME-Zarr in object storage (moto's S3 server, reached through ``AWS_ENDPOINT_URL``) and on a web
server (the Range server of test_remote), in and out: each mask equals the local run's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from ome_zarr.format import FormatV05

from tests.engine.nets import checkpoint
from tests.engine.test_remote import RangeServer
from tests.engine.test_zarr import RUN, geotiff, image, ome_image, read_tif
from tileseg import objectstore
from tileseg.cli import cli
from tileseg.engine import segment
from tileseg.engine.io.remote import RemoteUrl
from tileseg.engine.io.zarr_store import open_store
from tileseg.objectstore import S3Url


@pytest.fixture
def model(tmp_path):
    return checkpoint(tmp_path, "test-shift", bands=3, classes=8, name="shift", halo=8, multiple=4)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("TILESEG_HTTP_RETRY_DELAY", "0.05")


def put_folder(folder: Path, bucket: str, prefix: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            objectstore.upload(path, S3Url(bucket, f"{prefix}/{path.relative_to(folder).as_posix()}"))


@pytest.fixture
def scene(tmp_path):
    """An OME-Zarr image (NGFF 0.5, two levels) and its pixels as a GeoTIFF's mask, for one model."""
    data = image(300, 280)
    ome_image(tmp_path / "scene.ome.zarr", [data, data[:, ::2, ::2]], 0.5, FormatV05())
    return tmp_path / "scene.ome.zarr", geotiff(tmp_path / "scene.tif", data)


def test_an_ome_zarr_in_s3_gives_the_local_mask(tmp_path, model, scene, s3):
    folder, tif = scene
    bucket = s3.bucket()
    put_folder(folder, bucket, "images/scene.ome.zarr")
    segment(model, tif, tmp_path / "ref.tif", RUN)
    result = segment(model, f"s3://{bucket}/images/scene.ome.zarr", tmp_path / "s3.tif", RUN)
    assert result.input.driver == "OME-Zarr" and result.pixel_size.input_pixel_size_m == pytest.approx(0.5e-6)
    np.testing.assert_array_equal(read_tif(tmp_path / "s3.tif"), read_tif(tmp_path / "ref.tif"))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_zarr_on_a_web_server_gives_the_local_mask(tmp_path, model, zarr_format):
    data = image(260, 300)
    array = zarr.create_array(
        tmp_path / "www" / "scene.zarr", shape=data.shape, chunks=(3, 64, 64), dtype="uint8", zarr_format=zarr_format
    )
    array[:] = data
    segment(model, geotiff(tmp_path / "scene.tif", data), tmp_path / "ref.tif", RUN)
    server = RangeServer(tmp_path / "www")
    try:
        # read in turn: two readers ahead may each fetch a chunk that neither has cached yet, as often as the
        # threads' timing has it (CI once counted 1.56x the stored bytes), which says nothing of the cache
        segment(model, f"{server.url}/scene.zarr", tmp_path / "http.tif", RUN.model_copy(update={"readers": 0}))
    finally:
        server.close()
    stored = sum(p.stat().st_size for p in (tmp_path / "www").rglob("*") if p.is_file())
    assert 0 < server.bytes_served < 1.5 * stored  # each chunk fetched about once, though windows overlap
    np.testing.assert_array_equal(read_tif(tmp_path / "http.tif"), read_tif(tmp_path / "ref.tif"))


def test_the_command_line_writes_a_zarr_to_s3(tmp_path, model, scene, s3, monkeypatch):
    """``tileseg segment scene.ome.zarr s3://.../mask.zarr``: every object of the folder is uploaded, and the mask
    read back from the store equals the GeoTIFF of the same run."""
    monkeypatch.setenv("TILESEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    folder, tif = scene
    bucket = s3.bucket()
    segment(model, tif, tmp_path / "ref.tif", RUN)
    args = ["segment", str(folder), f"s3://{bucket}/out/mask.zarr", "--model", "shift", "--tile", "128"]
    result = CliRunner().invoke(cli, [*args, "--runtime", "torch", "--precision", "fp32", "-q"])
    assert result.exit_code == 0, result.output
    keys = s3.keys(bucket, "out/")
    assert "out/mask.zarr/.zattrs" in keys and "out/mask.zarr/0/.zarray" in keys
    stored = zarr.open_group(store=open_store(RemoteUrl(f"s3://{bucket}/out/mask.zarr")), mode="r")
    np.testing.assert_array_equal(stored["0"][:], read_tif(tmp_path / "ref.tif")[0])


def test_the_command_line_refuses_a_zarr_it_cannot_write(tmp_path, model, scene, monkeypatch):
    monkeypatch.setenv("TILESEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    folder, tif = scene
    args = ["segment", str(tif), str(tmp_path / "mask.zarr"), "--model", "shift"]
    result = CliRunner().invoke(cli, [*args, "--server", "http://127.0.0.1:9"])
    assert result.exit_code != 0 and "a server writes GeoTIFF results" in result.output
    result = CliRunner().invoke(cli, ["segment", str(tif), str(folder / "labels" / "x"), "--model", "shift", "-q"])
    assert result.exit_code == 1 and "not the OME-Zarr image this run reads" in result.output
    assert not (folder / "labels").exists() and not (tmp_path / "mask.zarr").exists()
