"""U-Net's separation term on instance labels: touching nuclei are kept apart by weighting where they meet."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from tileseg.training.augment import separation_weights
from tileseg.training.data import IGNORE_INDEX
from tileseg.training.nuclei import core_and_contour, dsb2018
from tileseg.training.sampler import pixel_weights

W0, SIGMA = 10.0, 3.0


def _touching(labels: np.ndarray) -> np.ndarray:
    """Object pixels with a 4-neighbour in another object."""
    padded = np.pad(labels, 1)
    out = np.zeros(labels.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        other = padded[dy : dy + labels.shape[0], dx : dx + labels.shape[1]]
        out |= (labels > 0) & (other > 0) & (other != labels)
    return out


def test_the_pixels_where_real_nuclei_touch_weigh_the_most(real_nuclei):
    labels = real_nuclei[2][2]  # the dense grey image: many nuclei touch
    classes = core_and_contour(labels)
    classes[:8, :8] = IGNORE_INDEX
    weights = separation_weights(labels, classes, W0, SIGMA)
    touching = _touching(labels)
    assert touching.sum() > 100
    # a pixel one step from another object: d1 + d2 = 1
    np.testing.assert_allclose(weights[touching], W0 * np.exp(-1 / (2 * SIGMA**2)), rtol=1e-5)
    assert weights.max() == weights[touching].max()
    assert (weights[:8, :8] == 0).all()  # ignored pixels weigh nothing
    # an object pixel farther than the reach from every other object weighs nothing
    alone = np.zeros(labels.shape, bool)
    for index in np.unique(labels[labels > 0])[:40]:
        others = (labels > 0) & (labels != index)
        alone |= (labels == index) & (ndimage.distance_transform_edt(~others) > 4.3 * SIGMA * 1.1)
    assert alone.sum() > 50 and (weights[alone] < W0 * 1e-4).all()
    # farther from the other object, less weight: a nucleus's touching pixels outweigh its own core's mean
    assert weights[touching].mean() > 3 * weights[(classes == 1) & (labels > 0)].mean()


def test_training_weights_of_an_instance_data_set_come_from_its_objects(nuclei_dir):
    source = dsb2018(nuclei_dir)
    train = tuple(sorted(source.train, key=lambda p: p.name)[:2])
    source = dataclasses.replace(source, train=train, val=source.val[:1])
    data = source.load()
    said: list[str] = []
    weights = pixel_weights(data, source, W0, SIGMA, said.append)
    assert len(weights) == 2 and "separation weights" in said[0]
    for pair, sample, got in zip(train, data.train, weights):
        np.testing.assert_array_equal(got, separation_weights(source.read_objects(pair.mask), sample.label, W0, SIGMA))
        assert got.shape == sample.label.shape
