"""Box-aware augmentation: boxes follow the pixels, padding stays padding."""

from __future__ import annotations

import numpy as np
import pytest

from jaxseg.data import augment
from jaxseg.data.box_augment import augment_detection, fit_detection, horizontal_flip, random_scale_crop, resize_example

RED, GREEN = (255, 0, 0), (0, 255, 0)


def make_example(image, boxes, classes, *, max_boxes=4):
    padded = np.zeros((max_boxes, 4), np.float32)
    padded[: len(boxes)] = boxes
    labels = np.full(max_boxes, -1, np.int32)
    labels[: len(classes)] = classes
    return {"image": image, "boxes": padded, "classes": labels, "box_mask": np.arange(max_boxes) < len(boxes)}


def painted(height=60, width=80):
    """A black image with a red box (class 0) and a green box (class 1) painted where the boxes say."""
    boxes = [[10, 12, 30, 40], [50, 5, 75, 25]]  # xyxy: columns 10..29, rows 12..39 are red
    image = np.zeros((height, width, 3), np.uint8)
    for (x0, y0, x1, y1), colour in zip(boxes, (RED, GREEN)):
        image[y0:y1, x0:x1] = colour
    return make_example(image, boxes, [0, 1])


def colour_box(image, channel):
    """The `xyxy` bounding box of the pixels where `channel` dominates (None if there are none)."""
    pixels = image.astype(np.int32)
    inside = (pixels[..., channel] >= 128) & (pixels.sum(-1) - pixels[..., channel] < 128)
    rows, columns = np.nonzero(inside)
    if rows.size == 0:
        return None
    return np.array([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1], np.float32)


def check_layout(example, *, size, max_boxes=4):
    assert example["image"].shape == (*size, 3) and example["image"].dtype == np.uint8
    assert example["image"].flags["C_CONTIGUOUS"]
    assert example["boxes"].shape == (max_boxes, 4) and example["boxes"].dtype == np.float32
    assert example["classes"].shape == (max_boxes,) and example["classes"].dtype == np.int32
    assert example["box_mask"].dtype == bool
    count = int(example["box_mask"].sum())
    assert example["box_mask"][:count].all()  # real boxes first
    np.testing.assert_array_equal(example["boxes"][count:], 0)
    np.testing.assert_array_equal(example["classes"][count:], -1)


def test_resize_scales_boxes_per_axis():
    example = make_example(np.zeros((20, 40, 3), np.uint8), [[4, 2, 10, 6]], [3])
    resized = resize_example(example, (40, 20))
    check_layout(resized, size=(40, 20))
    np.testing.assert_allclose(resized["boxes"][0], [2, 4, 5, 12])
    assert resized["classes"][0] == 3


def test_flip_mirrors_boxes_and_twice_is_identity():
    example = painted()
    flipped = horizontal_flip(example)
    check_layout(flipped, size=(60, 80))
    np.testing.assert_array_equal(flipped["boxes"][:2], [[50, 12, 70, 40], [5, 5, 30, 25]])
    np.testing.assert_array_equal(colour_box(flipped["image"], 0), flipped["boxes"][0])
    twice = horizontal_flip(flipped)
    for key in example:
        np.testing.assert_array_equal(twice[key], example[key])


@pytest.mark.parametrize("seed", range(12))
def test_boxes_follow_the_pixels(seed):
    result = augment_detection(
        painted(), np.random.default_rng(seed), size=(48, 64), scale_range=(0.6, 1.4), jitter=0.0, min_visible=0.3
    )
    check_layout(result, size=(48, 64))
    for box, label in zip(result["boxes"][result["box_mask"]], result["classes"][result["box_mask"]]):
        seen = colour_box(result["image"], channel=label)  # class 0 is red, class 1 green
        assert seen is not None, f"class {label} has a box {box} but no pixels"
        np.testing.assert_allclose(box, seen, atol=1.5)


def test_boxes_follow_the_pixels_through_flips_and_clipping():
    # Over the seeds of the test above both a flip and a box cut by the crop edge occur.
    flips = clipped = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        result = augment_detection(painted(), rng, size=(48, 64), scale_range=(0.6, 1.4), jitter=0.0, min_visible=0.3)
        red = colour_box(result["image"], 0)
        flips += red is not None and red[0] > 64 - red[2]  # red starts left of centre unflipped
        boxes = result["boxes"][result["box_mask"]]
        clipped += bool(((boxes == 0) | (boxes[:, [2, 3, 2, 3]] == [64, 48, 64, 48])).any())
    assert flips and clipped


def test_a_box_keeping_less_than_min_visible_is_dropped():
    # A 20 x 100 image whose columns encode their x, cropped to width 50 at scale 1: the crop's
    # first column tells where it started. Each box is cut along x only.
    image = np.broadcast_to(np.arange(100, dtype=np.uint8)[None, :, None], (20, 100, 3)).copy()
    boxes = [[0, 0, 30, 20], [40, 5, 60, 15], [90, 5, 95, 10]]
    example = make_example(image, boxes, [0, 1, 2])
    outcomes = set()
    for seed in range(40):
        result = random_scale_crop(
            example, np.random.default_rng(seed), size=(20, 50), scale_range=(1, 1), min_visible=0.58
        )
        check_layout(result, size=(20, 50))
        left = int(result["image"][0, 0, 0])
        expected, expected_classes = [], []
        for label, (x0, y0, x1, y1) in enumerate(boxes):
            start, stop = max(x0, left), min(x1, left + 50)
            visible = max(0, stop - start) / (x1 - x0)
            outcomes.add("dropped" if visible < 0.58 else "cut" if visible < 1 else "whole")
            if visible >= 0.58:  # 0.58: no box sits exactly on the threshold
                expected.append([start - left, y0, stop - left, y1])
                expected_classes.append(label)
        count = len(expected)
        assert result["box_mask"].sum() == count
        np.testing.assert_allclose(result["boxes"][:count], np.reshape(expected, (count, 4)))
        np.testing.assert_array_equal(result["classes"][:count], expected_classes)
    assert outcomes == {"dropped", "cut", "whole"}


def test_crop_draws_like_the_segmentation_crop_and_pads_with_zeros():
    example = painted()
    for seed, scale_range in ((3, (0.75, 1.25)), (4, (0.5, 0.5))):
        ours = random_scale_crop(example, np.random.default_rng(seed), size=(48, 64), scale_range=scale_range)
        label = np.zeros(example["image"].shape[:2], np.int32)
        theirs, _ = augment.random_scale_crop(
            example["image"], label, np.random.default_rng(seed), size=(48, 64), scale_range=scale_range
        )
        np.testing.assert_array_equal(ours["image"], theirs)
    # At scale 0.5 the 30 x 40 image is padded to 48 x 64 at the bottom and right.
    np.testing.assert_array_equal(ours["image"][30:], 0)
    np.testing.assert_array_equal(ours["image"][:, 40:], 0)
    np.testing.assert_allclose(ours["boxes"][:2], np.array(example["boxes"][:2]) / 2)


def test_augmentation_is_deterministic_per_seed_and_jitter_touches_colour_only():
    example = painted()
    first = augment_detection(example, np.random.default_rng(7), size=(48, 64))
    again = augment_detection(example, np.random.default_rng(7), size=(48, 64))
    other = augment_detection(example, np.random.default_rng(8), size=(48, 64))
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["image"], other["image"])
    plain = augment_detection(example, np.random.default_rng(7), size=(48, 64), jitter=0.0)
    np.testing.assert_array_equal(plain["boxes"], first["boxes"])  # jitter draws come last
    assert not np.array_equal(plain["image"], first["image"])


def test_fit_resizes_only_when_needed_and_keeps_padding():
    example = painted()
    same = fit_detection(example, size=(60, 80))
    check_layout(same, size=(60, 80))
    for key in example:
        np.testing.assert_array_equal(same[key], example[key])
    half = fit_detection(example, size=(30, 40))
    check_layout(half, size=(30, 40))
    np.testing.assert_allclose(half["boxes"][:2], np.array(example["boxes"][:2]) / 2)
    np.testing.assert_allclose(colour_box(half["image"], 0), half["boxes"][0], atol=1)
