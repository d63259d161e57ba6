"""A corpus of bad requests: each is answered at once with its status code and the JSON error, no job is
created and nothing is left on disk; afterwards the server is ready and a good job succeeds."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

from tests.api.conftest import MAX_UPLOAD, submit, wait_for


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and header that claims ``width`` x ``height``, with almost no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, data_dir, inputs_root) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    files = {}
    files["text"] = root / "notes.tif"
    files["text"].write_text("this is not an image\n" * 50)
    raw = (data_dir / "geotiff" / "cogeo.tif").read_bytes()
    files["truncated"] = root / "truncated.tif"  # its header opens; its last blocks are cut off
    files["truncated"].write_bytes(raw[: len(raw) * 6 // 10])
    raw = (data_dir / "geotiff" / "RGB.byte.tif").read_bytes()
    files["truncated directory"] = root / "cut.tif"
    files["truncated directory"].write_bytes(raw[: len(raw) // 2])
    files["empty"] = root / "empty.png"
    files["empty"].write_bytes(b"")
    files["bomb"] = root / "bomb.png"
    files["bomb"].write_bytes(png_claiming(100_000, 100_000))
    files["big"] = root / "big.tif"
    files["big"].write_bytes(os.urandom(1 << 20) * (MAX_UPLOAD // (1 << 20) + 1))
    escape = inputs_root / "escape.tif"  # a symlink inside an input root that leads out of it
    if not escape.is_symlink():
        escape.symlink_to(files["text"])
    return files


GEOTIFF = ("geotiff", "RGB.byte.tif")
GREY = ("geotiff", "shade.tif")
UINT16 = ("geotiff", "spacenet_atlanta_pan_uint16.tif")

# case: (file from the corpus or the shared data, form fields, status, error code)
CASES = {
    "not an image": ("text", {}, 415, "unreadable_input"),
    "truncated tiff": ("truncated", {}, 415, "unreadable_input"),
    "truncated directory": ("truncated directory", {}, 415, "unreadable_input"),
    "empty file": ("empty", {}, 415, "unreadable_input"),
    "png claiming 100000x100000": ("bomb", {"model": "grey-test"}, 413, "too_large"),
    "oversize upload": ("big", {}, 413, "upload_too_large"),
    "bands the model cannot take": (GREY, {}, 422, "band_mismatch"),
    "a band that does not exist": (GEOTIFF, {"bands": "1,2,5"}, 422, "band_mismatch"),
    "dtype the model cannot take": (UINT16, {"model": "grey-test"}, 422, "unsupported_dtype"),
    "tile off the model's grid": (GEOTIFF, {"tile": 30}, 422, "bad_tile_settings"),
    "overlap in crop mode": (GEOTIFF, {"overlap": 0.25}, 422, "bad_tile_settings"),
    "prune level the model lacks": (GREY, {"model": "nested", "prune": 3}, 422, "bad_options"),
    "prune on a model without levels": (GEOTIFF, {"prune": 1}, 422, "bad_options"),
    "unknown model": (GEOTIFF, {"model": "nosuch"}, 404, "model_not_found"),
    "missing model field": (GEOTIFF, {"model": None}, 400, "bad_request"),
    "tile not a number": (GEOTIFF, {"tile": "big"}, 400, "bad_request"),
    "unknown blend": (GEOTIFF, {"blend": "average"}, 400, "bad_request"),
    "overlap out of range": (GEOTIFF, {"overlap": 1.5}, 400, "bad_request"),
    "band zero": (GEOTIFF, {"bands": "0,1,2"}, 400, "bad_request"),
    "unknown field": (GEOTIFF, {"tiel": 128}, 400, "bad_request"),
    "corrupt slide": (("wsi", "unreadable.svs"), {}, 415, "unreadable_input"),
    "unopenable slide": (("wsi", "unopenable.tiff"), {}, 415, "unreadable_input"),
    "dicom thumbnail instance alone": (("wsi", "boxes_1.dcm"), {}, 415, "unreadable_input"),
    "roi a server path": (GEOTIFF, {"roi": "/etc/passwd"}, 400, "bad_request"),
    "roi a polygon file": (GEOTIFF, {"roi": "aoi.geojson"}, 400, "bad_request"),
    "strict without a pixel size": (
        ("wsi", "boxes.tiff"),
        {"model": "rgb-2um", "pixel_size_policy": "strict"},
        422,
        "pixel_size",
    ),
    "input far coarser than the model": (GEOTIFF, {"model": "rgb-2um", "pixel_size": "1mm"}, 422, "pixel_size"),
    "file and source": (GEOTIFF, {"source": "geotiff/RGB.byte.tif"}, 400, "bad_request"),
    "neither file nor source": (None, {}, 400, "bad_request"),
    "source outside the roots": (None, {"source": "/etc/passwd"}, 400, "source_not_allowed"),
    "source climbing out": (None, {"source": "geotiff/../../../../etc/passwd"}, 400, "source_not_allowed"),
    "source through a symlink": (None, {"source": "escape.tif"}, 400, "source_not_allowed"),
    "source missing": (None, {"source": "geotiff/nosuch.tif"}, 400, "source_not_allowed"),
    "source a url": (None, {"source": "https://example.com/a.tif"}, 400, "source_not_allowed"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_is_refused_at_once(client, server, corpus, data_dir, case):
    what, fields, status, code = CASES[case]
    fields = {"model": "rgb-test", **fields}
    model = fields.pop("model")
    path = corpus[what] if isinstance(what, str) else data_dir.joinpath(*what) if what else None
    before = {p.name for p in (server.data_dir / "jobs").iterdir()}
    listed = len(client.get("/jobs", params={"limit": 500}).json()["jobs"])
    if model is None:
        with open(path, "rb") as fh:
            response = client.post("/segment", files={"file": (path.name, fh)})
    else:
        response = submit(client, path, model=model, **fields)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert len(client.get("/jobs", params={"limit": 500}).json()["jobs"]) == listed, "no job was created"
    assert {p.name for p in (server.data_dir / "jobs").iterdir()} == before, "nothing is left on disk"


def test_not_multipart(client):
    response = client.post("/segment", content=b"\x00\x01", headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request"


@pytest.mark.parametrize(
    "path, status, code",
    [
        ("/jobs/not-a-uuid", 400, "bad_request"),
        ("/jobs/00000000-0000-4000-8000-000000000000", 404, "job_not_found"),
        ("/jobs/00000000-0000-4000-8000-000000000000/mask", 404, "job_not_found"),
        ("/jobs?limit=0", 400, "bad_request"),
        ("/jobs?offset=-1", 400, "bad_request"),
        ("/no/such/route", 404, "not_found"),
    ],
)
def test_bad_lookups(client, path, status, code):
    response = client.get(path)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_still_healthy_afterwards(client, data_dir):
    assert client.get("/readyz").status_code == 200
    job = submit(client, data_dir / "geotiff" / "rgb-byte-tenth.tif").json()
    assert wait_for(client, job["id"])["status"] == "succeeded"


def test_oversize_upload_without_a_length_is_cut_off(client, server):
    """A chunked body declares no length: it is counted as it arrives and refused past the limit."""
    boundary = "tilesegboundary"

    def body():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nrgb-test\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.tif"\r\n\r\n'
        ).encode()
        chunk = b"\x00" * (1 << 20)
        for _ in range(MAX_UPLOAD // len(chunk) + 2):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/segment", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "upload_too_large"
