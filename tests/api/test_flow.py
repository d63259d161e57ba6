"""The whole flow on real images through a real server: submit (by upload and by ``source``), follow,
download; the mask is the command line's, pixel for pixel, with the same CRS and transform."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from PIL import Image

from tests.api.conftest import SHIPPED_MODELS, submit, wait_for
from tileseg.cli import cli


def run_cli(weights: Path, source: Path, out: Path, model: str, *options: str) -> Path:
    """The CLI's mask, run as the test server runs its jobs: one torch thread and batch 4 (its settings), so
    that both take the tuner's one choice for this machine (a bf16 runtime chosen by one and not the other
    would differ where the top two classes nearly tie)."""
    import torch

    threads = torch.get_num_threads()
    env = {"TILESEG_WEIGHTS_DIR": str(weights), "TILESEG_TORCH_THREADS": "1"}
    batch = [] if "--batch" in options else ["--batch", "4"]
    try:
        result = CliRunner(env=env).invoke(
            cli, ["segment", str(source), str(out), "--model", model, "-q", *batch, *options]
        )
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return out


def download(client, url: str, path: Path) -> Path:
    response = client.get(url)
    assert response.status_code == 200, response.text
    path.write_bytes(response.content)
    return path


def assert_same_raster(a: Path, b: Path, tolerance: int = 0) -> None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        np.testing.assert_allclose(x.read(), y.read(), rtol=0, atol=tolerance)
        assert x.crs == y.crs
        assert x.transform == y.transform
        assert x.nodata == y.nodata and x.dtypes == y.dtypes


@pytest.mark.parametrize("model", ["grey-test", *SHIPPED_MODELS])
def test_isbi_png_by_upload(client, server, weights, data_dir, tmp_path, model):
    image = data_dir / "isbi2012" / "train" / "images" / "0.png"
    response = submit(client, image, model=model, tile=128)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/jobs/{job['id']}" == job["links"]["self"]
    assert job["input"] == {"name": "0.png", "width": 512, "height": 512, "bands": 1, "dtype": "uint8", "crs": None}
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["percent"] == 100 and done["progress"]["tiles_done"] == done["progress"]["tiles_total"] > 0
    assert done["attempts"] == 1 and done["error"] is None and done["timings"]["seconds"] >= 0
    mask = download(client, done["links"]["mask"], tmp_path / "served.tif")
    assert_same_raster(mask, run_cli(weights, image, tmp_path / "cli.tif", model, "--tile", "128"))
    assert not (server.data_dir / "jobs" / job["id"] / "input").exists(), "the upload is deleted when the job ends"


def test_geotiff_by_upload_and_by_source(client, weights, data_dir, tmp_path):
    image = data_dir / "geotiff" / "RGB.byte.tif"
    options = {"tile": 128, "probabilities": True}
    uploaded = submit(client, image, **options)
    by_source = submit(client, None, source="geotiff/RGB.byte.tif", **options)
    assert uploaded.status_code == by_source.status_code == 202, (uploaded.text, by_source.text)
    cli_mask = run_cli(
        weights,
        image,
        tmp_path / "cli.tif",
        "rgb-test",
        "--tile",
        "128",
        "--probabilities",
        str(tmp_path / "cli-probs.tif"),
    )
    for n, response in enumerate((uploaded, by_source)):
        job = wait_for(client, response.json()["id"])
        assert job["status"] == "succeeded", job
        assert job["input"]["crs"] == "EPSG:32618" and job["options"]["tile"] == 128
        mask = download(client, job["links"]["mask"], tmp_path / f"mask{n}.tif")
        assert_same_raster(mask, cli_mask)
        probs = download(client, job["links"]["probabilities"], tmp_path / f"probs{n}.tif")
        # one torch thread in the server, several here: a probability may round to the next of 255 steps
        assert_same_raster(probs, tmp_path / "cli-probs.tif", tolerance=1)

    job = uploaded.json()
    head = client.get(job["links"]["mask"])
    assert head.headers["content-type"] == "image/tiff"
    assert 'filename="RGB.byte.mask.tif"' in head.headers["content-disposition"]
    part = client.get(job["links"]["mask"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == head.content[:100]
    preview = client.get(job["links"]["preview"])
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(preview.content))
    assert picture.mode == "RGBA" and max(picture.size) <= 512


def test_pruned_unet_plus_plus(client, weights, data_dir, tmp_path):
    image = data_dir / "isbi2012" / "train" / "images" / "1.png"
    response = submit(client, image, model="nested", prune=1, tile=128)
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["id"])
    assert job["status"] == "succeeded" and job["options"]["prune"] == 1, job
    mask = download(client, job["links"]["mask"], tmp_path / "served.tif")
    assert_same_raster(mask, run_cli(weights, image, tmp_path / "cli.tif", "nested", "--prune", "1", "--tile", "128"))


def test_models_are_the_cli_cards(client, weights):
    result = CliRunner(env={"TILESEG_WEIGHTS_DIR": str(weights)}).invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    cards = json.loads(result.output)
    assert client.get("/models").json() == cards
    one = client.get("/models/rgb-test")
    card = {k: v for k, v in one.json().items() if k != "runtime"}
    assert one.status_code == 200 and card == next(m for m in cards["models"] if m["name"] == "rgb-test")
    unknown = client.get("/models/nosuch")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_jobs_are_listed_newest_first(client, data_dir):
    ids = [submit(client, None, model="grey-test", source="isbi2012/test/images/1.png").json()["id"] for _ in range(3)]
    listed = client.get("/jobs", params={"limit": 3}).json()
    assert [j["id"] for j in listed["jobs"]] == ids[::-1]
    second = client.get("/jobs", params={"limit": 1, "offset": 1}).json()
    assert [j["id"] for j in second["jobs"]] == [ids[1]]
    for job_id in ids:
        assert wait_for(client, job_id)["status"] == "succeeded"


def test_metrics(client):
    text = client.get("/metrics").text
    assert 'tileseg_jobs{state="succeeded"}' in text
    assert "tileseg_queue_depth" in text
    assert 'tileseg_job_seconds_count{outcome="succeeded"}' in text
    assert "tileseg_tiles_per_second" in text
    assert 'tileseg_http_responses_total{code="202"}' in text


def test_the_chosen_runtime_and_window_are_shown(client, data_dir):
    """After a job, the job says what ran, and the model says how it runs here with default options."""
    job = wait_for(client, submit(client, None, model="grey-test", source="isbi2012/test/images/2.png").json()["id"])
    assert job["status"] == "succeeded", job.get("error")
    ran = job["result"]["runtime"]
    assert ran["runtime"].count("/") == 2 and ran["window"] >= ran["tile"] > 0 and ran["batch"] >= 1
    shown = client.get("/models/grey-test").json()["runtime"]
    # the same numeric path; the window may differ: a run prices its cores over its own image's shape (a 512²
    # image took window 288 where the shape-free choice shown is 224)
    assert shown is not None and shown["runtime"] == ran["runtime"] and shown["window"] >= shown["tile"] > 0
