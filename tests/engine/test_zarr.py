"""Zarr and OME-Zarr in and out: a Zarr input gives the mask its pixels give as a GeoTIFF; a ``.zarr`` output
holds the GeoTIFF output of the same run, as readers nobody here wrote see it (ome-zarr-py, GDAL's Zarr driver).

Inputs are written by zarr-python (plain arrays, v2 and v3) and by ome-zarr-py's writer (OME-Zarr images, NGFF 0.4
and 0.5), never by the code under test.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr.writer import write_multiscale
from rasterio.errors import NotGeoreferencedWarning

from tests.engine.nets import checkpoint
from tileseg.engine import segment
from tileseg.engine.errors import OptionsError, UnreadableInputError
from tileseg.engine.io.inputs import inspect_input, open_input
from tileseg.engine.io.zarr_raster import ZarrRaster
from tileseg.engine.options import SegmentOptions
from tileseg.engine.zarr.image import mode_2x2

# ShiftNet: class = the first band's value, shifted by (3, -5) pixels and mirrored at the edges (tiling, padding
# and stitching all matter); 8 classes, so the mask has as many values as the image's first band
RUN = SegmentOptions(runtime="torch", precision="fp32", tile=128, readers=2)


@pytest.fixture
def model(tmp_path):
    return checkpoint(tmp_path, "test-shift", bands=3, classes=8, name="shift", halo=8, multiple=4)


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """``(3, height, width)`` uint8: band 1 in regions of classes 0..7 (16-pixel blocks), bands 2-3 noise."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 8, (height // 16 + 1, width // 16 + 1)).astype(np.uint8)
    first = np.repeat(np.repeat(classes, 16, 0), 16, 1)[:height, :width]
    return np.concatenate([first[None], rng.integers(0, 255, (2, height, width), dtype=np.uint8)])


def geotiff(path: Path, data: np.ndarray) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype="uint8")
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


def read_tif(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def ome_image(path: Path, levels: list[np.ndarray], micrometres: float, fmt) -> Path:
    """An OME-Zarr image written by ome-zarr-py: ``levels`` (c, y, x), level k at ``micrometres * 2**k``."""
    group = zarr.open_group(path, mode="w", zarr_format=2 if fmt.version == "0.4" else 3)
    transforms = [
        [{"type": "scale", "scale": [1.0, micrometres * 2**k, micrometres * 2**k]}] for k in range(len(levels))
    ]
    axes = [{"name": "c", "type": "channel"}] + [{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
    with warnings.catch_warnings():  # ome-zarr-py prefers `scale`; explicit transforms say exactly what is meant
        warnings.simplefilter("ignore", DeprecationWarning)
        write_multiscale(levels, group, fmt=fmt, axes=axes, coordinate_transformations=transforms)
    return path


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_zarr_array_gives_the_mask_of_its_pixels_as_a_geotiff(tmp_path, model, zarr_format):
    data = image(300, 340)
    array = zarr.create_array(
        tmp_path / "scene.zarr", shape=data.shape, chunks=(3, 64, 64), dtype="uint8", zarr_format=zarr_format
    )
    array[:] = data
    segment(model, geotiff(tmp_path / "scene.tif", data), tmp_path / "ref.tif", RUN)
    result = segment(model, str(tmp_path / "scene.zarr"), tmp_path / "mask.tif", RUN)
    assert result.input.driver == "Zarr" and (result.input.width, result.input.height) == (340, 300)
    expected = read_tif(tmp_path / "ref.tif")
    assert len(np.unique(expected)) == 8  # the mask has structure to get wrong
    np.testing.assert_array_equal(read_tif(tmp_path / "mask.tif"), expected)


def test_dimension_names_say_where_the_channels_are(tmp_path, model):
    data = image(200, 150)
    array = zarr.create_array(
        tmp_path / "yxc.zarr", shape=(200, 150, 3), chunks=(64, 64, 3), dtype="uint8", dimension_names=("y", "x", "c")
    )
    array[:] = data.transpose(1, 2, 0)
    with open_input(tmp_path / "yxc.zarr", model.spec) as zarr_image:
        assert isinstance(zarr_image, ZarrRaster)
        np.testing.assert_array_equal(zarr_image.read_region(10, 20, 30, 40), data[:, 10:40, 20:60])
    segment(model, geotiff(tmp_path / "scene.tif", data), tmp_path / "ref.tif", RUN)
    segment(model, tmp_path / "yxc.zarr", tmp_path / "mask.tif", RUN)
    np.testing.assert_array_equal(read_tif(tmp_path / "mask.tif"), read_tif(tmp_path / "ref.tif"))


@pytest.mark.parametrize("fmt", [FormatV04(), FormatV05()], ids=["ngff-0.4", "ngff-0.5"])
def test_an_ome_zarr_image_is_read_at_the_level_of_the_models_pixel_size(tmp_path, fmt):
    """Levels at 0.5, 1 and 2 µm; a model of 1 µm reads level 1 as it is, and its mask on the model's grid is the
    mask of level 1's pixels as a GeoTIFF."""
    model = checkpoint(
        tmp_path, "test-shift", bands=3, classes=8, name="shift-1um", halo=8, multiple=4, pixel_size=1e-6
    )
    levels = [image(400, 360, seed=k) for k in range(3)]
    levels = [lv[:, : 400 // 2**k, : 360 // 2**k] for k, lv in enumerate(levels)]
    ome_image(tmp_path / "scene.ome.zarr", levels, 0.5, fmt)
    header = inspect_input(tmp_path / "scene.ome.zarr", model.spec)
    assert header.levels == [(400, 360), (200, 180), (100, 90)] and header.info.driver == "OME-Zarr"
    assert header.pixel_size.metres == pytest.approx(0.5e-6)
    on_model = SegmentOptions(runtime="torch", precision="fp32", tile=128, readers=2, output_grid="model")
    result = segment(model, tmp_path / "scene.ome.zarr", tmp_path / "mask.tif", on_model)
    assert result.pixel_size.level == 1 and not result.pixel_size.resampled
    native = SegmentOptions(runtime="torch", precision="fp32", tile=128, readers=2, pixel_size_policy="native")
    segment(model, geotiff(tmp_path / "level1.tif", levels[1]), tmp_path / "ref.tif", native)
    np.testing.assert_array_equal(read_tif(tmp_path / "mask.tif"), read_tif(tmp_path / "ref.tif"))


def ome_nodes(path: Path) -> list:
    return list(Reader(parse_url(str(path)))())


def test_a_zarr_output_holds_the_geotiff_output_of_the_same_run(tmp_path, model):
    """A mask and probabilities of 1100x1200 pixels: three levels; level 0 equals the GeoTIFF, as ome-zarr-py
    and GDAL read it; each coarser pixel is a most frequent value of its 2x2 block."""
    source = geotiff(tmp_path / "scene.tif", image(1100, 1200))
    segment(model, source, tmp_path / "ref.tif", RUN, probabilities=tmp_path / "ref-p.tif")
    segment(model, source, tmp_path / "mask.zarr", RUN, probabilities=tmp_path / "probs.zarr")
    expected, probs = read_tif(tmp_path / "ref.tif")[0], read_tif(tmp_path / "ref-p.tif")
    node = ome_nodes(tmp_path / "mask.zarr")[0]
    assert any(isinstance(s, Multiscales) for s in node.specs) and any(isinstance(s, Label) for s in node.specs)
    assert [a["name"] for a in node.metadata["axes"]] == ["y", "x"]
    assert [tuple(d.shape) for d in node.data] == [(1100, 1200), (550, 600), (275, 300)]
    np.testing.assert_array_equal(np.asarray(node.data[0]), expected)
    for fine, coarse in zip(node.data, node.data[1:], strict=False):
        assert_mode_of_blocks(np.asarray(fine), np.asarray(coarse))
    prob_node = ome_nodes(tmp_path / "probs.zarr")[0]
    assert [a["name"] for a in prob_node.metadata["axes"]] == ["c", "y", "x"]
    np.testing.assert_array_equal(np.asarray(prob_node.data[0]), probs)
    with rasterio.open(f'ZARR:"{tmp_path / "mask.zarr"}":/0') as gdal_mask:
        assert gdal_mask.nodata == 255
        np.testing.assert_array_equal(gdal_mask.read(1), expected)
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary folders were renamed into place


def assert_mode_of_blocks(fine: np.ndarray, coarse: np.ndarray) -> None:
    """Each ``coarse`` pixel is a most frequent value of its 2x2 block of ``fine`` (edge repeated when odd)."""
    padded = np.pad(fine, ((0, fine.shape[0] % 2), (0, fine.shape[1] % 2)), mode="edge")
    quads = padded.reshape(coarse.shape[0], 2, coarse.shape[1], 2).transpose(1, 3, 0, 2).reshape(4, *coarse.shape)
    counts = (quads == coarse[None]).sum(axis=0)
    best = np.max([(quads == q[None]).sum(axis=0) for q in quads], axis=0)
    np.testing.assert_array_equal(counts, best)


def test_mode_of_2x2_blocks_known_answer():
    block = np.array([[[1, 1, 2, 3], [1, 2, 4, 5], [7, 7, 0, 0], [9, 9, 0, 6]]], np.uint8)
    np.testing.assert_array_equal(mode_2x2(block), [[[1, 2], [7, 0]]])  # a 2-2 tie keeps the top row's


@pytest.mark.parametrize("fmt", [FormatV04(), FormatV05()], ids=["ngff-0.4", "ngff-0.5"])
def test_a_mask_inside_the_input_image_is_written_as_its_ngff_labels(tmp_path, model, fmt):
    data = image(600, 560)
    ome_image(tmp_path / "scene.ome.zarr", [data, data[:, ::2, ::2]], 0.5, fmt)
    segment(model, geotiff(tmp_path / "scene.tif", data), tmp_path / "ref.tif", RUN)
    segment(model, tmp_path / "scene.ome.zarr", tmp_path / "scene.ome.zarr" / "labels" / "tissue", RUN)
    nodes = ome_nodes(tmp_path / "scene.ome.zarr")
    labels = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert len(labels) == 1 and labels[0].zarr.path.rstrip("/").endswith("labels/tissue")
    np.testing.assert_array_equal(np.asarray(labels[0].data[0]), read_tif(tmp_path / "ref.tif")[0])
    assert labels[0].metadata["axes"][0]["unit"] == "micrometer"


def test_zarr_paths_that_cannot_be_written_are_refused_before_any_work(tmp_path, model):
    source = geotiff(tmp_path / "scene.tif", image(64, 64))
    (tmp_path / "old.zarr").write_bytes(b"a GeoTIFF written under a .zarr name before")
    cases = [
        (tmp_path / "old.zarr", None, RUN, "exists and is not a Zarr"),
        (tmp_path / "mask.zarr", tmp_path / "probs.tif", RUN, "both as .zarr or neither"),
        (tmp_path / "mask.zarr", None, SegmentOptions(cog=True), "--cog"),
        (tmp_path / "other.zarr" / "labels" / "x", None, RUN, "not the OME-Zarr image this run reads"),
    ]
    for output, probabilities, options, message in cases:
        with pytest.raises(OptionsError, match=message):
            segment(model, source, output, options, probabilities=probabilities)
    assert not (tmp_path / "mask.zarr").exists() and not (tmp_path / "other.zarr").exists()


def test_zarr_inputs_that_cannot_be_read_say_why(tmp_path, model):
    with pytest.raises(UnreadableInputError, match="no such Zarr folder"):
        open_input(tmp_path / "missing.ome.zarr", model.spec)
    group = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    group.create_array("data", shape=(10, 10), dtype="uint8")
    with pytest.raises(UnreadableInputError, match="plain.zarr/data"):
        open_input(tmp_path / "plain.zarr", model.spec)


def test_a_failed_run_leaves_no_zarr(tmp_path, model):
    def cancel(done: int, total: int) -> None:
        raise RuntimeError("canceled")

    source = geotiff(tmp_path / "scene.tif", image(300, 300))
    with pytest.raises(RuntimeError, match="canceled"):
        segment(model, source, tmp_path / "mask.zarr", RUN, progress=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif", "weights"]


def test_a_sharded_run_reads_and_writes_zarr_as_one_process_does(tmp_path, model):
    from tileseg.engine.shards.plan import segment_sharded

    data = image(300, 280)
    zarr.create_array(tmp_path / "scene.zarr", shape=data.shape, chunks=(3, 64, 64), dtype="uint8")[:] = data
    fixed = SegmentOptions(tile=16, batch=3, precision="fp32", runtime="torch", compile="off")
    segment(model, geotiff(tmp_path / "scene.tif", data), tmp_path / "ref.tif", fixed)
    segment_sharded(model, str(tmp_path / "scene.zarr"), tmp_path / "mask.zarr", ["cpu", "cpu"], fixed)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "mask.zarr" / "0")[:], read_tif(tmp_path / "ref.tif")[0])


def test_other_dtypes_are_stretched_as_the_geotiff_of_the_same_pixels(tmp_path):
    """uint16 values are stretched between the 2nd and 98th percentiles, as GDAL's reader finds them."""
    from tileseg.engine.io import InputRaster

    model = checkpoint(tmp_path, "test-shift", bands=3, classes=8, name="u16", dtypes=("uint16",))
    data = (np.random.default_rng(1).gamma(2.0, 3000.0, (3, 200, 230))).clip(0, 65535).astype(np.uint16)
    zarr.create_array(tmp_path / "scene.zarr", shape=data.shape, chunks=(1, 64, 64), dtype="uint16")[:] = data
    with rasterio.open(
        tmp_path / "scene.tif", "w", driver="GTiff", width=230, height=200, count=3, dtype="uint16"
    ) as d:
        d.write(data)
    with InputRaster(tmp_path / "scene.tif", model.spec) as tif, ZarrRaster(tmp_path / "scene.zarr", model.spec) as z:
        assert z.scaling.clip and not np.allclose(z.scaling.low, 0)
        for field in ("low", "high", "a", "b"):
            np.testing.assert_allclose(getattr(z.scaling, field), getattr(tif.scaling, field), rtol=1e-6)
