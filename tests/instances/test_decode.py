"""The streaming instance decoder against the whole image: real DSB 2018 nuclei, their classes (core, contour)
as a model learns them, in mirrored mosaics so that nuclei cross every seam."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from rasterio.features import rasterize
from scipy import ndimage
from skimage.measure import regionprops

from tests.instances.conftest import mirrored_mosaic
from tileseg.engine.instances.decode import InstanceDecoder, growth_offsets
from tileseg.engine.instances.measure import measure
from tileseg.models.spec import InstanceSpec
from tileseg.training.nuclei import CONTOUR, CORE, NUCLEI_INSTANCES, core_and_contour


def decode(classes, heights, spec=NUCLEI_INSTANCES, image=None, probability=None, outlines=False):
    """Decode ``classes`` in strips of the given heights (cycled); the labels and each object's measurements."""
    bands = 0 if image is None else image.shape[0]
    decoder = InstanceDecoder(classes.shape[1], spec, bands)
    labels = np.full(classes.shape, 99_999_999, np.uint32)  # every row must be written once
    found = {}

    def take(decoded):
        labels[decoded.y : decoded.y + len(decoded.rows)] = decoded.rows
        measured = measure(decoded.objects, outlines)
        for k, object_id in enumerate(measured["id"]):
            assert int(object_id) not in found
            found[int(object_id)] = {name: values[k] for name, values in measured.items()}

    y, k = 0, 0
    while y < classes.shape[0]:
        h = min(heights[k % len(heights)], classes.shape[0] - y)
        rows = slice(y, y + h)
        take(
            decoder.add(
                y,
                classes[rows],
                None if probability is None else probability[rows],
                None if image is None else image[:, rows],
            )
        )
        y, k = y + h, k + 1
    take(decoder.finish())
    return labels, found


def reference(classes, spec):
    """The decoding's definition, literally, over the whole image (slow: small inputs only)."""
    cores = classes == spec.seed
    if spec.erode:  # a pixel stays when every pixel within erode 4-steps is a core; outside the image counts
        padded = np.pad(cores, spec.erode, constant_values=True)
        kept = np.ones(cores.shape, bool)
        for dy in range(-spec.erode, spec.erode + 1):
            for dx in range(-spec.erode, spec.erode + 1):
                if abs(dy) + abs(dx) <= spec.erode:
                    kept &= padded[spec.erode + dy : spec.erode + dy + cores.shape[0], spec.erode + dx :][
                        :, : cores.shape[1]
                    ]
        cores = kept
    seeds, _ = ndimage.label(cores, structure=np.ones((3, 3)))
    height, width = classes.shape
    grown = np.zeros(classes.shape, np.int64)
    for y, x in zip(*np.nonzero(np.isin(classes, spec.grow))):
        for dy, dx in growth_offsets(spec.distance):
            if 0 <= y + dy < height and 0 <= x + dx < width and seeds[y + dy, x + dx]:
                grown[y, x] = seeds[y + dy, x + dx]
                break
    areas = np.bincount(grown.ravel())
    grown[areas[grown] < spec.min_area] = 0
    return grown


def same_partition(a, b) -> bool:
    """Whether two label images split the pixels into the same objects (ids aside)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_growth_looks_nearest_first_then_in_row_order():
    offsets = growth_offsets(2)
    assert offsets[0] == (0, 0)
    assert offsets[1:5] == [(-1, 0), (0, -1), (0, 1), (1, 0)]
    assert len(offsets) == 13 and (2, 0) in offsets and (2, 1) not in offsets


ERODING = InstanceSpec(seed=CORE, grow=(CORE, CONTOUR), distance=3, min_area=8, erode=1)


@pytest.mark.parametrize("erode", [0, 1, 2])
def test_the_whole_image_decoding_is_the_definition(real_nuclei, erode):
    for _, _, instances in real_nuclei[:2]:
        classes = core_and_contour(instances)
        spec = InstanceSpec(seed=CORE, grow=(CORE, CONTOUR), distance=2 + erode, min_area=8, erode=erode)
        labels, _ = decode(classes, [classes.shape[0]], spec)
        assert labels.max() > 10
        assert same_partition(labels.astype(np.int64), reference(classes, spec))


def test_the_erosion_parts_cores_joined_by_a_bridge(real_nuclei):
    classes = core_and_contour(real_nuclei[0][2])
    plain_spec = dataclasses.replace(ERODING, erode=0)
    plain, _ = decode(classes, [classes.shape[0]], plain_spec)
    # the two objects whose cores come nearest, joined by a one-pixel line of core
    biggest = np.bincount(plain.ravel())[1:].argmax() + 1
    cores = classes == CORE
    distance, (iy, ix) = ndimage.distance_transform_edt(~(cores & (plain != biggest)), return_indices=True)
    mine = np.flatnonzero((cores & (plain == biggest)).ravel())
    start = np.unravel_index(mine[np.argmin(distance.ravel()[mine])], classes.shape)
    end = (iy[start], ix[start])
    other = plain[end]
    assert other not in (0, biggest)
    bridged = classes.copy()
    y, x = start
    while (y, x) != end:  # 4-connected steps
        y, x = (y + np.sign(end[0] - y), x) if y != end[0] else (y, x + np.sign(end[1] - x))
        bridged[y, x] = CORE
    joined, _ = decode(bridged, [bridged.shape[0]], plain_spec)
    assert joined[start] == joined[end]  # one object without the erosion
    parted, _ = decode(bridged, [5], ERODING)
    assert parted[start] != parted[end] and parted[start] > 0 and parted[end] > 0
    assert parted.max() >= plain.max() - 2  # no nucleus lost to the erosion but the smallest


@pytest.mark.parametrize(
    "heights, spec",
    [([1], NUCLEI_INSTANCES), ([2], NUCLEI_INSTANCES), ([3, 1, 7], NUCLEI_INSTANCES), ([16], NUCLEI_INSTANCES)]
    + [([64], NUCLEI_INSTANCES), ([5, 64, 1, 13], NUCLEI_INSTANCES)]
    + [([1], ERODING), ([2, 1, 3], ERODING), ([64], ERODING), ([1, 2], dataclasses.replace(ERODING, erode=2))],
)
def test_strips_of_any_height_decode_the_whole_images_objects_with_its_ids(class_mosaic, heights, spec):
    classes, _ = class_mosaic
    whole, whole_objects = decode(classes, [classes.shape[0]], spec)
    striped, striped_objects = decode(classes, heights, spec)
    assert np.array_equal(striped, whole)  # the very ids, not only the partition
    assert whole.max() == len(whole_objects) > 1000
    assert sorted(whole_objects) == list(range(1, whole.max() + 1))  # 1..N, each once
    assert all(np.isclose(striped_objects[i]["row"], o["row"]) for i, o in whole_objects.items())


def test_objects_cross_the_seams_of_the_mosaic_whole(class_mosaic, real_nuclei):
    classes, _ = class_mosaic
    labels, _ = decode(classes, [7])
    height, width = real_nuclei[2][2].shape
    crossing = set(np.unique(labels[height - 1])) & set(np.unique(labels[height])) - {0}
    assert len(crossing) > 5  # nuclei cut by the image's edge meet their mirror images: one object each
    for seam in (width, 2 * width):
        assert len(set(np.unique(labels[:, seam - 1])) & set(np.unique(labels[:, seam])) - {0}) > 5


def test_decoding_the_true_classes_gives_back_the_true_nuclei(real_nuclei):
    """The classes a model learns carry the objects: decoded, they match the labels they came from."""
    for _, _, instances in real_nuclei:
        labels, _ = decode(core_and_contour(instances), [32])
        matched = 0
        for region in regionprops(instances):
            mine = labels[region.slice][region.image]
            ids, counts = np.unique(mine[mine > 0], return_counts=True)
            if len(ids):
                best = ids[np.argmax(counts)]
                union = np.count_nonzero((labels == best) | (instances == region.label))
                matched += counts.max() / union > 0.5
        assert matched >= 0.97 * instances.max()


def test_measurements_equal_regionprops_and_outlines_burn_back_to_the_labels(class_mosaic):
    classes, image = class_mosaic
    probability = np.linspace(0, 1, classes.size, dtype=np.float32).reshape(classes.shape)
    labels, found = decode(classes, [13, 40], image=image, probability=probability, outlines=True)
    props = regionprops(labels.astype(np.int64), intensity_image=np.moveaxis(image, 0, -1))
    assert len(props) == len(found)
    for region in props:
        mine = found[region.label]
        assert mine["pixels"] == region.area
        assert mine["row"] == pytest.approx(region.centroid[0], abs=1e-9)
        assert mine["col"] == pytest.approx(region.centroid[1], abs=1e-9)
        assert mine["perimeter_px"] == pytest.approx(region.perimeter, abs=1e-9)
        for band in range(3):
            assert mine[f"band_{band + 1}"] == pytest.approx(region.intensity_mean[band], rel=1e-6)
        assert mine["probability"] == pytest.approx(probability[labels == region.label].mean(), rel=1e-5)
    burnt = rasterize(((o["outline"], i) for i, o in found.items()), out_shape=labels.shape, dtype="uint32")
    assert np.array_equal(burnt, labels)


def test_small_objects_are_dropped_and_the_ids_stay_dense(real_nuclei):
    classes = core_and_contour(real_nuclei[1][2])
    loose = InstanceSpec(seed=CORE, grow=(CORE, CONTOUR), distance=2, min_area=1)
    strict = InstanceSpec(seed=CORE, grow=(CORE, CONTOUR), distance=2, min_area=60)
    all_of_them, _ = decode(classes, [9], loose)
    big, _ = decode(classes, [9], strict)
    sizes = np.bincount(all_of_them.ravel().astype(np.int64))
    assert big.max() == np.count_nonzero(sizes[1:] >= 60) < all_of_them.max()
    assert set(np.unique(big)) == set(range(big.max() + 1))
    kept = np.where(sizes[all_of_them] >= 60, all_of_them, 0) * (all_of_them > 0)
    assert same_partition(big.astype(np.int64), kept.astype(np.int64))


def test_rows_must_come_in_order(real_nuclei):
    classes = core_and_contour(real_nuclei[0][2])
    decoder = InstanceDecoder(classes.shape[1], NUCLEI_INSTANCES)
    decoder.add(0, classes[:10])
    with pytest.raises(ValueError, match="in order"):
        decoder.add(20, classes[20:30])


def test_a_mosaic_of_unequal_images_decodes_the_same_in_strips(real_nuclei):
    """Grey and colour images side by side (different sizes padded with background)."""
    parts = [core_and_contour(instances) for _, _, instances in real_nuclei[:2]]
    height = max(p.shape[0] for p in parts)
    row = np.concatenate([np.pad(p, ((0, height - p.shape[0]), (0, 0))) for p in parts], axis=1)
    classes = mirrored_mosaic(row, (3, 1))
    whole, _ = decode(classes, [classes.shape[0]])
    assert np.array_equal(decode(classes, [1])[0], whole)
