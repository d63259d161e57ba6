"""Centre crops: the one rule by which a valid-convolution network's smaller output lines up with its input.

A network that loses ``shrink`` pixels a side maps input pixel ``j + shrink`` to output pixel ``j``, so the
labels, weights and skip features that meet a smaller map are cut to its centre. Where the two sizes differ
by an odd number the extra row (column) is dropped at the bottom (right), as the U-Net paper's crops do.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def centre_crop(array: Array, height: int, width: int) -> Array:
    """The centre ``height x width`` of the last two axes of a numpy array or a torch tensor, as a view.

    Args:
        array: ``(..., H, W)``.
        height, width: the size wanted, at most ``H`` and ``W``.

    Returns:
        ``(..., height, width)``, sharing memory with ``array``.

    Raises:
        ValueError: the size wanted is larger than the array.
    """
    rows, cols = array.shape[-2], array.shape[-1]
    if height > rows or width > cols:
        raise ValueError(f"cannot cut a {height}x{width} centre out of {rows}x{cols}")
    top = (rows - height) // 2
    left = (cols - width) // 2
    return array[..., top : top + height, left : left + width]
