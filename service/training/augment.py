"""Sampling and augmentation: random crops with mirrored borders, flips, 90° turns, intensity and colour,
elastic deformation, and U-Net's border weight map.

A training crop has two sizes. The *output* crop (``O`` pixels a side) is what the labels cover; the
*input* crop is ``O + 2 * shrink``, centred on it, because a valid-convolution network loses ``shrink``
pixels on every side. Where the input crop reaches past the image it is mirrored (reflect, the edge pixel
not repeated), as the engine mirrors at the image border, so labels cover the whole output even at the
image edge.

Every transform here acts on an image, its labels and (optionally) a weight map at once, all cut over the
same *input* window, so they stay aligned; the labels are cut to the output window at the very end. The
randomness comes from a ``numpy.random.Generator`` that the caller seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from tileseg.models.crop import centre_crop
from tileseg.models.spec import reflect_indices
from tileseg.training.data import IGNORE_INDEX


def mirror_window(array: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """The ``height x width`` window at ``(top, left)`` of an array (..., H, W), mirrored where it leaves the array."""
    h, w = array.shape[-2:]
    if top >= 0 and left >= 0 and top + height <= h and left + width <= w:
        return array[..., top : top + height, left : left + width].copy()
    rows = reflect_indices(top, height, h)
    cols = reflect_indices(left, width, w)
    return array[..., rows[:, None], cols[None, :]]


@dataclass(frozen=True)
class Augment:
    """Which random transforms a crop gets."""

    flips: bool = True  # random flips and 90° turns: the eight symmetries of the square
    elastic: bool = False  # U-Net's elastic deformation: a coarse 3x3 grid of random displacements
    elastic_sigma: float = 10.0  # std of the grid displacements, pixels
    elastic_points: int = 3
    colour: bool = False  # random inversion, grey, band order, gamma, gain and offset (see jitter_colour)

    def names(self) -> list[str]:
        """The augmentations as they are listed in the model card."""
        out = ["random crop (mirrored borders)"]
        if self.flips:
            out.append("flips and 90-degree rotations")
        if self.elastic:
            grid = f"{self.elastic_points}x{self.elastic_points}"
            out.append(f"elastic deformation ({grid} grid, sigma {self.elastic_sigma:g} px)")
        if self.colour:
            out.append(
                f"intensity and colour: inverted (p={INVERT_P:g}), grey (p={GREY_P:g}), bands shuffled "
                f"(p={SHUFFLE_P:g}), gamma {GAMMA[0]:g}-{GAMMA[1]:g}, gain {GAIN[0]:g}-{GAIN[1]:g} and offset "
                f"+-{OFFSET:g} per band (grey kept grey)"
            )
        return out


INVERT_P, GREY_P, SHUFFLE_P = 0.3, 0.2, 0.5
GAMMA = (0.7, 1.5)
GAIN = (0.75, 1.25)
OFFSET = 0.1  # of the full scale


def jitter_colour(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A random change of intensity and colour of an image (bands, H, W) on the 0..255 scale.

    So that a network learns what an object looks like rather than one stain or one microscope: bright
    objects on dark ground and dark on bright (inversion), colour and grey, any band order, and the
    contrast and brightness of another instrument. Labels do not change. Returns float32 on the 0..255
    scale (what :func:`~tileseg.training.data.normalize` takes).
    """
    x = image.astype(np.float32) * np.float32(1 / 255)
    bands = x.shape[0]
    grey = bands > 1 and rng.random() < GREY_P
    if grey:
        x[:] = x.mean(axis=0, keepdims=True)
    if bands > 1 and rng.random() < SHUFFLE_P:
        x = x[rng.permutation(bands)]
    if rng.random() < INVERT_P:
        x = 1.0 - x
    gamma = math.exp(rng.uniform(math.log(GAMMA[0]), math.log(GAMMA[1])))
    np.power(x, np.float32(gamma), out=x)
    tinted = 1 if grey else bands  # a grey image stays grey
    gain = np.broadcast_to(np.asarray(rng.uniform(GAIN[0], GAIN[1], size=tinted), dtype=np.float32), (bands,))
    offset = np.broadcast_to(np.asarray(rng.uniform(-OFFSET, OFFSET, size=tinted), dtype=np.float32), (bands,))
    x = x * gain[:, None, None] + offset[:, None, None]
    np.clip(x, 0.0, 1.0, out=x)
    x *= np.float32(255)
    return x


def random_window(rng: np.random.Generator, height: int, width: int, output: int) -> tuple[int, int]:
    """Top-left of a random ``output x output`` label window on an image of ``height x width``.

    Inside the image when it is large enough; otherwise the window overhangs at random and the overhang is
    mirrored.
    """
    top = int(rng.integers(min(0, height - output), max(0, height - output) + 1))
    left = int(rng.integers(min(0, width - output), max(0, width - output) + 1))
    return top, left


def dihedral(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Turn the last two axes by ``k`` quarter turns, after a left-right flip if ``flip``."""
    if flip:
        array = array[..., :, ::-1]
    return np.ascontiguousarray(np.rot90(array, k, axes=(-2, -1)))


def elastic_field(rng: np.random.Generator, size: int, sigma: float, points: int) -> torch.Tensor:
    """A smooth random displacement field as a ``grid_sample`` grid (1, size, size, 2).

    Displacements are drawn on a coarse ``points x points`` grid with standard deviation ``sigma`` pixels
    and interpolated bicubically to every pixel, as in the U-Net paper.
    """
    coarse = torch.from_numpy(rng.normal(0.0, sigma, size=(1, 2, points, points)).astype(np.float32))
    fine = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    # grid_sample takes coordinates in [-1, 1] with align_corners=True: one pixel is 2 / (size - 1)
    fine = fine * (2.0 / max(size - 1, 1))
    axis = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    base = torch.stack((xx, yy), dim=-1)[None]
    return base + fine.permute(0, 2, 3, 1)


def warp(array: np.ndarray, grid: torch.Tensor, mode: str) -> np.ndarray:
    """Resample an array (C, H, W) along ``grid`` (float32 out)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    # The window already holds mirrored context, so the displacement rarely reaches outside; where it does,
    # "border" repeats the edge, which is closer to the truth than zeros.
    return F.grid_sample(tensor, grid, mode=mode, padding_mode="border", align_corners=True)[0].numpy()


def sample_crop(
    rng: np.random.Generator,
    image: np.ndarray,
    label: np.ndarray,
    output: int,
    shrink: int,
    augment: Augment,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One random training crop.

    Args:
        rng: the source of randomness.
        image: (bands, H, W) uint8; the crop comes back as float32 (same 0..255 scale) when deformed.
        label: (H, W) uint8 channels, :data:`IGNORE_INDEX` where unknown.
        output: the output crop length ``O``; the image crop is ``O + 2 * shrink``.
        shrink: pixels the network loses on each side.
        augment: which transforms to apply.
        weights: optional (H, W) float32 per-pixel loss weights, transformed with the labels.

    Returns:
        ``(image crop (bands, O + 2s, O + 2s), label crop (O, O), weight crop (O, O) or None)``.
    """
    h, w = label.shape
    top, left = random_window(rng, h, w, output)
    size = output + 2 * shrink
    # Labels and weights are cut over the input window too, so that a deformation moves them with the image.
    img = mirror_window(image, top - shrink, left - shrink, size, size)
    lab = mirror_window(label, top - shrink, left - shrink, size, size)
    wts = mirror_window(weights, top - shrink, left - shrink, size, size) if weights is not None else None
    if augment.flips:
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        img, lab = dihedral(img, k, flip), dihedral(lab, k, flip)
        wts = dihedral(wts, k, flip) if wts is not None else None
    if augment.colour:
        img = jitter_colour(rng, img)
    if augment.elastic:
        grid = elastic_field(rng, size, augment.elastic_sigma, augment.elastic_points)
        img = warp(img, grid, "bilinear")  # float32 holding the 0..255 values: normalize() takes it
        lab = warp(lab[None], grid, "nearest")[0].round().astype(np.uint8)
        wts = warp(wts[None], grid, "bilinear")[0] if wts is not None else None
    lab = np.ascontiguousarray(centre_crop(lab, output, output))
    wts = np.ascontiguousarray(centre_crop(wts, output, output)) if wts is not None else None
    return img, lab, wts


# --- U-Net's border weight map -------------------------------------------------------------------------


def two_nearest_distances(objects: np.ndarray, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances from every pixel to the nearest and the second nearest distinct object, up to ``reach``.

    ``objects`` holds object ids (0 = background). The distances are chamfer distances (steps of 1 and
    sqrt 2 between 8-neighbours, within 8 % of Euclidean), grown one ring per round for ``reach`` rounds;
    farther than that is ``inf``. Each pixel keeps its two best (distance, id) pairs with distinct ids.
    """
    h, w = objects.shape
    inf = np.float32(np.inf)
    d1 = np.where(objects > 0, np.float32(0), inf).astype(np.float32)
    i1 = objects.astype(np.int64)
    d2 = np.full((h, w), inf, dtype=np.float32)
    i2 = np.zeros((h, w), dtype=np.int64)
    steps = [(dy, dx, np.float32(math.hypot(dy, dx))) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    for _ in range(reach):
        n1, m1, n2, m2 = d1.copy(), i1.copy(), d2.copy(), i2.copy()
        for dy, dx, cost in steps:
            for cd, ci in ((d1, i1), (d2, i2)):
                cand_d = np.full((h, w), inf, dtype=np.float32)
                cand_i = np.zeros((h, w), dtype=np.int64)
                dst = (slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0)))
                src = (slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0)))
                cand_d[dst] = cd[src] + cost
                cand_i[dst] = ci[src]
                _merge(n1, m1, n2, m2, cand_d, cand_i)
        if np.array_equal(n1, d1) and np.array_equal(n2, d2):
            break
        d1, i1, d2, i2 = n1, m1, n2, m2
    return d1, d2


def _merge(d1, i1, d2, i2, cd, ci) -> None:
    """Fold candidates (cd, ci) into the two best distinct-id pairs (d1, i1), (d2, i2), in place."""
    valid = ci > 0
    same1 = valid & (ci == i1)
    # The same object as the best: only a shorter path counts.
    np.copyto(d1, cd, where=same1 & (cd < d1))
    other = valid & ~same1
    better1 = other & (cd < d1)
    # A new best pushes the old best down to second place.
    np.copyto(d2, d1, where=better1)
    np.copyto(i2, i1, where=better1)
    np.copyto(d1, cd, where=better1)
    np.copyto(i1, ci, where=better1)
    better2 = other & ~better1 & (cd < d2)
    np.copyto(d2, cd, where=better2)
    np.copyto(i2, ci, where=better2)


def border_weights(label: np.ndarray, instance_channel: int, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """U-Net's separation weights ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` on the pixels between objects.

    Objects are the 4-connected regions of ``instance_channel`` (ISBI's cells); ``d1``, ``d2`` are the
    distances to the nearest and second nearest object. The term is added on the background (membrane)
    pixels only and is 0 on objects and ignored pixels; the class weights come on top of it.

    Returns:
        (H, W) float32.
    """
    objects, _ = ndimage.label(label == instance_channel)  # scipy's default structure: 4-connected
    weights = separation_weights(objects, label, w0, sigma)
    weights[label == instance_channel] = 0.0
    return weights


def separation_weights(objects: np.ndarray, label: np.ndarray, w0: float = 10.0, sigma: float = 3.0) -> np.ndarray:
    """U-Net's separation term for touching objects: ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` where the
    objects are the ids of an instance label image (0 = background), so objects that touch stay distinct.

    On an object's own pixels ``d1`` is 0 and ``d2`` the distance to the nearest *other* object: the pixels
    where two nuclei meet (their contours, which keep them apart once decoded) weigh the most, as do the
    background pixels in a narrow gap. Ignored pixels of ``label`` weigh 0.

    Returns:
        (H, W) float32.
    """
    # exp(-x^2 / 2 sigma^2) falls below 1e-4 of w0 past x = 4.3 sigma, so farther objects need not be found.
    reach = int(math.ceil(4.3 * sigma))
    d1, d2 = two_nearest_distances(objects, reach)
    total = d1 + d2
    weights = np.where(np.isfinite(total), w0 * np.exp(-(total**2) / (2 * sigma**2)), 0.0)
    weights[label == IGNORE_INDEX] = 0.0
    return weights.astype(np.float32)
