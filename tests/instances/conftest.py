"""Real nuclei for the instance tests: DSB 2018 images, their instance labels and the classes a model learns."""

from __future__ import annotations

import numpy as np
import pytest

from tileseg.training.nuclei import core_and_contour

# one grey fluorescence image, one colour brightfield one, a dense grey one (369 nuclei) (names from the data set)
NAMES = (
    "003cee89357d9fe13516167fd67b609a164651b21934585648c740d2c3d86dc1",
    "00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e",
    "0ea221716cf13710214dcd331a61cea48308c3940df1d28cfc7fd817c83714e1",
)


def mirrored_mosaic(array: np.ndarray, reps: tuple[int, int]) -> np.ndarray:
    """``array`` (..., H, W) tiled ``reps`` times, every other copy mirrored, so that objects cut by the image's
    edge meet their mirror images across every seam."""
    rows = []
    for i in range(reps[0]):
        row = [array[..., :: (-1 if i % 2 else 1), :: (-1 if j % 2 else 1)] for j in range(reps[1])]
        rows.append(np.concatenate(row, axis=-1))
    return np.ascontiguousarray(np.concatenate(rows, axis=-2))


@pytest.fixture(scope="session")
def class_mosaic(real_nuclei):
    """A 2x3 mirrored mosaic of the dense image's classes (core, contour) and its image, upside down so that
    its first row (which nuclei touch; its last has none) lies on the horizontal seam."""
    _, image, labels = real_nuclei[2]
    return mirrored_mosaic(core_and_contour(labels)[::-1], (2, 3)), mirrored_mosaic(image[:, ::-1], (2, 3))
