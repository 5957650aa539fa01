"""FCOS target assignment and decoding on hand-made cases."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.ops import fcos


def test_locations_are_cell_centres_row_major():
    points = np.asarray(fcos.locations(2, 3, 4))
    np.testing.assert_array_equal(points, [[2, 2], [6, 2], [10, 2], [2, 6], [6, 6], [10, 6]])


def test_distances_round_trip_and_centerness():
    points = jnp.asarray([[5.0, 5.0], [2.0, 8.0]])
    boxes = jnp.asarray([[1.0, 3.0, 9.0, 7.0], [0.0, 0.0, 4.0, 16.0]])
    distances = fcos.boxes_to_distances(points, boxes)
    np.testing.assert_allclose(distances, [[4, 2, 4, 2], [2, 8, 2, 8]])
    np.testing.assert_allclose(fcos.distances_to_boxes(points, distances), boxes)
    np.testing.assert_allclose(fcos.centerness(distances), [1.0, 1.0])
    # l=1, r=3, t=2, b=2: sqrt(1/3 * 1)
    np.testing.assert_allclose(fcos.centerness(jnp.asarray([1.0, 2.0, 3.0, 2.0])), np.sqrt(1 / 3), rtol=1e-6)


def assign(boxes, classes, mask, *, size=8, stride=4, radius=1.5, num_classes=3):
    points = fcos.locations(size, size, stride)
    return points, fcos.assign_targets(
        points,
        jnp.asarray(boxes, jnp.float32),
        jnp.asarray(classes),
        jnp.asarray(mask),
        num_classes=num_classes,
        stride=stride,
        center_radius=radius,
    )


def test_positive_locations_are_inside_the_box_and_near_its_centre():
    # box centre (16, 16); radius 1.5 * 4 = 6: cell centres 10 < x < 22 -> x in {14, 18} (and y alike).
    points, targets = assign([[4.0, 4.0, 28.0, 28.0], [0, 0, 0, 0]], [2, -1], [True, False])
    positive = np.asarray(targets.positive)
    expected = [(x, y) for x in (14, 18) for y in (14, 18)]
    np.testing.assert_array_equal(sorted(map(tuple, np.asarray(points)[positive])), sorted(expected))
    assert positive.sum() == 4
    np.testing.assert_array_equal(np.asarray(targets.classes)[positive], np.tile([0, 0, 1], (4, 1)))
    assert np.all(np.asarray(targets.classes)[~positive] == 0)
    np.testing.assert_allclose(np.asarray(targets.boxes)[positive], np.tile([4, 4, 28, 28], (4, 1)))
    # location (14, 14): l=10, t=10, r=14, b=14
    index = int(np.flatnonzero((np.asarray(points) == [14, 14]).all(1))[0])
    np.testing.assert_allclose(targets.distances[index], [10, 10, 14, 14])
    np.testing.assert_allclose(targets.centerness[index], 10 / 14, rtol=1e-6)


def test_small_box_keeps_the_centre_cell_and_overlaps_go_to_the_smaller_box():
    big, small = [0.0, 0.0, 32.0, 32.0], [12.0, 12.0, 21.0, 21.0]
    points, targets = assign([big, small], [0, 1], [True, True])
    positive = np.asarray(targets.positive)
    chosen_small = positive & (np.asarray(targets.classes)[:, 1] == 1)
    # the small box contains the cell centres 14 and 18 in each direction: all four go to it
    assert chosen_small.sum() == 4
    np.testing.assert_allclose(np.asarray(targets.boxes)[chosen_small], np.tile(small, (4, 1)))
    # the big box keeps the rest of its centre region (x, y in {10, 14, 18, 22} within 16 +- 6 -> 14, 18 only)
    assert (positive & (np.asarray(targets.classes)[:, 0] == 1)).sum() == 0


def test_padding_slots_and_empty_images_have_no_positives():
    _, targets = assign([[4.0, 4.0, 28.0, 28.0]], [1], [False])
    assert not np.any(targets.positive)
    assert np.all(np.asarray(targets.distances) == 0) and np.all(np.asarray(targets.centerness) == 0)


def test_assignment_vmaps_and_jits():
    points = fcos.locations(8, 8, 4)
    boxes = jnp.asarray([[[4.0, 4.0, 28.0, 28.0]], [[0.0, 0.0, 8.0, 8.0]]])
    run = jax.jit(jax.vmap(functools.partial(fcos.assign_targets, points, num_classes=2, stride=4)))
    targets = run(boxes, jnp.asarray([[0], [1]]), jnp.asarray([[True], [True]]))
    assert targets.classes.shape == (2, 64, 2)
    assert int(targets.positive[1].sum()) == 4  # the 8x8 box holds the centres (2, 2), (6, 2), (2, 6), (6, 6)


def test_detect_decodes_the_best_location_and_suppresses_duplicates():
    points = fcos.locations(4, 4, 8)  # centres 4, 12, 20, 28
    n = 16
    class_logits = jnp.full((n, 2), -10.0)
    distances = jnp.ones((n, 4)) * 2.0
    centerness = jnp.zeros((n,))
    # locations 5 (12, 12) and 6 (20, 12) both predict class 1 around (8..20, 6..18): NMS keeps one.
    class_logits = class_logits.at[5, 1].set(4.0).at[6, 1].set(3.0)
    distances = distances.at[5].set(jnp.asarray([4.0, 6.0, 8.0, 6.0])).at[6].set(jnp.asarray([12.0, 6.0, 0.0, 6.0]))
    # location 15 (28, 28) predicts class 0 hanging over the image border: clipped to 32.
    class_logits = class_logits.at[15, 0].set(2.0)
    distances = distances.at[15].set(jnp.asarray([4.0, 4.0, 10.0, 10.0]))
    detections = fcos.detect(
        class_logits, distances, centerness, points, image_size=(32, 32), score_threshold=0.3, max_detections=5
    )
    mask = np.asarray(detections.mask)
    assert mask.sum() == 2
    np.testing.assert_allclose(detections.boxes[0], [8, 6, 20, 18])
    assert int(detections.classes[0]) == 1
    np.testing.assert_allclose(detections.scores[0], np.sqrt(jax.nn.sigmoid(4.0) * 0.5), rtol=1e-6)
    np.testing.assert_allclose(detections.boxes[1], [24, 24, 32, 32])
    assert int(detections.classes[1]) == 0
    assert np.all(np.asarray(detections.classes)[~mask] == -1)
    assert np.all(np.asarray(detections.scores)[~mask] == 0)


@pytest.mark.parametrize("radius", [1.0, 2.5])
def test_every_shape_box_gets_a_positive_location(radius):
    from jaxseg.data.shapes import make_detection_sample

    points = fcos.locations(16, 16, 4)
    for index in range(20):
        sample = make_detection_sample(0, "train", index, max_boxes=6)
        targets = fcos.assign_targets(
            points,
            sample["boxes"],
            sample["classes"],
            sample["box_mask"],
            num_classes=4,
            stride=4,
            center_radius=radius,
        )
        assigned = {tuple(b) for b in np.asarray(targets.boxes)[np.asarray(targets.positive)]}
        for box in sample["boxes"][sample["box_mask"]]:
            assert tuple(box) in assigned, (index, box)
