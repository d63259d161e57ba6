"""The declared geometry against the networks themselves: halo, stride grid and valid sizes, measured.

Each convolutional architecture is built tiny, in float64, in eval mode with randomised weights and BatchNorm
statistics (so that no path is silently zero). Perturbing one input pixel and looking at which logits change
gives its empirical receptive field, which the declared halo must cover; cropping the input by ``multiple``
pixels must crop the logits by as much.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

# (registry name, overrides of the tiny hyper-parameters): depth 4 where the geometry depends on depth
CONV_CASES = [
    ("fcn32s", {}),
    ("fcn16s", {}),
    ("fcn8s", {}),
    ("unet", {"depth": 4, "base": 2, "padding": "valid"}),
    ("unet", {"depth": 4, "base": 2, "padding": "same"}),
    ("unet", {"depth": 2, "padding": "valid"}),
    ("unetpp", {}),
    ("unetpp", {"prune": 2}),
]
CASE_IDS = [f"{arch}-{'-'.join(f'{k}{v}' for k, v in extra.items())}".rstrip("-") for arch, extra in CONV_CASES]


def randomised(model: nn.Module) -> nn.Module:
    """``model`` in float64 and eval mode, every weight random, biases and BatchNorm shifts positive enough
    that ReLUs let perturbations through, BatchNorm running statistics random."""
    model = model.double().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
                if module.bias is not None:
                    module.bias.uniform_(0.0, 0.2)
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(0.0, 0.2)
    return model


def window_for(geometry, min_output: int) -> int:
    """The input length of the smallest valid window with at least ``min_output`` outputs."""
    return geometry.input_length(geometry.window_output(min_output))


def thin_input(geometry, axis: int, long_output: int) -> torch.Tensor:
    """A random float64 input that is long along ``axis`` (0: rows, 1: columns) and as narrow as the net
    allows across it: each axis is measured on its own, which keeps float64 convolutions affordable."""
    long = window_for(geometry, long_output)
    narrow = window_for(geometry, geometry.multiple)
    shape = (long, narrow) if axis == 0 else (narrow, long)
    return torch.randn(1, 1, *shape, dtype=torch.float64)


def changed_outputs(model: nn.Module, x: torch.Tensor, pixels: list[tuple[int, int]]) -> list[torch.Tensor]:
    """For each input pixel ``(row, col)``, the indices ``(n, 2)`` of the output pixels whose logits change
    when that pixel does (all perturbations run as one batch, beside the unperturbed input)."""
    batch = x.repeat(len(pixels) + 1, 1, 1, 1)
    for k, (row, col) in enumerate(pixels, start=1):
        batch[k, :, row, col] += 5.0
    with torch.no_grad():
        logits = model(batch)
    deltas = (logits[1:] - logits[:1]).abs().amax(dim=1)
    # float64 leaves unaffected pixels bit-identical; the threshold only guards against summation-order noise
    return [torch.nonzero(delta > 1e-9 * delta.max()) for delta in deltas]


@pytest.mark.parametrize(("arch", "extra"), CONV_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("axis", [0, 1], ids=["rows", "cols"])
def test_halo_covers_the_empirical_receptive_field(tiny, arch, extra, axis):
    """Read the long input as a whole, mirror-padded image run once (its first ``halo`` pixels are padding).
    Cores of one stride start on the grid at outputs ``m + k * multiple`` (``m = halo - shrink``), each
    read from a window of ``input_length(window_output(multiple + 2m))`` pixels starting at input
    ``k * multiple``: the smallest core is the worst case. Every output pixel that an input pixel changes
    must have that input pixel inside its core's window, or tiling could not reproduce it."""
    model = randomised(tiny(arch, **extra))
    geometry = model.geometry()
    step, margin = geometry.multiple, geometry.halo - geometry.shrink
    window = window_for(geometry, step + 2 * margin)
    x = thin_input(geometry, axis, 2 * geometry.halo + 4 * step)
    centre = x.shape[2 + axis] // 2 // step * step  # on the stride grid
    across = x.shape[3 - axis] // 2 + 1
    along = [centre + phase for phase in range(-step, step)]  # every phase of the grid, on both sides
    pixels = [(a, across) if axis == 0 else (across, a) for a in along]
    reach = 0
    for position, pixel, changed in zip(along, pixels, changed_outputs(model, x, pixels)):
        assert len(changed), "perturbing an input pixel changed no logit: the test net is degenerate"
        outputs = changed[:, axis]
        outputs = outputs[outputs >= margin]  # pixels before the first core are padding, not image
        starts = (outputs - margin) // step * step  # the window of each output's core starts here
        outside = (position < starts) | (position >= starts + window)
        assert not outside.any(), (
            f"input pixel {pixel} changes output {outputs[outside][0].item()}, outside its core's window: "
            f"the halo {geometry.halo} is too small"
        )
        reach = max(reach, (changed[:, axis] + geometry.shrink - position).abs().max().item())
    # the halo is not the receptive-field radius, but not far below it either
    assert geometry.halo <= reach < geometry.halo + step, f"receptive field {reach} px, declared halo {geometry.halo}"


@pytest.mark.parametrize(("arch", "extra"), CONV_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("axis", [0, 1], ids=["rows", "cols"])
def test_shift_by_multiple_shifts_the_logits(tiny, arch, extra, axis):
    model = randomised(tiny(arch, **extra))
    geometry = model.geometry()
    step = geometry.multiple
    x = thin_input(geometry, axis, 2 * geometry.halo + 3 * step)
    dim = 2 + axis
    with torch.no_grad():
        whole = model(x).narrow(dim, step, x.shape[dim] - 2 * geometry.shrink - step)
        shifted = model(x.narrow(dim, step, x.shape[dim] - step))  # one stride cropped: still a valid window
    # a valid net's logits depend on its window only; a padded net's also on the zero padding within the halo
    # (across the axis nothing moved, so the padding there is the same in both)
    margin = 0 if geometry.shrink else geometry.halo
    interior = shifted.shape[dim] - 2 * margin
    assert interior > 1, "the window is too small to leave an interior"
    torch.testing.assert_close(
        shifted.narrow(dim, margin, interior), whole.narrow(dim, margin, interior), rtol=1e-9, atol=1e-9
    )
    # and the comparison can fail: one pixel off, it does
    assert not torch.allclose(shifted.narrow(dim, margin + 1, interior - 1), whole.narrow(dim, margin, interior - 1))


@pytest.mark.parametrize(("arch", "extra"), CONV_CASES, ids=CASE_IDS)
def test_sizes_on_the_geometry_run(tiny, arch, extra):
    model = tiny(arch, **extra).eval()
    geometry = model.geometry()
    smallest = geometry.window_output(1)
    for rows, cols in [(smallest, smallest), (smallest + geometry.multiple, smallest + 3 * geometry.multiple)]:
        x = torch.randn(1, 1, geometry.input_length(rows), geometry.input_length(cols))
        with torch.no_grad():
            assert model(x).shape == (1, 2, rows, cols)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_valid_unet_rejects_sizes_off_the_geometry(tiny, depth):
    model = tiny("unet", depth=depth, base=2, padding="valid").eval()
    geometry = model.geometry()
    good = window_for(geometry, 2 * geometry.multiple)
    smallest = window_for(geometry, 1)
    with torch.no_grad():
        assert model(torch.randn(1, 1, smallest, good)).shape[-2:] == (
            smallest - 2 * geometry.shrink,
            good - 2 * geometry.shrink,
        )
        for bad in (good + 1, good - 2, good + geometry.multiple // 2, smallest - geometry.multiple):
            if bad == good or (bad - 2 * geometry.shrink) % geometry.multiple == geometry.offset and bad >= smallest:
                continue  # depth 2 has offset 0 and a stride of 4: some of these are valid there
            with pytest.raises(ValueError, match="nearest valid"):
                model(torch.randn(1, 1, good, bad))
