"""Confusion matrix and scores against direct counting."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxseg.metrics import confusion_matrix, scores


def test_confusion_matrix_counts_pairs_and_skips_ignored():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (3, 5, 6))
    labels[rng.random(labels.shape) < 0.2] = 255
    predictions = rng.integers(0, 4, labels.shape)
    mask = rng.random(labels.shape) > 0.1
    expected = np.zeros((4, 4), np.int64)
    for t, p, m in zip(labels.ravel(), predictions.ravel(), mask.ravel()):
        if t != 255 and m:
            expected[t, p] += 1
    got = jax.jit(lambda p, t, m: confusion_matrix(p, t, 4, ignore_index=255, mask=m))(predictions, labels, mask)
    np.testing.assert_array_equal(got, expected)


def test_out_of_range_labels_are_not_counted():
    got = confusion_matrix(np.array([0, 1, 1]), np.array([0, 7, -1]), 2)
    np.testing.assert_array_equal(got, [[1, 0], [0, 0]])


def test_scores_on_a_hand_made_matrix():
    confusion = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])  # class 2 never seen
    result = scores(confusion)
    iou0, iou1 = 8 / (10 + 9 - 8), 3 / (4 + 5 - 3)
    assert result["miou"] == pytest.approx((iou0 + iou1) / 2)
    assert np.isnan(result["iou"][2])
    assert result["dice"][0] == pytest.approx(2 * 8 / (10 + 9))
    assert result["pixel_accuracy"] == pytest.approx(11 / 14)
    assert result["mean_accuracy"] == pytest.approx((8 / 10 + 3 / 4) / 2)


def test_scores_of_an_empty_matrix_are_zero():
    result = scores(np.zeros((3, 3), np.int64))
    assert result["miou"] == 0.0 and result["pixel_accuracy"] == 0.0
