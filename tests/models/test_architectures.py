"""Every registered architecture against the contract: shapes, hyper-parameters, geometry, input checks.

One shared set of tests runs over every registry entry at test size; the architecture-specific tests below it
cover what only one family has (U-Net++ pruning, SETR's resized positional embeddings, FCN's bilinear start,
the paper's valid U-Net sizes).
"""

from __future__ import annotations

import json
import re
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from tileseg.models.base import SegmentationNet
from tileseg.models.fcn import FCN, bilinear_upsampling
from tileseg.models.registry import ARCHITECTURES, build_model
from tileseg.models.setr import SETR
from tileseg.models.spec import BlendMode, Geometry
from tileseg.models.unet import UNet
from tileseg.models.unetpp import UNetPlusPlus

ARCHS = sorted(ARCHITECTURES)


def output_sizes(geometry: Geometry) -> list[tuple[int, int]]:
    """A square and a non-square output size the geometry accepts, both small."""
    first = geometry.window_output(1)
    return [(first, first), (first + geometry.multiple, first + 2 * geometry.multiple)]


def state_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --- the shared tester: every registry entry ---------------------------------------------------------------


def test_every_architecture_has_test_hyper_parameters(tiny_hparams):
    assert set(tiny_hparams) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("bands", "classes"), [(1, 2), (3, 6), (4, 2)])
def test_output_shape(tiny, arch, bands, classes):
    model = tiny(arch, bands, classes).eval()
    assert isinstance(model, SegmentationNet)
    geometry = model.geometry()
    for rows, cols in output_sizes(geometry):
        x = torch.randn(2, bands, geometry.input_length(rows), geometry.input_length(cols))
        with torch.no_grad():
            y = model(x)
        assert isinstance(y, torch.Tensor)
        assert y.shape == (2, classes, rows, cols)


@pytest.mark.parametrize("arch", ARCHS)
def test_train_mode_returns_one_tensor_that_trains(tiny, arch):
    model = tiny(arch, 3, 2).train()
    rows, cols = output_sizes(model.geometry())[1]
    x = torch.randn(2, 3, model.geometry().input_length(rows), model.geometry().input_length(cols))
    y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 2, rows, cols)
    target = torch.randint(0, 2, (2, rows, cols))
    # U-Net++ trains its heads together (deep supervision); forward alone reaches only the last one
    outputs = model.forward_deep(x) if isinstance(model, UNetPlusPlus) else [y]
    sum(F.cross_entropy(out, target) for out in outputs).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ARCHS)
def test_channels_last_gives_the_same_logits(tiny, arch):
    model = tiny(arch, 3, 2).eval()
    rows, cols = output_sizes(model.geometry())[1]
    x = torch.randn(1, 3, model.geometry().input_length(rows), model.geometry().input_length(cols))
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_hparams_round_trip_through_build_model(tiny, arch):
    model = tiny(arch, 3, 6).eval()
    hparams = json.loads(json.dumps(model.hparams))  # what a model card stores
    assert hparams == model.hparams, "hparams must survive JSON unchanged"
    assert "in_channels" not in hparams and "num_classes" not in hparams
    rebuilt = build_model(arch, 3, 6, **hparams).eval()
    assert type(rebuilt) is type(model)
    assert rebuilt.hparams == model.hparams
    assert state_shapes(rebuilt) == state_shapes(model)
    assert rebuilt.geometry() == model.geometry()
    rebuilt.load_state_dict(model.state_dict())
    rows, cols = output_sizes(model.geometry())[0]
    x = torch.randn(1, 3, model.geometry().input_length(rows), model.geometry().input_length(cols))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_geometry_is_consistent(tiny, arch):
    geometry = tiny(arch).geometry()
    assert isinstance(geometry, Geometry)
    assert geometry.halo >= geometry.shrink
    # the default tile is a core on the stride grid; its window's output is grown to the next valid length
    assert geometry.default_tile % geometry.multiple == 0
    needed = geometry.default_tile + 2 * (geometry.halo - geometry.shrink)
    output = geometry.window_output(needed)
    assert output % geometry.multiple == geometry.offset and 0 <= output - needed < geometry.multiple
    if arch.startswith("setr"):
        assert (geometry.equivariant, geometry.blend) == (False, BlendMode.GAUSSIAN)
    else:
        assert (geometry.equivariant, geometry.blend) == (True, BlendMode.CROP)


@pytest.mark.parametrize("arch", ARCHS)
def test_invalid_input_sizes_name_the_nearest_valid(tiny, arch):
    model = tiny(arch).eval()
    geometry = model.geometry()
    good = geometry.input_length(geometry.window_output(2 * geometry.multiple))
    for bad in (good + 1, good - 3):
        with pytest.raises(ValueError, match="nearest valid") as excinfo:
            model(torch.randn(1, 1, good, bad))
        suggested = [int(s) for s in re.findall(r"\d+", str(excinfo.value).split("nearest valid")[1])]
        assert suggested and all(abs(s - bad) < geometry.multiple for s in suggested)
        with torch.no_grad():
            for size in suggested:  # the suggestions are real
                assert model(torch.randn(1, 1, good, size)).shape[-1] == size - 2 * geometry.shrink
    with pytest.raises(ValueError, match="band"):
        model(torch.randn(1, 2, good, good))
    with pytest.raises(ValueError, match="batch"):
        model(torch.randn(1, good, good))


@pytest.mark.parametrize("arch", ARCHS)
def test_default_size_is_a_few_megabytes(arch):
    model = build_model(arch, 3, 6)
    parameters = sum(p.numel() for p in model.parameters())
    # fp16 checkpoints of at most ~7 MB; every default stays near the 3 M the zoo aims at
    assert 1_000_000 < parameters < 3_500_000, f"{arch}: {parameters} parameters"


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_hyper_parameters_are_value_errors(tiny, arch):
    key = {"fcn": "fc_width", "unet": "base", "unetpp": "base", "setr": "embed_dim"}[re.split(r"\d|-", arch)[0]]
    for value in (0, -4, 2.5, "16"):
        with pytest.raises(ValueError, match=key):
            tiny(arch, **{key: value})
    with pytest.raises(ValueError, match="in_channels"):
        tiny(arch, 0, 2)


# --- default geometries -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "hparams", "expected"),
    [
        ("fcn8s", {}, Geometry(halo=220, multiple=32, default_tile=704)),
        ("fcn32s", {}, Geometry(halo=208, multiple=32, default_tile=672)),
        ("unet", {}, Geometry(halo=92, multiple=16, offset=4, shrink=92, default_tile=384)),  # the paper's 572 -> 388
        ("unet", {"padding": "same"}, Geometry(halo=94, multiple=16, default_tile=384)),
        ("unetpp", {}, Geometry(halo=94, multiple=16, default_tile=384)),
        ("unetpp", {"prune": 2}, Geometry(halo=22, multiple=4, default_tile=384)),
        ("setr-mla", {}, Geometry(halo=32, multiple=16, default_tile=192, equivariant=False, blend="gaussian")),
    ],
)
def test_default_geometry(arch, hparams, expected):
    assert build_model(arch, 3, 2, **hparams).geometry() == expected


# --- FCN ----------------------------------------------------------------------------------------------------


def test_fcn_partial_variant_can_be_passed_again():
    model = partial(FCN, variant="32s")(in_channels=1, num_classes=2, variant="32s", fc_width=8)
    assert model.hparams["variant"] == "32s"


def test_fcn_variants_have_their_skips(tiny):
    names = {v: {k.split(".")[0] for k in tiny(f"fcn{v}").state_dict()} for v in ("32s", "16s", "8s")}
    assert not names["32s"] & {"score_pool4", "score_pool3"}
    assert "score_pool4" in names["16s"] and "score_pool3" not in names["16s"]
    assert {"score_pool4", "score_pool3"} <= names["8s"]


def test_fcn_upsampling_starts_bilinear():
    layer = bilinear_upsampling(2, 4)
    x = torch.randn(1, 2, 6, 5)
    with torch.no_grad():
        ours = layer(x)
    reference = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    assert ours.shape == reference.shape
    # interpolate clamps at the border where the transposed convolution sees zeros: compare the interior
    torch.testing.assert_close(ours[..., 2:-2, 2:-2], reference[..., 2:-2, 2:-2])


def test_fcn_rejects_a_bad_variant_or_encoder():
    with pytest.raises(ValueError, match="variant"):
        FCN(3, 2, variant="4s")
    with pytest.raises(ValueError, match="five"):
        FCN(3, 2, widths=[8, 8, 8, 8])


# --- U-Net --------------------------------------------------------------------------------------------------


def test_valid_unet_has_the_paper_sizes():
    model = UNet(1, 2, depth=4, base=1, padding="valid").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 572, 188)).shape == (1, 2, 388, 4)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_unet_size_rules_by_depth(depth):
    valid = UNet(1, 2, depth=depth, base=1, padding="valid").geometry()
    same = UNet(1, 2, depth=depth, base=1, padding="same").geometry()
    assert valid.shrink == 6 * 2**depth - 4 and valid.offset == 4 % 2**depth and valid.multiple == 2**depth
    assert (same.shrink, same.offset, same.multiple) == (0, 0, 2**depth)
    assert valid.halo == valid.shrink  # a valid net sees nothing but its window: no context beyond the shrink
    assert same.halo > 6 * 2**depth - 4 - same.multiple


def test_unet_rejects_a_bad_padding():
    with pytest.raises(ValueError, match="padding"):
        UNet(1, 2, padding="reflect")


# --- U-Net++ ------------------------------------------------------------------------------------------------


def count_evaluated_nodes(model: UNetPlusPlus, x: torch.Tensor) -> int:
    calls = []
    hooks = [node.register_forward_hook(lambda *_: calls.append(1)) for node in model.nodes.values()]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return len(calls)


def test_unetpp_pruning_evaluates_the_sub_network(tiny):
    full = tiny("unetpp").eval()
    x = torch.randn(1, 1, 32, 48)
    with torch.no_grad():
        deep = full.forward_deep(x)
        assert len(deep) == 4 and all(d.shape == (1, 2, 32, 48) for d in deep)
        torch.testing.assert_close(full(x), deep[-1])
    counts = []
    for level in (1, 2, 3, 4):
        pruned = tiny("unetpp", prune=level).eval()
        pruned.load_state_dict(full.state_dict())  # same parameters: a pruned net loads the full checkpoint
        assert pruned.hparams["prune"] == level
        with torch.no_grad():
            y = pruned(x)
            assert y.shape == (1, 2, 32, 48)
            # X^{0,L} only depends on nodes with i + j <= L, so head L is the same in the full net
            torch.testing.assert_close(y, deep[level - 1])
            assert len(pruned.forward_deep(x)) == level
        counts.append(count_evaluated_nodes(pruned, x))
    assert counts == [3, 6, 10, 15]  # (L + 1)(L + 2) / 2 nodes
    assert not torch.allclose(deep[0], deep[-1])


def test_pruned_unetpp_takes_finer_sizes(tiny):
    with torch.no_grad():
        assert tiny("unetpp", prune=2).eval()(torch.randn(1, 1, 12, 20)).shape == (1, 2, 12, 20)
        with pytest.raises(ValueError, match="nearest valid"):
            tiny("unetpp").eval()(torch.randn(1, 1, 12, 20))


def test_unetpp_without_deep_supervision(tiny):
    model = tiny("unetpp", deep_supervision=False).eval()
    assert [k.split(".")[1] for k in model.state_dict() if k.startswith("heads.")] == ["4", "4"]
    with torch.no_grad():
        assert len(model.forward_deep(torch.randn(1, 1, 16, 16))) == 1
    with pytest.raises(ValueError, match="deep_supervision"):
        tiny("unetpp", deep_supervision=False, prune=2)


@pytest.mark.parametrize("prune", [0, 5, 2.0])
def test_unetpp_rejects_a_bad_prune(tiny, prune):
    with pytest.raises(ValueError, match="prune"):
        tiny("unetpp", prune=prune)


# --- SETR ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", ["naive", "pup", "mla"])
def test_setr_runs_at_a_tile_other_than_its_training_size(tiny, decoder):
    model = tiny(f"setr-{decoder}", 3, 6).eval()
    assert model.hparams["img_size"] == 64
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 128)).shape == (1, 6, 96, 128)
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, 6, 16, 16)


def test_setr_resizes_its_positional_embeddings(tiny):
    model = tiny("setr-naive")
    grid = model.pos_embed.shape[-1]
    assert grid == 4
    torch.testing.assert_close(model._positions(4, 4), model.pos_embed.flatten(2).transpose(1, 2))
    resized = model._positions(6, 8)
    assert resized.shape == (1, 48, 16)
    # bicubic resizing keeps the embeddings' scale: a corner token stays close to the trained corner
    assert (resized[0, 0] - model.pos_embed[0, :, 0, 0]).abs().max() < model.pos_embed.abs().max()


def test_setr_mla_reads_evenly_spaced_layers():
    model = SETR(3, 2, decoder="mla", img_size=32, embed_dim=8, depth=24, heads=2, mla_streams=4)
    assert model.taps == [5, 11, 17, 23]


def test_setr_rejects_bad_settings():
    with pytest.raises(ValueError, match="decoder"):
        SETR(3, 2, decoder="fpn")
    with pytest.raises(ValueError, match="heads"):
        SETR(3, 2, decoder="naive", embed_dim=16, heads=3)
    with pytest.raises(ValueError, match="mla_streams"):
        SETR(3, 2, decoder="mla", embed_dim=16, heads=2, depth=2, mla_streams=3)
    with pytest.raises(ValueError, match="img_size"):
        SETR(3, 2, decoder="naive", img_size=100)
