"""Pixel sizes, slides and regions of interest through the real server: a job on a whole-slide image (by
``source`` and by upload, Aperio SVS and DICOM WSI) or on a pyramidal TIFF with a stated ``pixel_size`` and
``roi=auto`` reports, in ``GET /jobs/{id}``'s ``result``, the input's pixel size and where it came from, the
level read and why, and the region of interest's share; and its mask equals the CLI's."""

from __future__ import annotations

import pytest

from tests.api.conftest import submit, wait_for
from tests.api.test_flow import assert_same_raster, download, run_cli

CMU_MPP = 0.499e-6  # the CMU slide's openslide.mpp-x (Aperio's MPP = 0.4990)


def succeeded(client, response) -> dict:
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def test_a_slide_by_source_reports_its_pixel_size_and_tissue_share(client, weights, data_dir, tmp_path):
    job = succeeded(client, submit(client, None, model="rgb-2um", source="large/cmu_small_region.svs", roi="auto"))
    assert (job["input"]["width"], job["input"]["height"]) == (2220, 2967)
    size = job["result"]["pixel_size"]
    assert size["input_pixel_size_m"] == pytest.approx(CMU_MPP, rel=1e-3)
    assert "mpp" in size["input_pixel_size_source"], size
    assert size["model_pixel_size_m"] == pytest.approx(2e-6)
    # one level only: level 0 averaged down ~4x to the model's 2 µm
    assert size["level"] == 0 and size["resampled"] is True and size["policy"] == "resample"
    assert size["grid"] == [round(2967 * CMU_MPP / 2e-6), round(2220 * CMU_MPP / 2e-6)]
    assert size["read_pixel_size_m"] == pytest.approx(2e-6, rel=0.01) and "level 0" in size["why"]
    assert size["pixels_read"]["level_0"] > 0
    roi = job["result"]["roi"]
    assert roi["source"] == "auto" and 0.05 < roi["area_share"] < 0.95, roi  # tissue, not the glass
    assert job["result"]["tiles_total"] > roi["tiles_skipped"] > 0 and roi["skipped_share"] > 0
    served = download(client, job["links"]["mask"], tmp_path / "served.tif")
    cli = run_cli(
        weights, data_dir / "large" / "cmu_small_region.svs", tmp_path / "cli.tif", "rgb-2um", "--roi", "auto"
    )
    assert_same_raster(served, cli)


def test_a_stated_pixel_size_reads_the_matching_overview(client, data_dir):
    """boxes.tiff (a generic pyramidal TIFF at 72 dpi: no pixel size) stated at 1 µm, for a 2 µm model: its
    level 1 (GDAL's first overview, half the size) is read as it is."""
    tiff = data_dir / "wsi" / "boxes.tiff"
    job = succeeded(client, submit(client, tiff, model="rgb-2um", pixel_size="1um", roi="auto"))
    size = job["result"]["pixel_size"]
    assert size["input_pixel_size_m"] == pytest.approx(1e-6) and size["input_pixel_size_source"].startswith("stated")
    assert size["input_pixel_size_note"] is None or "dpi" in size["input_pixel_size_note"]
    assert size["level"] == 1 and size["resampled"] is False
    assert size["read_pixel_size_m"] == pytest.approx(2e-6, rel=0.01)
    assert size["pixels_read"]["level_0"] == 0, "level 0 is never decoded"
    assert job["result"]["roi"]["source"] == "auto"


@pytest.mark.parametrize("how", ["upload", "source"])
def test_a_dicom_slide_is_taken(client, data_dir, how):
    """boxes_0.dcm alone (an upload is one file) opens as one level; by source, beside its thumbnail."""
    dcm = data_dir / "wsi" / "boxes_0.dcm"
    response = submit(client, dcm) if how == "upload" else submit(client, None, source="wsi/boxes_0.dcm")
    job = succeeded(client, response)
    assert job["input"]["name"] == "boxes_0.dcm" and job["input"]["bands"] == 3
    size = job["result"]["pixel_size"]
    assert size["level"] == 0 and size["resampled"] is False and size["input_pixel_size_m"] is not None, size
    assert job["result"]["roi"] is None


def test_the_result_is_null_until_success_and_in_the_schema(client, data_dir):
    job = submit(client, data_dir / "geotiff" / "rgb-byte-tenth.tif").json()
    assert job["status"] == "queued" and job["result"] is None
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "result" in schema["JobOut"]["properties"]
    assert {"level", "why", "input_pixel_size_m"} <= set(schema["PixelSizeReport"]["properties"])
    done = wait_for(client, job["id"])
    assert done["result"]["roi"] is None and done["result"]["pixel_size"]["level"] == 0
