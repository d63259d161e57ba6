"""The instance metrics (AP at IoU thresholds, the DSB score) on real nuclei labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tileseg.training.instance_scores import counts, instance_scores


def test_the_truth_scores_one_and_nothing_scores_zero(real_nuclei):
    true = real_nuclei[2][2]
    assert instance_scores([(true, true)]) == {
        "images": 1,
        "true_objects": int(true.max()),
        "predicted_objects": int(true.max()),
        "ap50": 1.0,
        "dsb_score": 1.0,
        "ap50_pooled": 1.0,
    }
    empty = instance_scores([(true, np.zeros_like(true))])
    assert empty["ap50"] == empty["dsb_score"] == 0.0 and empty["predicted_objects"] == 0


def test_merging_touching_nuclei_costs_what_the_definition_says(real_nuclei):
    """Predicting the connected foreground (touching nuclei merged, as a semantic mask gives them) loses every
    nucleus that touches another: counted by hand from the labels."""
    true = real_nuclei[2][2]
    merged, _ = ndimage.label(true > 0, structure=np.ones((3, 3)))
    tally = counts(true, merged, thresholds=(0.5,))[0]
    # a merged blob matches (IoU > 0.5) at most its largest nucleus, and only when that one covers > half of it
    expected_tp = 0
    for blob in range(1, merged.max() + 1):
        inside = true[merged == blob]
        ids, sizes = np.unique(inside, return_counts=True)
        best = sizes.max()
        area_true = np.count_nonzero(true == ids[np.argmax(sizes)])
        expected_tp += best / (area_true + inside.size - best) > 0.5
    assert tally.tolist() == [expected_tp, merged.max() - expected_tp, true.max() - expected_tp]
    assert expected_tp < true.max()


def test_a_shifted_prediction_loses_the_strict_thresholds_first(real_nuclei):
    true = real_nuclei[0][2]
    shifted = np.roll(true, 2, axis=1)
    scores = instance_scores([(true, shifted)])
    assert scores["ap50"] > scores["dsb_score"]
    assert scores["ap50"] == pytest.approx(scores["ap50_pooled"])
