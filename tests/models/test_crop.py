"""One centre crop for arrays and tensors: valid U-Net skips, training labels and the loss's heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tileseg.models.crop import centre_crop


def test_centre_of_arrays_and_tensors_alike():
    array = np.arange(2 * 7 * 6).reshape(2, 7, 6)
    crop = centre_crop(array, 3, 2)
    np.testing.assert_array_equal(crop, array[:, 2:5, 2:4])
    assert np.shares_memory(crop, array)
    np.testing.assert_array_equal(centre_crop(torch.from_numpy(array), 3, 2).numpy(), crop)
    np.testing.assert_array_equal(centre_crop(array, 7, 6), array)


def test_an_odd_difference_drops_the_extra_pixel_at_the_end():
    np.testing.assert_array_equal(centre_crop(np.arange(5)[None], 1, 2), [[1, 2]])


def test_a_crop_larger_than_the_array_is_refused():
    with pytest.raises(ValueError, match="3x9"):
        centre_crop(np.zeros((4, 8)), 3, 9)
