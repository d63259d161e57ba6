"""Models added from outside (``tileseg models add``): real TorchScript and ONNX files exported here from the
shipped networks, smp networks with random weights, and bad files. The geometry in each card is measured by
the probe; these tests hold it against the declared geometry and against segmenting real crops.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from tileseg import models
from tileseg.cli import cli
from tileseg.engine import SegmentOptions, segment
from tileseg.engine.errors import TileGeometryError
from tileseg.models.checkpoint import SHIPPED_WEIGHTS
from tileseg.models.spec import reflect_indices

AERIAL = "--bands 3 --classes 1:building,2:land,3:road,4:vegetation,5:water"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A weights folder holding the two shipped networks these tests export, used as TILESEG_WEIGHTS_DIR."""
    folder = tmp_path_factory.mktemp("weights")
    for name in ("unet-aerial", "unet-em"):
        for suffix in (".safetensors", ".json"):
            shutil.copy(SHIPPED_WEIGHTS / f"{name}{suffix}", folder / f"{name}{suffix}")
    return folder


@pytest.fixture(autouse=True)
def _weights_env(weights, monkeypatch):
    monkeypatch.setenv("TILESEG_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("TILESEG_TORCH_THREADS", "2")


def native(name: str) -> models.SegmentationNet:
    return models.load(name).float().to(memory_format=torch.contiguous_format)


def export(name: str, fmt: str, folder: Path, fixed: int | None = None) -> Path:
    """``name``'s network as a TorchScript or ONNX file (dynamic sizes unless ``fixed``)."""
    net = native(name)
    bands = net.spec.input.bands
    size = fixed or net.spec.geometry.window(64)  # a size the network accepts (unet-em's: 252)
    x = torch.randn(1, bands, size, size)
    path = folder / f"{name}-{fixed or 'any'}.{fmt}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(net, x, check_trace=False), str(path))
        else:
            axes = None if fixed else {"input": {0: "b", 2: "h", 3: "w"}, "logits": {0: "b", 2: "oh", 3: "ow"}}
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["logits"], dynamic_axes=axes)  # fmt: skip
    return path


def card_options(name: str) -> list[str]:
    """The options that say what the shipped card says: bands, classes, normalisation."""
    spec = models.read_card(name)["spec"]
    classes = ",".join(f"{c['index']}:{c['name']}:{c['color']}" for c in spec["classes"])
    mean = ",".join(str(v) for v in spec["input"]["mean"])
    std = ",".join(str(v) for v in spec["input"]["std"])
    return ["--bands", str(spec["input"]["bands"]), "--classes", classes, "--mean", mean, "--std", std]


def add(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["models", "add", *args])
    return result.exit_code, result.output


def crop(data_dir: Path, name: str, folder: Path) -> Path:
    """A real crop for the model: 300 x 300 of a Dubai image, or an ISBI test image."""
    if name == "unet-aerial":
        source = data_dir / "dubai_aerial" / "tile8" / "images" / "image_part_002.jpg"
    else:
        source = data_dir / "isbi2012" / "test" / "images" / "0.png"
    with rasterio.open(source) as src:
        data = src.read(window=((0, 300), (0, 300)))
    path = folder / f"{name}-crop.tif"
    with rasterio.open(path, "w", driver="GTiff", width=300, height=300, count=data.shape[0], dtype=data.dtype) as d:
        d.write(data)
    return path


def mask(model, source: Path, out: Path, **options) -> np.ndarray:
    segment(model, source, out, SegmentOptions(precision="fp32", compile="off", **options))
    with rasterio.open(out) as src:
        return src.read(1)


def whole_logits(net: models.SegmentationNet, source: Path, halo: int | None = None) -> torch.Tensor:
    """``net``'s logits of a uint8 image run whole, mirror-padded by ``halo`` (default: its own) as the engine
    pads: the engine's tiles with that halo compute exactly these (the pad sets the stride grid's phase)."""
    spec, geometry = net.spec, net.spec.geometry
    with rasterio.open(source) as src:
        data = torch.from_numpy(src.read().astype(np.float32) / 255)
    mean, std = torch.tensor(spec.input.mean), torch.tensor(spec.input.std)
    data = (data - mean[:, None, None]) / std[:, None, None]
    halo = geometry.halo if halo is None else halo
    size, margin = data.shape[-1], halo - geometry.shrink
    length = geometry.input_length(geometry.window_output(size + 2 * margin))
    index = torch.from_numpy(reflect_indices(-halo, length, size))
    with torch.inference_mode():
        logits = net(data[:, index][:, :, index][None])
    return logits[0, :, margin : margin + size, margin : margin + size]


def assert_same_where_clear(actual: np.ndarray, net, logits: torch.Tensor) -> None:
    """``actual`` is the mask of ``logits`` wherever their top-2 margin is above 1e-3 (nearly everywhere)."""
    top2 = torch.topk(logits, 2, dim=0).values
    clear = ((top2[0] - top2[1]) > 1e-3).numpy()
    indices = np.array([c.index for c in net.spec.classes])
    expected = indices[logits.argmax(0).numpy()]
    assert clear.mean() > 0.99
    differ = clear & (expected != actual)
    assert not differ.any(), f"{differ.sum()} clear pixels differ, e.g. at {np.argwhere(differ)[0]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet-aerial", "unet-em"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_shipped_model_serves_like_the_native_one(name, fmt, weights, data_dir, tmp_path):
    added = f"{name}-{fmt}"
    code, output = add(added, str(export(name, fmt, tmp_path)), *card_options(name))
    assert code == 0, output
    declared, card = models.read_card(name)["spec"]["geometry"], models.read_card(added)
    measured = card["spec"]["geometry"]
    for key in ("multiple", "offset", "shrink", "equivariant", "blend"):
        assert measured[key] == declared[key], (key, measured, declared)
    assert measured["shrink"] <= measured["halo"] <= declared["halo"]
    assert card["probe"]["tiled_error"] <= 1e-4 and card["format"] == fmt
    assert added in models.available()
    ours, theirs = native(name), models.load(added)
    size = ours.spec.geometry.window(64)
    x = torch.randn(2, ours.spec.input.bands, size, size)
    with torch.inference_mode():
        want, got = ours(x), theirs(x)
    assert got.shape == want.shape
    if fmt == "torchscript":
        assert (got - want).abs().max() <= 1e-4
    source = crop(data_dir, name, tmp_path)
    expected, actual = mask(ours, source, tmp_path / "a.tif"), mask(theirs, source, tmp_path / "b.tif")
    if fmt == "torchscript":
        assert np.array_equal(expected, actual)
    else:  # ONNX Runtime's kernels differ from torch's in the last bits: masks agree where the margin is clear
        logits = whole_logits(ours, source)
        assert_same_where_clear(expected, ours, logits)  # the reference is the native engine's result
        assert_same_where_clear(actual, ours, logits)


@pytest.mark.slow
def test_fixed_size_onnx_tiles_at_its_window(weights, data_dir, tmp_path):
    code, output = add(
        "aerial-fixed", str(export("unet-aerial", "onnx", tmp_path, fixed=256)), *card_options("unet-aerial")
    )
    assert code == 0, output
    card = models.read_card("aerial-fixed")
    geometry = card["spec"]["geometry"]
    assert card["probe"]["fixed_window"] == 256 and geometry["equivariant"]
    core = geometry["default_tile"]
    assert core == 256 - 2 * geometry["halo"] and core % 16 == 0
    model = models.load("aerial-fixed")
    assert model.spec.geometry.window(core) == 256
    source = crop(data_dir, "unet-aerial", tmp_path)
    # its windows start on another phase of the stride grid than the native model's (halo 96, not 94): the
    # reference is the native network run whole with that pad
    ours = native("unet-aerial")
    actual = mask(model, source, tmp_path / "b.tif", tile=core)
    assert_same_where_clear(actual, ours, whole_logits(ours, source, halo=geometry["halo"]))
    with pytest.raises(TileGeometryError, match=f"takes only 256 px windows: give tile {core}"):
        mask(model, source, tmp_path / "c.tif", tile=2 * core)


def smp_state_dict(arch: str, folder: Path, **params) -> Path:
    """An smp network with random weights (no download), saved as a plain state dict."""
    from tileseg.models.smp import import_smp

    net = getattr(import_smp(), arch)(encoder_weights=None, in_channels=3, classes=5, **params)
    path = folder / f"{arch}.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow
def test_smp_unet_state_dict_tiles_exactly(weights, data_dir, tmp_path):
    path = smp_state_dict("Unet", tmp_path, encoder_name="resnet18", encoder_depth=3, decoder_channels=[64, 32, 16])
    params = [
        "--param",
        "encoder_name=resnet18",
        "--param",
        "encoder_depth=3",
        "--param",
        "decoder_channels=[64,32,16]",
    ]
    code, output = add("smp-unet", str(path), "--arch", "smp:Unet", *params, *AERIAL.split())
    assert code == 0, output
    card = models.read_card("smp-unet")
    assert card["format"] == "safetensors" and card["arch"] == "smp:Unet"
    assert card["spec"]["geometry"]["equivariant"] and card["probe"]["tiled_error"] <= 1e-4
    model = models.load("smp-unet").float()
    multiple = model.spec.geometry.multiple
    source = crop(data_dir, "unet-aerial", tmp_path)
    first = mask(model, source, tmp_path / "a.tif", tile=multiple * 4)
    second = mask(model, source, tmp_path / "b.tif", tile=multiple * 7)
    assert np.array_equal(first, second)


@pytest.mark.slow
def test_smp_segformer_gets_blended_windows(weights, tmp_path):
    path = smp_state_dict("Segformer", tmp_path, encoder_name="mit_b0")
    code, output = add(
        "smp-segformer", str(path), "--arch", "smp:Segformer", "--param", "encoder_name=mit_b0", *AERIAL.split()
    )
    assert code == 0, output
    geometry = models.read_card("smp-segformer")["spec"]["geometry"]
    assert not geometry["equivariant"] and geometry["blend"] == "gaussian"
    assert models.read_card("smp-segformer")["probe"]["why"]


class Raises(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this network refuses every input")


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def bad_files(folder: Path) -> dict[str, tuple[list[str], str]]:
    """Each bad model: its add arguments and a word its one-line error must contain."""
    text = folder / "notes.onnx"
    text.write_text("not a model")
    raises = folder / "raises.torchscript"
    torch.jit.save(torch.jit.script(Raises()), str(raises))
    aerial = export("unet-aerial", "torchscript", folder)
    state = folder / "unet.pth"
    sd = native("unet-aerial").state_dict()
    torch.save({**{k: v for k, v in list(sd.items())[1:]}, "extra.weight": torch.zeros(1)}, state)
    evil = folder / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": Evil()}, evil)
    return {
        "not-a-model": ([str(text), *AERIAL.split()], "onnx"),
        "fails-everywhere": ([str(raises), *AERIAL.split()], "every probed size"),
        "wrong-classes": ([str(aerial), "--bands", "3", "--classes", "0:a,1:b"], "5 channels"),
        "wrong-bands": ([str(aerial), "--bands", "1", "--classes", "1:a,2:b,3:c,4:d,5:e"], "every probed size"),
        "wrong-keys": ([str(state), "--arch", "unet", "--param", "padding=same", *AERIAL.split()], "extra.weight"),
        "pickled-code": ([str(evil), "--arch", "unet", *AERIAL.split()], "refused"),
        "too-slow": ([str(aerial), *AERIAL.split(), "--probe-budget", "0.01"], "budget"),
    }


def test_bad_models_exit_1_with_one_line_and_write_nothing(weights, tmp_path, capfd):
    for name, (args, word) in bad_files(tmp_path).items():
        code, output = add(name, *args)
        lines = [line for line in output.splitlines() if line.startswith("error:")]
        assert code == 1, (name, output)
        assert len(lines) == 1 and word in lines[0], (name, output)
        assert not list(weights.glob(f"{name}*")) and not list(weights.glob(f".{name}*")), name
    assert "code ran" not in capfd.readouterr().out
