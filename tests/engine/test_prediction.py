"""Batch predictions: each window's labels and probabilities, by its place in the batch."""

from __future__ import annotations

import numpy as np
import pytest

from tileseg.engine.prediction import BatchPrediction, TilePrediction


def test_each_window_gets_its_own_parts():
    labels = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    probs = np.random.default_rng(0).random((2, 3, 4, 4))
    batch = BatchPrediction(labels, probs)
    assert len(batch) == 2
    for i in range(2):
        tile = batch[i]
        assert isinstance(tile, TilePrediction)
        np.testing.assert_array_equal(tile.labels, labels[i])
        np.testing.assert_array_equal(tile.probabilities, probs[i])
    with pytest.raises(IndexError):
        batch[2]


def test_a_part_left_out_is_none_for_every_window():
    only_probs = BatchPrediction(probabilities=np.zeros((3, 2, 5, 5)))
    assert len(only_probs) == 3 and only_probs[2].labels is None and only_probs[2].probabilities.shape == (2, 5, 5)
    only_labels = BatchPrediction(labels=np.zeros((1, 5, 5)))
    assert len(only_labels) == 1 and only_labels[0].probabilities is None


@pytest.mark.parametrize("labels,probs", [(None, None), (np.zeros((2, 4, 4)), np.zeros((3, 2, 4, 4)))])
def test_parts_must_be_present_and_agree(labels, probs):
    with pytest.raises(ValueError, match="labels or probabilities"):
        BatchPrediction(labels, probs)
