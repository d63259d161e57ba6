"""Remote sources read by range requests: s3:// from a real S3 endpoint on loopback (moto's server) and
http(s):// from a small HTTP server written here that honours Range, counts the bytes it serves and can
answer 503 to a share of its requests. The masks must equal the local file's, byte for byte."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.backends import free_port
from tests.engine.nets import checkpoint
from tileseg.engine import segment
from tileseg.engine.errors import UnreadableInputError
from tileseg.engine.io import InputRaster
from tileseg.engine.io.inputs import locate
from tileseg.engine.io.remote import RemoteUrl, gdal_options, parse_remote
from tileseg.engine.options import SegmentOptions
from tileseg.urls import mask_text, mask_url

FP32 = SegmentOptions(runtime="torch", precision="fp32", tile=128, readers=3)


class RangeServer:
    """Files of ``root`` over HTTP on loopback, by Range; ``fail_every`` k answers every k-th request 503
    (k=1: every one); ``redirects`` maps a path to the URL it answers 302 with; ``bytes_served`` and
    ``requests`` count what went out; ``hosts`` the Host headers it was sent.

    ``ranges=False`` ignores Range as Python's own ``http.server`` does (200, the whole file, no
    ``Accept-Ranges``). ``stall_from`` makes an answer whose range starts at or past that offset send its
    headers and first bytes, then nothing until the server closes (a source that stops answering)."""

    def __init__(self, root: Path, fail_every: int = 0, ranges: bool = True, stall_from: int | None = None):
        self.root, self.fail_every, self.ranges, self.stall_from = root, fail_every, ranges, stall_from
        self.redirects: dict[str, str] = {}
        self.requests = self.failures = self.bytes_served = self.stalls = 0
        self.hosts: list[str] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool):
                with server.lock:
                    server.requests += 1
                    server.hosts.append(self.headers.get("Host", ""))
                    fail = server.fail_every and server.requests % server.fail_every == 0
                    server.failures += bool(fail)
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                target = server.redirects.get(self.path.split("?", 1)[0])
                if target:
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = server.root / self.path.split("?", 1)[0].lstrip("/")
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")) if server.ranges else None
                if match and server.stall_from is not None and int(match.group(1)) >= server.stall_from:
                    self.stall(data, int(match.group(1)))
                    return
                if match:
                    start = int(match.group(1))
                    end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
                    part = data[start : end + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    part = data
                    self.send_response(200)
                self.send_header("Content-Length", str(len(part)))
                if server.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if body:
                    self.wfile.write(part)
                    with server.lock:
                        server.bytes_served += len(part)

            def stall(self, data: bytes, start: int):
                with server.lock:
                    server.stalls += 1
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start : start + 10])
                self.wfile.flush()
                server.closing.wait()  # then nothing more: the client must give up by itself

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def write_cog(path: Path, size: int, bands: int = 3, seed: int = 0) -> Path:
    """A tiled, compressed GeoTIFF with a header first (what a COG is, for range reads): smooth noise, so
    the model sees structure."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (bands, size // 16 + 1, size // 16 + 1)).astype(np.float32)
    data = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :size, :size]
    data = (data + rng.normal(0, 20, data.shape)).clip(0, 255).astype(np.uint8)
    profile = dict(driver="COG", width=size, height=size, count=bands, dtype="uint8", compress="deflate", blocksize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """Retries as in production but with short delays, so a test with failures runs in seconds."""
    monkeypatch.setenv("TILESEG_HTTP_RETRY_DELAY", "0.05")


@pytest.fixture
def rgb(tmp_path):
    return checkpoint(tmp_path, "test-pool", bands=3, classes=4, name="rgb")


def mask_of(model, source, out: Path) -> np.ndarray:
    segment(model, source, out, FP32)
    with rasterio.open(out) as src:
        return src.read(1)


def test_urls_become_gdal_paths_and_messages_mask_secrets():
    assert RemoteUrl("s3://scenes/a/b.tif").gdal_path == "/vsis3/scenes/a/b.tif"
    assert RemoteUrl("https://h.org/c.tif?sig=x").gdal_path == "/vsicurl/https://h.org/c.tif?sig=x"
    assert mask_url("https://user:pw@h.org:8443/c.tif?X-Amz-Signature=abc") == "https://***@h.org:8443/c.tif?***"
    said = mask_text("'/vsicurl/https://h.org/c.tif?token=SECRET' failed: 503")
    assert said == "'/vsicurl/https://h.org/c.tif?***' failed: 503"
    assert parse_remote("/data/a.tif") is None and parse_remote("s3://b/k.tif") == RemoteUrl("s3://b/k.tif")
    with pytest.raises(UnreadableInputError, match="ftp:// is not a source"):
        parse_remote("ftp://h/a.tif")
    with pytest.raises(UnreadableInputError, match="needs a bucket or host and a key"):
        parse_remote("s3://bucket")


def test_aws_endpoint_becomes_gdal_options():
    options = gdal_options({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "eu-west-1"})
    assert options["AWS_S3_ENDPOINT"] == "127.0.0.1:9000" and options["AWS_HTTPS"] == "NO"
    assert options["AWS_VIRTUAL_HOSTING"] == "FALSE" and options["AWS_REGION"] == "eu-west-1"
    assert options["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert options["GDAL_HTTP_RETRY_CODES"] == "429,500,502,503,504" and int(options["GDAL_HTTP_MAX_RETRY"]) >= 3
    # the S3-specific variable wins, as in boto3; an https endpoint keeps TLS; no credentials are copied
    options = gdal_options(
        {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "https://s3.lan", "AWS_SECRET_ACCESS_KEY": "k"}
    )
    assert options["AWS_S3_ENDPOINT"] == "s3.lan" and options["AWS_HTTPS"] == "YES"
    assert "k" not in options.values()


def test_https_mask_equals_the_local_one_also_when_one_request_in_five_fails(tmp_path, rgb, caplog):
    cog = write_cog(tmp_path / "scene.tif", 768)
    local = mask_of(rgb, cog, tmp_path / "local.tif")
    flaky = RangeServer(tmp_path, fail_every=5)
    try:
        from_http = mask_of(rgb, f"{flaky.url}/scene.tif?token=abc", tmp_path / "http.tif")
    finally:
        flaky.close()
    assert flaky.failures >= 1 and flaky.requests >= 5, "the test must have met failures"
    np.testing.assert_array_equal(from_http, local)
    # GDAL's warnings of the retries are logged with the URL masked
    assert "scene.tif?***" in caplog.text and "token=abc" not in caplog.text


def test_a_read_that_keeps_failing_fails_the_run_naming_the_masked_url(tmp_path, rgb, monkeypatch):
    monkeypatch.setenv("TILESEG_HTTP_MAX_RETRY", "1")
    cog = write_cog(tmp_path / "broken.tif", 384, seed=3)
    server = RangeServer(tmp_path)
    url = f"{server.url}/broken.tif?token=SECRET"
    try:
        with InputRaster(locate(url), rgb.spec) as raster:  # the header reads well
            server.fail_every = 1  # from now every block read fails
            with pytest.raises(UnreadableInputError) as caught:
                raster.read_region(0, 0, 384, 384)
    finally:
        server.close()
    message = str(caught.value)
    assert "SECRET" not in message and "broken.tif?***" in message and "\n" not in message
    assert cog.stat().st_size > 0


def test_a_small_window_of_a_big_cog_reads_a_small_share(tmp_path, rgb):
    cog = write_cog(tmp_path / "big.tif", 2048, seed=1)
    server = RangeServer(tmp_path)
    try:
        with InputRaster(locate(f"{server.url}/big.tif"), rgb.spec) as raster:
            window = raster.read_region(900, 1100, 250, 250)
    finally:
        server.close()
    with rasterio.open(cog) as src:
        expected = src.read((1, 2, 3), window=((900, 1150), (1100, 1350)))
    np.testing.assert_array_equal(window, expected)
    size = cog.stat().st_size
    assert server.bytes_served < size / 3, f"{server.bytes_served} of {size} bytes read"


def test_s3_mask_equals_the_local_one(tmp_path, rgb, s3):
    cog = write_cog(tmp_path / "scene.tif", 384, seed=2)
    client = s3.client()
    s3.bucket("scenes")
    client.upload_file(str(cog), "scenes", "public/scene.tif")
    local = mask_of(rgb, cog, tmp_path / "local.tif")
    np.testing.assert_array_equal(mask_of(rgb, "s3://scenes/public/scene.tif", tmp_path / "s3.tif"), local)
    with pytest.raises(UnreadableInputError, match="s3://scenes/public/missing.tif"):
        mask_of(rgb, "s3://scenes/public/missing.tif", tmp_path / "none.tif")


def test_an_svs_over_https_reads_as_the_local_slide_and_other_slides_are_refused_clearly(data_dir, rgb):
    from tileseg.engine.io.slide import SlideRaster

    server = RangeServer(data_dir / "wsi")
    try:
        with (
            InputRaster(locate(f"{server.url}/small.svs"), rgb.spec) as remote,
            SlideRaster(data_dir / "wsi" / "small.svs", rgb.spec) as local,
        ):
            # GDAL reads the SVS's level 0; its pixel size comes from the Aperio description, as OpenSlide's does
            np.testing.assert_array_equal(remote.read_region(0, 0, 16, 16), local.read_region(0, 0, 16, 16))
            assert remote.pixel_size.metres == pytest.approx(local.pixel_size.metres)
            assert remote.pixel_size.source == "Aperio image description MPP"
        with pytest.raises(UnreadableInputError, match="read from local files only .OpenSlide.: download"):
            InputRaster(locate(f"{server.url}/boxes_0.dcm"), rgb.spec)
    finally:
        server.close()
