"""IoU-family box losses and smooth L1 / L1 against NumPy formulas; gradients and degenerate boxes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses
from tests.losses import numpy_reference as ref

EPS = 1e-7
IOU_LOSSES = ["iou_loss", "giou_loss", "diou_loss", "ciou_loss"]


# ----------------------------------------------------------------------------- NumPy references


def np_box_losses(b1, b2, eps=EPS):
    """float64 torchvision formulas, elementwise over `[..., 4]`: a dict of the four losses."""
    x1, y1, x2, y2 = np.moveaxis(np.asarray(b1, np.float64), -1, 0)
    u1, v1, u2, v2 = np.moveaxis(np.asarray(b2, np.float64), -1, 0)
    iw = np.minimum(x2, u2) - np.maximum(x1, u1)
    ih = np.minimum(y2, v2) - np.maximum(y1, v1)
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = (x2 - x1) * (y2 - y1) + (u2 - u1) * (v2 - v1) - inter
    iou = inter / (union + eps)
    cw, ch = np.maximum(x2, u2) - np.minimum(x1, u1), np.maximum(y2, v2) - np.minimum(y1, v1)
    giou = 1 - iou + (cw * ch - union) / (cw * ch + eps)
    centres = ((x1 + x2) / 2 - (u1 + u2) / 2) ** 2 + ((y1 + y2) / 2 - (v1 + v2) / 2) ** 2
    diou = 1 - iou + centres / (cw**2 + ch**2 + eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = 4 / np.pi**2 * (np.arctan((u2 - u1) / (v2 - v1)) - np.arctan((x2 - x1) / (y2 - y1))) ** 2
    alpha = v / (1 - iou + v + eps)
    return dict(iou_loss=1 - iou, giou_loss=giou, diou_loss=diou, ciou_loss=diou + alpha * v, alpha=alpha)


def np_reduce(loss, reduction):
    return {"none": loss, "sum": np.sum(loss), "mean": np.mean(loss)}[reduction]


def random_boxes(rng, shape, max_size=6.0):
    xy = rng.uniform(0, 10, shape + (2,))
    return np.concatenate([xy, xy + rng.uniform(0.3, max_size, shape + (2,))], axis=-1).astype(np.float32)


DEGENERATE = np.array(
    [  # boxes1, boxes2
        [[1, 1, 4, 3], [1, 1, 4, 3]],  # identical
        [[0, 0, 1, 1], [3, 4, 5, 6]],  # disjoint
        [[0, 0, 6, 6], [2, 1, 3, 4]],  # nested
        [[0, 0, 2, 2], [2, 0, 4, 2]],  # touching edges
        [[1, 1, 1, 3], [0, 0, 2, 2]],  # zero width
        [[1, 2, 3, 2], [0, 0, 2, 2]],  # zero height (the atan of w / 0 in CIoU)
        [[1, 1, 1, 1], [0, 0, 2, 2]],  # a point
        [[1, 1, 1, 1], [1, 1, 1, 1]],  # identical points
        [[2, 2, 2, 5], [2, 2, 2, 5]],  # identical zero-width boxes
    ],
    np.float32,
)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# ----------------------------------------------------------------------------- IoU family


@pytest.mark.parametrize("name", IOU_LOSSES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_iou_losses_match_numpy(rng, name, reduction):
    b1, b2 = random_boxes(rng, (3, 5)), random_boxes(rng, (3, 5))
    b2[0, :2] = b1[0, :2]  # a few identical pairs
    ours = getattr(losses, name)(b1, b2, reduction=reduction)
    expected = np_reduce(np_box_losses(b1, b2)[name], reduction)
    assert ours.dtype == jnp.float32 and ours.shape == np.shape(expected)
    np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", ["iou_loss", "giou_loss", "diou_loss"])
def test_iou_losses_gradients_match_finite_differences(rng, name):
    b1, b2 = random_boxes(rng, (6,)), random_boxes(rng, (6,))
    b2[:3] = b1[:3] + rng.uniform(-0.5, 0.5, (3, 4)).astype(np.float32)  # overlapping pairs
    fn = getattr(losses, name)
    for argnum, (jax_fn, numpy_fn, x) in enumerate(
        [
            (lambda x: fn(x, b2, reduction="sum"), lambda x: np.sum(np_box_losses(x, b2)[name]), b1),
            (lambda x: fn(b1, x, reduction="sum"), lambda x: np.sum(np_box_losses(b1, x)[name]), b2),
        ]
    ):
        grad = jax.jit(jax.grad(jax_fn))(x)
        np.testing.assert_allclose(grad, ref.numeric_grad(numpy_fn, x), rtol=1e-3, atol=1e-4, err_msg=f"arg {argnum}")


def test_ciou_alpha_is_held_constant(rng):
    """d CIoU = d DIoU + alpha * d v: alpha does not carry gradient (torch's no_grad)."""
    b1, b2 = random_boxes(rng, (5,)), random_boxes(rng, (5,))
    alpha = np_box_losses(b1, b2)["alpha"].astype(np.float32)

    def v(p):
        w1, h1, w2, h2 = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1], b2[:, 2] - b2[:, 0], b2[:, 3] - b2[:, 1]
        return 4 / jnp.pi**2 * (jnp.arctan(w2 / h2) - jnp.arctan(w1 / h1)) ** 2

    expected = jax.jit(jax.grad(lambda p: jnp.sum(losses.diou_loss(p, b2) + alpha * v(p))))(b1)
    ours = jax.jit(jax.grad(lambda p: jnp.sum(losses.ciou_loss(p, b2))))(b1)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)


def test_hand_made_values():
    # identical: every loss is eps / (area + eps), ~0
    same = np.array([1.0, 1.0, 4.0, 3.0], np.float32)
    for name in IOU_LOSSES:
        np.testing.assert_allclose(getattr(losses, name)(same, same), 0.0, atol=1e-6)
    # disjoint: IoU 0; the hull is [0, 5] x [0, 6] = 30 for a union of 5
    a, b = np.array([0.0, 0, 1, 1]), np.array([3.0, 4, 5, 6])
    np.testing.assert_allclose(losses.iou_loss(a, b), 1.0)
    np.testing.assert_allclose(losses.giou_loss(a, b), 1 + 25 / 30, rtol=1e-6)
    np.testing.assert_allclose(losses.diou_loss(a, b), 1 + (3.5**2 + 4.5**2) / (5**2 + 6**2), rtol=1e-6)
    # nested: IoU is the area ratio, the hull is the outer box (no GIoU penalty)
    outer, inner = np.array([0.0, 0, 6, 6]), np.array([2.0, 1, 3, 4])
    np.testing.assert_allclose(losses.iou_loss(outer, inner), 1 - 3 / 36, rtol=1e-6)
    np.testing.assert_allclose(losses.giou_loss(outer, inner), 1 - 3 / 36, rtol=1e-6)


@pytest.mark.parametrize("name", IOU_LOSSES)
def test_degenerate_boxes_give_finite_values_and_gradients(name):
    fn = getattr(losses, name)
    b1, b2 = DEGENERATE[:, 0], DEGENERATE[:, 1]
    value = fn(b1, b2)
    assert np.isfinite(value).all()
    for eps in (EPS, 0.0):
        grads = jax.jit(jax.grad(lambda p, q: jnp.sum(fn(p, q, eps=eps)), argnums=(0, 1)))(b1, b2)
        assert np.isfinite(grads[0]).all() and np.isfinite(grads[1]).all(), f"eps={eps}"
    expected = np_box_losses(b1, b2)[name]
    finite = np.isfinite(expected)  # NumPy (as torch) is NaN for a zero-size box in CIoU
    np.testing.assert_allclose(value[finite], expected[finite], rtol=1e-5, atol=1e-6)
    assert value[0] < 1e-6 and value[7] >= 0


def test_ciou_zero_height_and_point_boxes():
    a = np.array([[1.0, 2, 3, 2], [1, 1, 1, 1]], np.float32)
    b = np.array([[0.0, 0, 2, 2], [0, 0, 2, 2]], np.float32)
    diou = np.asarray(losses.diou_loss(a, b))
    iou = 1 - np.asarray(losses.iou_loss(a, b))
    v = 4 / np.pi**2 * (np.pi / 4 - np.array([np.pi / 2, 0.0])) ** 2  # atan(2 / 0) = pi / 2; a point: 0
    np.testing.assert_allclose(losses.ciou_loss(a, b), diou + v / (1 - iou + v + EPS) * v, rtol=1e-6)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(losses.ciou_loss(p, b))))(a)
    assert np.isfinite(grad).all() and np.any(grad[0] != 0)


@pytest.mark.parametrize("name", IOU_LOSSES)
def test_bf16_jit_and_vmap(rng, name):
    fn = getattr(losses, name)
    b1, b2 = random_boxes(rng, (4, 6)), random_boxes(rng, (4, 6))
    low = fn(b1.astype(jnp.bfloat16), b2.astype(jnp.bfloat16), reduction="mean")
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, fn(b1, b2, reduction="mean"), atol=0.02)
    np.testing.assert_allclose(jax.vmap(fn)(b1, b2), jax.jit(fn)(b1, b2), rtol=1e-6)
    assert fn(b1[0, :1], b2[0]).shape == (6,), "leading dims broadcast"


def test_empty_mean_is_zero():
    for name in IOU_LOSSES:
        assert float(getattr(losses, name)(np.zeros((0, 4)), np.zeros((0, 4)), reduction="mean")) == 0.0
    assert float(losses.smooth_l1_loss(np.zeros(0), np.zeros(0))) == 0.0


# ----------------------------------------------------------------------------- smooth L1, L1


def np_smooth_l1(x, y, beta):
    d = np.abs(np.asarray(x, np.float64) - y)
    return d if beta == 0 else np.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_smooth_l1_matches_numpy(rng, beta, reduction):
    x, y = (2 * rng.standard_normal((2, 3, 4))).astype(np.float32), rng.standard_normal((2, 3, 4)).astype(np.float32)
    ours = losses.smooth_l1_loss(x, y, beta=beta, reduction=reduction)
    np.testing.assert_allclose(ours, np_reduce(np_smooth_l1(x, y, beta), reduction), rtol=1e-6, atol=1e-6)
    grad = jax.grad(lambda x: losses.smooth_l1_loss(x, y, beta=beta, reduction="sum"))(x)
    d = x.astype(np.float64) - y
    expected = np.sign(d) if beta == 0 else np.where(np.abs(d) < beta, d / max(beta, 1e-12), np.sign(d))
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_l1_and_the_beta_zero_limit(rng):
    x, y = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    x[0] = y[0]  # d = 0: zero gradient, as torch's sign(0)
    for reduction in ("none", "mean", "sum"):
        np.testing.assert_allclose(
            losses.l1_loss(x, y, reduction=reduction), np_reduce(np.abs(x - y), reduction), rtol=1e-6
        )
    np.testing.assert_allclose(losses.smooth_l1_loss(x, y, beta=0.0), losses.l1_loss(x, y), rtol=1e-6)
    for fn in (losses.l1_loss, lambda x, y: losses.smooth_l1_loss(x, y, beta=0.0), losses.smooth_l1_loss):
        grad = jax.grad(fn)(x, y)
        assert np.isfinite(grad).all() and (grad[0] == 0).all()
    traced_beta = jax.jit(lambda b: losses.smooth_l1_loss(x, y, beta=b))
    np.testing.assert_allclose(traced_beta(0.0), losses.l1_loss(x, y), rtol=1e-6)
    assert np.isfinite(jax.grad(lambda x: traced_beta(0.0) + losses.smooth_l1_loss(x, y, beta=jnp.float32(0)))(x)).all()
    assert losses.l1_loss(x.astype(jnp.bfloat16), y).dtype == jnp.float32


# ----------------------------------------------------------------------------- errors


def test_argument_errors():
    boxes = np.zeros((2, 4), np.float32)
    for name in IOU_LOSSES:
        with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\); got 'avg'"):
            getattr(losses, name)(boxes, boxes, reduction="avg")
    with pytest.raises(ValueError, match="boxes2 must have a last axis of 4 coordinates; got shape \\(2, 5\\)"):
        losses.giou_loss(boxes, np.zeros((2, 5)))
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.smooth_l1_loss(boxes, boxes, reduction="batchmean")
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.l1_loss(boxes, boxes, reduction=None)
    with pytest.raises(ValueError, match="beta must be >= 0; got -1"):
        losses.smooth_l1_loss(boxes, boxes, beta=-1)
    with pytest.raises(ValueError, match=r"target must have the input's shape \(2, 4\); got \(4,\)"):
        losses.l1_loss(boxes, boxes[0])
    with pytest.raises(TypeError, match="input must be a floating array"):
        losses.l1_loss(boxes.astype(np.int32), boxes)
    with pytest.raises(TypeError):
        losses.iou_loss(boxes, boxes, 1e-7)  # keyword-only after the two boxes
