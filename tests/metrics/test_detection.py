"""COCO detection metrics against APs derived by hand and an independent NumPy AP."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxseg.metrics.detection import CocoEvaluator, coco_map

CLASSES = ("cat", "dog")


def padded(images, *, rows=8):
    """Per-image lists -> the padded batch arrays `CocoEvaluator.add` takes.

    `images` is a list of `(ground_truth, detections)`: `ground_truth` a list of
    `(box, class)`, `detections` a list of `(box, score, class)`; boxes `xyxy`.
    """
    batch = len(images)
    gt_boxes, gt_classes = np.zeros((batch, rows, 4)), np.full((batch, rows), -1)
    gt_mask = np.zeros((batch, rows), bool)
    det_boxes, det_scores = np.zeros((batch, rows, 4)), np.zeros((batch, rows))
    det_classes, det_mask = np.full((batch, rows), -1), np.zeros((batch, rows), bool)
    for b, (truth, found) in enumerate(images):
        for i, (box, label) in enumerate(truth):
            gt_boxes[b, i], gt_classes[b, i], gt_mask[b, i] = box, label, True
        for i, (box, score, label) in enumerate(found):
            det_boxes[b, i], det_scores[b, i], det_classes[b, i], det_mask[b, i] = box, score, label, True
    return gt_boxes, gt_classes, gt_mask, det_boxes, det_scores, det_classes, det_mask


def evaluate(images, classes=CLASSES, **kwargs):
    evaluator = CocoEvaluator(classes)
    evaluator.add(*padded(images), **kwargs)
    return evaluator.result()


def test_perfect_detections_score_one_and_undefined_areas_are_nan():
    images = [
        ([([0, 0, 10, 10], 0), ([20, 20, 30, 40], 1)], [([0, 0, 10, 10], 0.9, 0), ([20, 20, 30, 40], 0.8, 1)]),
        ([([5, 5, 25, 15], 0)], [([5, 5, 25, 15], 0.7, 0)]),
    ]
    result = evaluate(images)
    # pycocotools divides by tp + fp + machine epsilon: "1" is 1 - 2e-16.
    for key in ("map", "map50", "map75", "ap/cat", "ap/dog", "map_small"):  # every box is under 32**2 pixels
        assert result[key] == pytest.approx(1.0)
    assert math.isnan(result["map_medium"]) and math.isnan(result["map_large"])


def test_iou_062_passes_three_of_ten_thresholds():
    # IoU = (10 * 6.2) / (10 * 10) = 0.62: matched at 0.50, 0.55, 0.60 only.
    result = evaluate([([([0, 0, 10, 10], 0)], [([0, 0, 10, 6.2], 0.9, 0)])], classes=("cat",))
    assert result["map50"] == pytest.approx(1.0)
    assert result["map75"] == 0.0
    assert result["map"] == pytest.approx(3 / 10)


def test_false_positive_ranked_first_gives_the_101_point_ap():
    # Ranked: a false positive (0.9), then one of the two ground truths (0.8). Precision/recall
    # after each: (0, 0), (1/2, 1/2); the precision envelope is 1/2 up to recall 1/2 and there
    # is no point beyond. The 101 recall points 0, 0.01, ..., 0.50 (51 of them) get 1/2, the
    # other 50 get 0: AP = 0.5 * 51 / 101, at every IoU threshold (the match is exact).
    truth = [([0, 0, 10, 10], 0), ([40, 40, 50, 50], 0)]
    found = [([100, 100, 110, 110], 0.9, 0), ([0, 0, 10, 10], 0.8, 0)]
    result = evaluate([(truth, found)], classes=("cat",))
    assert result["map50"] == pytest.approx(0.5 * 51 / 101)
    assert result["map"] == pytest.approx(0.5 * 51 / 101)


def test_right_box_wrong_class_scores_zero():
    result = evaluate([([([0, 0, 10, 10], 0)], [([0, 0, 10, 10], 0.9, 1)])])
    assert result["map"] == result["map50"] == 0.0
    assert result["ap/cat"] == 0.0
    assert math.isnan(result["ap/dog"])  # no dog in the ground truth: left out of the mean


def test_no_detections_scores_zero_and_images_without_boxes_are_fine():
    result = evaluate([([([0, 0, 10, 10], 0)], []), ([], [])])
    assert result["map"] == result["map50"] == result["ap/cat"] == 0.0
    # An image with no ground truth holding a detection: a false positive below a true one.
    result = evaluate([([([0, 0, 10, 10], 0)], [([0, 0, 10, 10], 0.9, 0)]), ([], [([0, 0, 10, 10], 0.5, 0)])])
    assert result["map"] == pytest.approx(1.0)


def test_padding_images_and_rows_are_ignored():
    clean = [([([0, 0, 10, 10], 0)], [([0, 0, 10, 10], 0.5, 0)])]
    junk = [([([0, 0, 10, 10], 1)], [([50, 50, 60, 60], 0.99, 0)])]  # would add errors if counted
    arrays = padded(clean + junk)
    gt_boxes, gt_classes, gt_mask, det_boxes, det_scores, det_classes, det_mask = arrays
    # Padding rows of the real image: a high-scoring false positive and a second ground truth.
    det_boxes[0, 1], det_scores[0, 1], det_classes[0, 1] = [70, 70, 80, 80], 0.99, 0
    gt_boxes[0, 1], gt_classes[0, 1] = [30, 30, 40, 40], 0
    evaluator = CocoEvaluator(CLASSES)
    evaluator.add(*arrays, image_valid=np.array([True, False]))
    np.testing.assert_equal(evaluator.result(), evaluate(clean))  # NaN equals NaN here
    assert evaluator.result()["map"] == pytest.approx(1.0)


def test_batches_accumulate_and_image_ids_must_be_unique():
    images = [([([0, 0, 10, 10], 0)], [([0, 0, 10, 10], 0.4, 0)]), ([([0, 0, 10, 10], 0)], [([90, 0, 99, 9], 0.9, 0)])]
    evaluator = CocoEvaluator(CLASSES)
    evaluator.add(*padded(images[:1]))
    evaluator.add(*padded(images[1:]))
    np.testing.assert_equal(evaluator.result(), evaluate(images))
    evaluator.add(*padded(images[:1]), image_ids=[7])
    with pytest.raises(ValueError, match="image id 7 .* was added before"):
        evaluator.add(*padded(images[:1]), image_ids=[7])


def test_errors_name_the_problem():
    arrays = padded([([([0, 0, 10, 10], 2)], [])])
    with pytest.raises(ValueError, match=r"gt_classes must be in \[0, 2\) .* got \[2\] in batch row 0"):
        CocoEvaluator(CLASSES).add(*arrays)
    arrays = list(padded([([], [])]))
    arrays[4] = arrays[4][:, :3]
    with pytest.raises(ValueError, match=r"det_scores must have shape \[1, 8\] .* got \[1, 3\]"):
        CocoEvaluator(CLASSES).add(*arrays)
    with pytest.raises(ValueError, match="no images were added"):
        CocoEvaluator(CLASSES).result()


def test_max_detections_keeps_the_highest_scores_per_image():
    # Two ground truths; the lower-scored true detection falls beyond max_detections=1...
    truth = [([0, 0, 10, 10], 0), ([40, 40, 50, 50], 0)]
    found = [([0, 0, 10, 10], 0.9, 0), ([40, 40, 50, 50], 0.2, 0)]
    evaluator = CocoEvaluator(CLASSES, max_detections=1)
    evaluator.add(*padded([(truth, found)]))
    # ...so recall stops at 1/2 with precision 1: AP = 51 / 101.
    assert evaluator.result()["map"] == pytest.approx(51 / 101)


def test_summary_equals_pycocotools_summarize():
    images = random_case(np.random.default_rng(1))
    evaluator = CocoEvaluator(("a", "b", "c"))
    evaluator.add(*padded(images))
    evaluation = evaluator.coco_eval()
    evaluation.summarize()
    expected = [np.nan if v == -1 else v for v in evaluation.stats[:6]]
    result = evaluator.result()
    got = [result[k] for k in ("map", "map50", "map75", "map_small", "map_medium", "map_large")]
    np.testing.assert_allclose(got, expected)


# An independent COCO-style AP: greedy matching in score order to the best-IoU unmatched
# ground truth with IoU >= threshold, then the precision envelope at 101 recall points.


def iou(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def average_precision(images, label, threshold):
    truth = [[box for box, c in gt if c == label] for gt, _ in images]
    found = sorted(
        ((score, i, box) for i, (_, dets) in enumerate(images) for box, score, c in dets if c == label),
        key=lambda d: -d[0],
    )
    used = [np.zeros(len(t), bool) for t in truth]
    hits = []
    for _, i, box in found:
        overlaps = [iou(box, g) if not used[i][j] else -1.0 for j, g in enumerate(truth[i])]
        best = int(np.argmax(overlaps)) if overlaps else -1
        hit = best >= 0 and overlaps[best] >= threshold
        if hit:
            used[i][best] = True
        hits.append(hit)
    total = sum(len(t) for t in truth)
    hits = np.array(hits, bool)
    recall = np.cumsum(hits) / total
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    points = [precision[recall >= r].max() if (recall >= r).any() else 0.0 for r in np.linspace(0, 1, 101)]
    return float(np.mean(points))


def random_case(rng, *, images=4, classes=3):
    """Ground truth in separate 20x20 cells of a 100x100 image (no two overlap); each found
    with probability 0.8 after a jitter that spreads its IoU over 0.3 to 1; a few false positives."""
    cases = []
    for _ in range(images):
        cells = rng.choice(25, size=rng.integers(1, 6), replace=False)
        truth, found = [], []
        for cell in cells:
            x, y = 20.0 * (cell % 5) + rng.uniform(0, 4), 20.0 * (cell // 5) + rng.uniform(0, 4)
            box = [x, y, x + rng.uniform(8, 16), y + rng.uniform(8, 16)]
            label = int(rng.integers(classes))
            truth.append((box, label))
            if rng.random() < 0.8:
                shift = rng.uniform(-2.5, 2.5, size=4)
                found.append(((np.array(box) + shift).tolist(), float(rng.random()), label))
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 90, size=2)
            found.append(([x, y, x + 10, y + 10], float(rng.random()), int(rng.integers(classes))))
        cases.append((truth, found))
    return cases


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_equals_an_independent_101_point_ap(seed):
    images = random_case(np.random.default_rng(seed))
    present = sorted({c for gt, _ in images for _, c in gt})
    result = evaluate(images, classes=("a", "b", "c"))
    ap = {t: np.mean([average_precision(images, c, t) for c in present]) for t in np.linspace(0.5, 0.95, 10)}
    assert result["map50"] == pytest.approx(ap[0.5], abs=1e-12)
    assert result["map75"] == pytest.approx(ap[0.75], abs=1e-12)
    assert result["map"] == pytest.approx(np.mean(list(ap.values())), abs=1e-12)


def test_coco_map_takes_stacked_samples_and_the_valid_flag():
    gt_boxes, gt_classes, gt_mask, det_boxes, det_scores, det_classes, det_mask = padded(
        [([([0, 0, 10, 10], 0)], [([0, 0, 10, 10], 0.9, 0)]), ([([0, 0, 10, 10], 0)], [])]
    )
    ground_truth = {"boxes": gt_boxes, "classes": gt_classes, "box_mask": gt_mask, "valid": np.array([True, False])}
    detections = {"boxes": det_boxes, "scores": det_scores, "classes": det_classes, "box_mask": det_mask}
    assert coco_map(ground_truth, detections, CLASSES)["map"] == pytest.approx(1.0)
