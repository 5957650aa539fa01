"""Box geometry and NMS against NumPy formulas and a NumPy greedy NMS."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.ops import boxes as ops
from jaxseg.ops.boxes import (
    FORMATS,
    box_area,
    box_convert,
    box_iou,
    clip_boxes,
    generalized_box_iou,
    paired_giou,
    paired_iou,
)

# Jitted once for the module: thresholds are traced, and equal shapes reuse one compilation.
nms = jax.jit(ops.nms, static_argnames="max_outputs")
batched_nms = jax.jit(ops.batched_nms, static_argnames="max_outputs")

# ----------------------------------------------------------------------------- NumPy references


def np_area(b):
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def np_pair_iou_giou(a, b):
    """IoU and GIoU of two single xyxy boxes in float64, 0 / 0 read as 0."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    union = np_area(a) + np_area(b) - inter
    iou = inter / union if union != 0 else 0.0
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return iou, iou - ((hull - union) / hull if hull != 0 else 0.0)


def np_pairwise(a, b):
    """`[N, 4]`, `[M, 4]` -> (IoU, GIoU) `[N, M]` by loops."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = np.array([[np_pair_iou_giou(x, y) for y in b] for x in a]).reshape(len(a), len(b), 2)
    return out[..., 0], out[..., 1]


def np_nms(boxes, scores, threshold, score_threshold=-np.inf, classes=None):
    """Greedy NMS: visit by descending score, keep a box unless it overlaps a kept one (same class)."""
    kept = []
    for i in np.argsort(-scores, kind="stable"):
        if not scores[i] >= score_threshold:
            continue
        rivals = [k for k in kept if classes is None or classes[k] == classes[i]]
        if all(np_pair_iou_giou(boxes[i], boxes[k])[0] <= threshold for k in rivals):
            kept.append(int(i))
    return kept


def random_boxes(rng, shape, low=0.0, high=20.0, max_size=8.0):
    xy = rng.uniform(low, high, shape + (2,))
    wh = rng.uniform(0.2, max_size, shape + (2,))
    return np.concatenate([xy, xy + wh], axis=-1).astype(np.float32)


def clustered_boxes(rng, n, clusters=4):
    """Boxes jittered around a few centres, so that NMS has plenty to suppress."""
    centres = rng.uniform(0, 30, (clusters, 2))[rng.integers(0, clusters, n)]
    centres = centres + rng.normal(0, 1.5, (n, 2))
    half = rng.uniform(1, 4, (n, 2))
    return np.concatenate([centres - half, centres + half], axis=-1).astype(np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(3)


# ----------------------------------------------------------------------------- formats, area, clip


def test_box_convert_known_values():
    xyxy = np.array([[1.0, 2.0, 5.0, 8.0]], np.float32)
    np.testing.assert_array_equal(box_convert(xyxy, "xyxy", "xywh"), [[1, 2, 4, 6]])
    np.testing.assert_array_equal(box_convert(xyxy, "xyxy", "cxcywh"), [[3, 5, 4, 6]])
    np.testing.assert_array_equal(box_convert([[3.0, 5.0, 4.0, 6.0]], "cxcywh", "xywh"), [[1, 2, 4, 6]])
    np.testing.assert_array_equal(box_convert([[1.0, 2.0, 4.0, 6.0]], "xywh", "cxcywh"), [[3, 5, 4, 6]])


@pytest.mark.parametrize("in_fmt,out_fmt", list(itertools.permutations(FORMATS, 2)))
def test_box_convert_round_trips(rng, in_fmt, out_fmt):
    boxes = box_convert(random_boxes(rng, (3, 5)), "xyxy", in_fmt)
    there = box_convert(boxes, in_fmt, out_fmt)
    assert there.shape == (3, 5, 4) and there.dtype == jnp.float32
    np.testing.assert_allclose(box_convert(there, out_fmt, in_fmt), boxes, atol=1e-5)


def test_box_convert_rejects_unknown_formats():
    with pytest.raises(ValueError, match="in_fmt must be one of .*got 'yxyx'"):
        box_convert(np.zeros((2, 4)), "yxyx", "xyxy")
    with pytest.raises(ValueError, match="out_fmt must be one of .*got 'xyxyr'"):
        box_convert(np.zeros((2, 4)), "xyxy", "xyxyr")
    with pytest.raises(ValueError, match="last axis of 4 coordinates; got shape \\(2, 5\\)"):
        box_convert(np.zeros((2, 5)), "xyxy", "xywh")


def test_box_area_and_clip(rng):
    boxes = random_boxes(rng, (2, 6), low=-5.0, high=25.0)
    np.testing.assert_allclose(box_area(boxes), np_area(boxes.astype(np.float64)), rtol=1e-6)
    clipped = np.asarray(clip_boxes(boxes, (18, 22)))
    expected = boxes.copy()
    expected[..., 0::2] = np.clip(expected[..., 0::2], 0, 22)
    expected[..., 1::2] = np.clip(expected[..., 1::2], 0, 18)
    np.testing.assert_array_equal(clipped, expected)
    per_image = jax.vmap(clip_boxes)(boxes, jnp.array([[18, 22], [10, 30]]))
    np.testing.assert_array_equal(per_image[0], expected[0])


# ----------------------------------------------------------------------------- IoU and GIoU


def test_pairwise_iou_and_giou_match_numpy(rng):
    a, b = random_boxes(rng, (7,)), random_boxes(rng, (5,))
    iou, giou = np_pairwise(a, b)
    np.testing.assert_allclose(box_iou(a, b), iou, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(generalized_box_iou(a, b), giou, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(paired_iou(a[:5], b), np.diag(iou), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(paired_giou(a[:5], b), np.diag(giou), rtol=1e-5, atol=1e-6)


def test_leading_dims_broadcast(rng):
    a, b = random_boxes(rng, (2, 4)), random_boxes(rng, (2, 3))
    batched = box_iou(a, b)
    assert batched.shape == (2, 4, 3)
    for i in range(2):
        np.testing.assert_allclose(batched[i], np_pairwise(a[i], b[i])[0], rtol=1e-5, atol=1e-6)
    shared = generalized_box_iou(a[0], b)  # [N, 4] against [2, M, 4]
    assert shared.shape == (2, 4, 3)
    np.testing.assert_allclose(shared[1], np_pairwise(a[0], b[1])[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[\.\.\., N, 4\] and \[\.\.\., M, 4\]"):
        box_iou(a[0, 0], b)


HAND_CASES = [  # box a, box b, IoU, GIoU
    ([0, 0, 2, 2], [0, 0, 2, 2], 1.0, 1.0),  # identical
    ([0, 0, 1, 1], [2, 0, 3, 1], 0.0, -1 / 3),  # disjoint: hull 3, union 2
    ([0, 0, 4, 4], [1, 1, 3, 3], 0.25, 0.25),  # nested: the hull is the outer box
    ([0, 0, 2, 2], [2, 0, 4, 2], 0.0, 0.0),  # touching edges
    ([1, 1, 1, 3], [0, 0, 2, 2], 0.0, -1 / 3),  # zero-width box: union 4, hull 6
    ([1, 1, 1, 1], [1, 1, 1, 1], 0.0, 0.0),  # two identical points: 0 / 0 -> 0
    ([1, 1, 1, 1], [3, 1, 3, 1], 0.0, 0.0),  # two points on a line: zero-area hull
]


@pytest.mark.parametrize("a,b,iou,giou", HAND_CASES)
def test_hand_made_cases(a, b, iou, giou):
    a, b = np.array([a], np.float32), np.array([b], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[iou]], atol=1e-6)
    np.testing.assert_allclose(generalized_box_iou(a, b), [[giou]], atol=1e-6)
    np.testing.assert_allclose(np_pairwise(a, b)[1], [[giou]], atol=1e-6)


def test_degenerate_boxes_have_finite_gradients():
    a = np.array([[0, 0, 2, 2], [1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 3], [5, 5, 5, 5]], np.float32)
    b = np.array([[0, 0, 2, 2], [1, 1, 1, 1], [2, 0, 3, 1], [0, 0, 2, 2], [5, 5, 7, 5]], np.float32)
    for fn in (paired_iou, paired_giou):
        grads = jax.jit(jax.grad(lambda p, q: jnp.sum(fn(p, q)), argnums=(0, 1)))(a, b)
        assert all(np.isfinite(g).all() for g in grads), fn.__name__
    grads = jax.grad(lambda p: jnp.sum(generalized_box_iou(p, b)))(a)
    assert np.isfinite(grads).all()


def test_vmap_and_bf16(rng):
    a, b = random_boxes(rng, (3, 4)), random_boxes(rng, (3, 5))
    np.testing.assert_allclose(jax.vmap(box_iou)(a, b), box_iou(a, b), rtol=1e-6)
    low = generalized_box_iou(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, generalized_box_iou(a, b), atol=0.03)
    assert box_area(np.ones((2, 4), np.int32)).dtype == jnp.float32


# ----------------------------------------------------------------------------- NMS


def unpack(indices, valid):
    indices, valid = np.asarray(indices), np.asarray(valid)
    assert indices.dtype == np.int32 and valid.dtype == bool
    count = int(valid.sum())
    assert valid[:count].all() and not valid[count:].any(), "valid slots come first"
    assert (indices[count:] == 0).all(), "padding slots hold index 0"
    return indices[:count].tolist()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.3, 0.6])
def test_nms_matches_numpy_greedy(seed, threshold):
    rng = np.random.default_rng(seed)
    n = 40
    boxes, scores = clustered_boxes(rng, n), rng.permutation(n).astype(np.float32) / n
    expected = np_nms(boxes, scores, threshold)
    assert 1 < len(expected) < n
    assert unpack(*nms(boxes, scores, iou_threshold=threshold, max_outputs=n)) == expected
    short = unpack(*nms(boxes, scores, iou_threshold=threshold, max_outputs=3))
    assert short == expected[:3]
    cut = float(np.median(scores))
    filtered = unpack(*nms(boxes, scores, iou_threshold=threshold, max_outputs=n, score_threshold=cut))
    assert filtered == np_nms(boxes, scores, threshold, score_threshold=cut)
    assert all(scores[i] >= cut for i in filtered)


def test_nms_jit_vmap_and_padding(rng):
    boxes = np.stack([clustered_boxes(rng, 12) for _ in range(3)])
    scores = np.stack([rng.permutation(12) for _ in range(3)]).astype(np.float32)
    run = jax.jit(jax.vmap(lambda b, s, t: ops.nms(b, s, iou_threshold=0.5, max_outputs=20, score_threshold=t)))
    indices, valid = run(boxes, scores, jnp.array([-jnp.inf, 6.0, 100.0]))
    assert indices.shape == (3, 20) and valid.shape == (3, 20)
    assert unpack(indices[0], valid[0]) == np_nms(boxes[0], scores[0], 0.5)
    assert unpack(indices[1], valid[1]) == np_nms(boxes[1], scores[1], 0.5, score_threshold=6.0)
    assert unpack(indices[2], valid[2]) == []


def test_nms_keeps_equal_scores_in_index_order_and_never_keeps_nan():
    boxes = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [10, 10, 11, 11], [0, 0, 1, 1]], np.float32)
    scores = np.array([0.5, 0.9, 0.5, np.nan], np.float32)
    assert unpack(*nms(boxes, scores, iou_threshold=0.5, max_outputs=4)) == [1, 0, 2]


@pytest.mark.parametrize("seed", range(3))
def test_batched_nms_is_nms_per_class(seed):
    rng = np.random.default_rng(10 + seed)
    n = 48
    boxes, scores = clustered_boxes(rng, n, clusters=3), rng.permutation(n).astype(np.float32)
    classes = rng.integers(0, 3, n)
    expected = np_nms(boxes, scores, 0.4, classes=classes)
    merged = sorted(
        (
            i
            for c in range(3)
            for i in np.flatnonzero(classes == c)[np_nms(boxes[classes == c], scores[classes == c], 0.4)]
        ),
        key=lambda i: -scores[i],
    )
    assert expected == merged
    assert unpack(*batched_nms(boxes, scores, classes, iou_threshold=0.4, max_outputs=n)) == expected
    assert len(expected) > len(np_nms(boxes, scores, 0.4)), "classes keep overlapping boxes apart"
    cut = float(np.quantile(scores, 0.3))
    assert (
        unpack(*batched_nms(boxes, scores, classes, iou_threshold=0.4, max_outputs=5, score_threshold=cut))
        == (np_nms(boxes, scores, 0.4, score_threshold=cut, classes=classes)[:5])
    )


def test_batched_nms_with_negative_coordinates():
    boxes = np.array([[-10, -10, -2, -2], [-9, -9, -2, -2], [-9, -9, -2, -2]], np.float32)
    indices = batched_nms(boxes, np.array([3.0, 2.0, 1.0]), np.array([0, 1, 0]), iou_threshold=0.5, max_outputs=3)
    assert unpack(*indices) == [0, 1]


def test_nms_without_candidates():
    assert unpack(*nms(np.zeros((0, 4)), np.zeros(0), iou_threshold=0.5, max_outputs=3)) == []


def test_nms_argument_errors():
    boxes, scores = np.zeros((3, 4), np.float32), np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="max_outputs must be a positive Python int"):
        ops.nms(boxes, scores, iou_threshold=0.5, max_outputs=0)
    with pytest.raises(ValueError, match=r"boxes \[N, 4\] and scores \[N\]"):
        nms(boxes, scores[:2], iou_threshold=0.5, max_outputs=2)
    with pytest.raises(ValueError, match="classes must have the scores' shape"):
        batched_nms(boxes, scores, np.zeros(2, np.int32), iou_threshold=0.5, max_outputs=2)
