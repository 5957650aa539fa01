"""Conformance with the libraries users know: torch, smp 0.5, MONAI, torchvision.

Skipped unless those are installed; `make conformance` installs them and runs this module.
Each case compares the loss value and its gradient w.r.t. the logits (float32), or w.r.t. both
box sets for the box losses; the box geometry is compared with `torchvision.ops.boxes`.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses
from jaxseg.ops import boxes as ops
from tests.conformance import references as ref

torch = ref.torch()
F = torch.nn.functional

RTOL, ATOL = 2e-5, 2e-6
B, H, W, C = 2, 6, 7, 4


def assert_same(jax_fn, torch_fn, logits, torch_logits=None, rtol=RTOL, atol=ATOL):
    """Compare the output (elementwise for reduction="none") and d(sum of it)/d(logits) of a
    JAX loss and a torch loss, on the same channels-last logits."""
    x = jnp.asarray(logits)
    value = jax_fn(x)
    grad = jax.grad(lambda x: jnp.sum(jax_fn(x)))(x)
    t = ref.to_torch_nchw(logits, True) if torch_logits is None else torch_logits(logits)
    t_value = torch_fn(t)
    t_value.sum().backward()
    np.testing.assert_allclose(value, t_value.detach().numpy().reshape(value.shape), rtol=rtol, atol=atol)
    t_grad = ref.from_torch_nchw(t.grad) if torch_logits is None else t.grad.numpy().reshape(grad.shape)
    np.testing.assert_allclose(grad, t_grad, rtol=rtol, atol=atol)


def flat_leaf(x):
    return torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def make_case(rng, num_classes=C, scale=3.0, ignore=None):
    logits = (scale * rng.standard_normal((B, H, W, num_classes))).astype(np.float32)
    labels = rng.integers(0, num_classes, (B, H, W)).astype(np.int64)
    if ignore is not None:
        labels[rng.random(labels.shape) < 0.3] = ignore
    return logits, labels


# ----------------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_torch(rng, reduction, weighted, ignore, smoothing):
    logits, labels = make_case(rng, ignore=ignore)
    weights = rng.uniform(0.2, 3.0, C).astype(np.float32) if weighted else None
    ours = lambda x: losses.cross_entropy(
        x, labels, class_weights=weights, ignore_index=ignore, label_smoothing=smoothing, reduction=reduction
    )
    theirs = lambda t: F.cross_entropy(
        t,
        torch.from_numpy(labels),
        weight=None if weights is None else torch.from_numpy(weights),
        ignore_index=-100 if ignore is None else ignore,
        label_smoothing=smoothing,
        reduction=reduction,
    )
    assert_same(ours, theirs, logits)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_probability_targets_match_torch(rng, weighted, smoothing):
    logits, _ = make_case(rng)
    targets = rng.dirichlet(np.ones(C), (B, H, W)).astype(np.float32)
    weights = rng.uniform(0.2, 3.0, C).astype(np.float32) if weighted else None
    ours = lambda x: losses.cross_entropy(x, targets, class_weights=weights, label_smoothing=smoothing)
    theirs = lambda t: F.cross_entropy(
        t,
        ref.to_torch_nchw(targets),
        weight=None if weights is None else torch.from_numpy(weights),
        label_smoothing=smoothing,
    )
    assert_same(ours, theirs, logits)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_matches_torch(rng, reduction):
    logits = (4 * rng.standard_normal((B, H, W, C))).astype(np.float32)
    targets = rng.uniform(0, 1, logits.shape).astype(np.float32)
    pos_weight = rng.uniform(0.5, 2.0, C).astype(np.float32)
    weights = rng.uniform(0.5, 2.0, logits.shape).astype(np.float32)
    ours = lambda x: losses.binary_cross_entropy(
        x, targets, pos_weight=pos_weight, weights=weights, reduction=reduction
    )
    theirs = lambda t: F.binary_cross_entropy_with_logits(
        t,
        torch.from_numpy(targets),
        weight=torch.from_numpy(weights),
        pos_weight=torch.from_numpy(pos_weight),
        reduction=reduction,
    )
    assert_same(ours, theirs, logits, torch_logits=flat_leaf)


def test_binary_cross_entropy_smoothing_and_ignore_match_smp(rng):
    smp = ref.smp_losses()
    logits = (4 * rng.standard_normal((B, H, W, 1))).astype(np.float32)
    targets = rng.integers(0, 2, logits.shape).astype(np.float32)
    targets[rng.random(targets.shape) < 0.25] = -100
    ours = lambda x: losses.binary_cross_entropy(x, targets, ignore_index=-100, label_smoothing=0.1, reduction="sum")
    theirs = lambda t: smp.SoftBCEWithLogitsLoss(ignore_index=-100, smooth_factor=0.1, reduction="sum")(
        t, torch.from_numpy(targets)
    )
    assert_same(ours, theirs, logits, torch_logits=flat_leaf)


# ----------------------------------------------------------------------------- focal


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_sigmoid_focal_matches_torchvision(rng, reduction, alpha, gamma):
    tv = ref.torchvision_ops("focal_loss")
    logits = (4 * rng.standard_normal((B, H, W, C))).astype(np.float32)
    targets = rng.integers(0, 2, logits.shape).astype(np.float32)
    ours = lambda x: losses.sigmoid_focal_loss(x, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    theirs = lambda t: tv.sigmoid_focal_loss(
        t, torch.from_numpy(targets), alpha=alpha, gamma=gamma, reduction=reduction
    )
    assert_same(ours, theirs, logits, torch_logits=flat_leaf)


def test_sigmoid_focal_soft_targets_match_torchvision(rng):
    tv = ref.torchvision_ops("focal_loss")
    logits = (4 * rng.standard_normal((B, H, W, C))).astype(np.float32)
    targets = rng.uniform(0, 1, logits.shape).astype(np.float32)
    ours = lambda x: losses.sigmoid_focal_loss(x, targets, reduction="sum")
    theirs = lambda t: tv.sigmoid_focal_loss(t, torch.from_numpy(targets), reduction="sum")
    assert_same(ours, theirs, logits, torch_logits=flat_leaf)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
@pytest.mark.parametrize("alpha", [None, 0.3])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
@pytest.mark.parametrize("ignore", [None, -1])
def test_focal_binary_multilabel_match_smp(rng, mode, alpha, gamma, ignore):
    smp = ref.smp_losses()
    channels = 1 if mode == "binary" else C
    logits = (4 * rng.standard_normal((B, H, W, channels))).astype(np.float32)
    labels = rng.integers(0, 2, logits.shape).astype(np.float32)
    if ignore is not None:
        labels[rng.random(labels.shape) < 0.3] = ignore
    ours = lambda x: losses.focal_loss(x, labels, mode=mode, alpha=alpha, gamma=gamma, ignore_index=ignore)
    theirs = lambda t: smp.FocalLoss(mode, alpha=alpha, gamma=gamma, ignore_index=ignore)(t, ref.to_torch_nchw(labels))
    assert_same(ours, theirs, logits)


def test_focal_soft_targets_match_smp(rng):
    smp = ref.smp_losses()
    logits = (4 * rng.standard_normal((B, H, W, C))).astype(np.float32)
    targets = rng.uniform(0, 1, logits.shape).astype(np.float32)
    ours = lambda x: losses.focal_loss(x, targets, mode="multilabel", gamma=1.5)
    theirs = lambda t: smp.FocalLoss("multilabel", gamma=1.5)(t, ref.to_torch_nchw(targets))
    assert_same(ours, theirs, logits)


@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_softmax_focal_matches_monai(rng, alpha, gamma):
    monai = ref.monai_losses()
    logits, labels = make_case(rng)
    ours = lambda x: losses.focal_loss(x, labels, gamma=gamma, alpha=alpha, reduction="none")
    # MONAI returns [B, C, H, W] elementwise terms; the per-pixel loss is their class sum.
    monai_loss = monai.FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma, alpha=alpha, reduction="none")
    theirs = lambda t: monai_loss(t, torch.from_numpy(labels)[:, None]).sum(1)
    assert_same(ours, theirs, logits)


# ----------------------------------------------------------------------------- region


REGION_CASES = [
    dict(),
    dict(smooth=1.0),
    dict(log_loss=True),
    dict(classes=[1, 3]),
    dict(ignore_index=255),
    dict(smooth=0.5, ignore_index=255, log_loss=True),
]


def region_case(rng, options, absent_class=True):
    logits, labels = make_case(rng, ignore=options.get("ignore_index"))
    if absent_class:
        labels[labels == 2] = 0  # an absent class is masked to 0 but stays in the mean
    return logits, labels


@pytest.mark.parametrize("options", REGION_CASES)
@pytest.mark.parametrize("name", ["dice", "jaccard", "tversky"])
def test_region_multiclass_matches_smp(rng, name, options):
    smp = ref.smp_losses()
    if name == "jaccard" and "ignore_index" in options:
        pytest.skip("smp 0.5.0 JaccardLoss has no ignore_index")
    logits, labels = region_case(rng, options)
    extra = dict(alpha=0.7, beta=0.3, gamma=1.5) if name == "tversky" else {}
    ours = lambda x: getattr(losses, f"{name}_loss")(x, labels, **options, **extra)
    cls = dict(dice=smp.DiceLoss, jaccard=smp.JaccardLoss, tversky=smp.TverskyLoss)[name]
    theirs = lambda t: cls("multiclass", **options, **extra)(t, torch.from_numpy(labels))
    assert_same(ours, theirs, logits)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
@pytest.mark.parametrize("name", ["dice", "jaccard", "tversky"])
@pytest.mark.parametrize("soft", [False, True])
def test_region_sigmoid_modes_match_smp(rng, mode, name, soft):
    smp = ref.smp_losses()
    channels = 1 if mode == "binary" else C
    logits = (3 * rng.standard_normal((B, H, W, channels))).astype(np.float32)
    labels = rng.uniform(0, 1, logits.shape) if soft else rng.integers(0, 2, logits.shape)
    labels = labels.astype(np.float32)
    ours = lambda x: getattr(losses, f"{name}_loss")(x, labels, mode=mode, smooth=0.3)
    cls = dict(dice=smp.DiceLoss, jaccard=smp.JaccardLoss, tversky=smp.TverskyLoss)[name]
    theirs = lambda t: cls(mode, smooth=0.3)(t, ref.to_torch_nchw(labels))
    assert_same(ours, theirs, logits)


def test_dice_binary_ignore_matches_smp(rng):
    smp = ref.smp_losses()
    logits = (3 * rng.standard_normal((B, H, W, 1))).astype(np.float32)
    labels = rng.integers(0, 2, (B, H, W)).astype(np.int64)
    labels[rng.random(labels.shape) < 0.3] = 255
    ours = lambda x: losses.dice_loss(x, labels, mode="binary", ignore_index=255)
    theirs = lambda t: smp.DiceLoss("binary", ignore_index=255)(t, torch.from_numpy(labels))
    assert_same(ours, theirs, logits)


def test_squared_dice_matches_monai(rng):
    monai = ref.monai_losses()
    logits, labels = make_case(rng)
    ours = lambda x: losses.dice_loss(x, labels, squared=True)
    monai_loss = monai.DiceLoss(
        softmax=True, to_onehot_y=True, squared_pred=True, batch=True, smooth_nr=0.0, smooth_dr=0.0
    )
    theirs = lambda t: monai_loss(t, torch.from_numpy(labels)[:, None])
    assert_same(ours, theirs, logits)


@pytest.mark.parametrize("weight_type", ["square", "simple", "uniform"])
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("include_background", [True, False])
def test_generalized_dice_matches_monai(rng, weight_type, per_image, include_background):
    monai = ref.monai_losses()
    logits, labels = make_case(rng)
    labels[0][labels[0] == 2] = 1  # class 2 absent from image 0: its weight is replaced
    ours = lambda x: losses.generalized_dice_loss(
        x, labels, weight_type=weight_type, per_image=per_image, include_background=include_background, reduction="sum"
    )
    monai_loss = monai.GeneralizedDiceLoss(
        softmax=True,
        to_onehot_y=True,
        w_type=weight_type,
        batch=not per_image,
        include_background=include_background,
        reduction="sum",
    )
    theirs = lambda t: monai_loss(t, torch.from_numpy(labels)[:, None])
    assert_same(ours, theirs, logits, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- Lovász


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [None, 255])
def test_lovasz_softmax_matches_smp(rng, per_image, ignore):
    smp = ref.smp_losses()
    logits, labels = make_case(rng, ignore=ignore)
    labels[0][labels[0] == 3] = 1  # a class absent from one image
    ours = lambda x: losses.lovasz_loss(x, labels, per_image=per_image, ignore_index=ignore)
    theirs = lambda t: smp.LovaszLoss("multiclass", per_image=per_image, ignore_index=ignore)(
        t, torch.from_numpy(labels)
    )
    assert_same(ours, theirs, logits)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [None, 255])
def test_lovasz_hinge_matches_smp(rng, mode, per_image, ignore):
    smp = ref.smp_losses()
    channels = 1 if mode == "binary" else C
    logits = (2 * rng.standard_normal((B, H, W, channels))).astype(np.float32)
    labels = rng.integers(0, 2, logits.shape).astype(np.float32)
    if ignore is not None:
        labels[rng.random(labels.shape) < 0.3] = ignore
    ours = lambda x: losses.lovasz_loss(x, labels, mode=mode, per_image=per_image, ignore_index=ignore)
    theirs = lambda t: smp.LovaszLoss(mode, per_image=per_image, ignore_index=ignore)(t, ref.to_torch_nchw(labels))
    assert_same(ours, theirs, logits)


# ----------------------------------------------------------------------------- boxes


BOX_LOSSES = [  # ours, torchvision module, torchvision function
    ("giou_loss", "giou_loss", "generalized_box_iou_loss"),
    ("diou_loss", "diou_loss", "distance_box_iou_loss"),
    ("ciou_loss", "ciou_loss", "complete_box_iou_loss"),
]
DEGENERATE_BOX_PAIRS = [  # where torchvision's values and gradients are finite
    ([1, 1, 4, 3], [1, 1, 4, 3]),  # identical
    ([0, 0, 1, 1], [3, 4, 5, 6]),  # disjoint
    ([0, 0, 6, 6], [2, 1, 3, 4]),  # nested
    ([0, 0, 2, 2], [2, 0, 4, 2]),  # touching edges
    ([1, 1, 1, 3], [0, 0, 2, 2]),  # zero width
    ([2, 2, 2, 5], [2, 2, 2, 5]),  # identical zero-width boxes
]


def box_pairs(rng, n=24):
    """Random valid xyxy boxes `[n, 4]` twice, the degenerate pairs appended."""

    def boxes():
        xy = rng.uniform(0, 10, (n, 2))
        return np.concatenate([xy, xy + rng.uniform(0.3, 6, (n, 2))], axis=-1)

    b1, b2 = boxes(), boxes()
    b2[:4] = b1[:4] + rng.uniform(-0.7, 0.7, (4, 4))  # overlapping pairs
    extra1, extra2 = np.array(DEGENERATE_BOX_PAIRS, np.float64).transpose(1, 0, 2)
    return np.concatenate([b1, extra1]).astype(np.float32), np.concatenate([b2, extra2]).astype(np.float32)


def assert_same_boxes(jax_fn, torch_fn, b1, b2, rtol=RTOL, atol=ATOL):
    """Output and d(sum of it)/d(both box sets) of a JAX and a torch function of two box arrays."""
    value = jax_fn(jnp.asarray(b1), jnp.asarray(b2))
    grads = jax.grad(lambda p, q: jnp.sum(jax_fn(p, q)), argnums=(0, 1))(jnp.asarray(b1), jnp.asarray(b2))
    t1, t2 = flat_leaf(b1), flat_leaf(b2)
    t_value = torch_fn(t1, t2)
    t_value.sum().backward()
    np.testing.assert_allclose(value, t_value.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(grads[0], t1.grad.numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(grads[1], t2.grad.numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,module,function", BOX_LOSSES)
def test_box_losses_match_torchvision(rng, name, module, function, reduction):
    tv = getattr(ref.torchvision_ops(module), function)
    b1, b2 = box_pairs(rng)
    ours = lambda p, q: getattr(losses, name)(p, q, reduction=reduction)
    theirs = lambda p, q: tv(p, q, reduction=reduction)
    assert_same_boxes(ours, theirs, b1, b2)


@pytest.mark.parametrize("name,module,function", BOX_LOSSES)
def test_box_losses_eps_and_batch_dims_match_torchvision(rng, name, module, function):
    tv = getattr(ref.torchvision_ops(module), function)
    b1, b2 = (b.reshape(3, 10, 4) for b in box_pairs(rng, n=24))
    # torchvision's CIoU uses eps only in alpha (its DIoU part keeps 1e-7); with eps=1e-7 the
    # definitions agree, so a different eps is compared for GIoU and DIoU only.
    eps = 1e-7 if name == "ciou_loss" else 1e-3
    ours = lambda p, q: getattr(losses, name)(p, q, eps=eps)
    assert_same_boxes(ours, lambda p, q: tv(p, q, eps=eps), b1, b2)


def test_ciou_zero_height_box_matches_torchvision():
    """atan(w / 0): torchvision's value is finite (pi / 2) but its gradient is NaN; ours is finite."""
    tv = ref.torchvision_ops("ciou_loss")
    b1 = np.array([[1, 2, 3, 2], [0, 1, 4, 1]], np.float32)
    b2 = np.array([[0, 0, 2, 2], [1, 0, 2, 3]], np.float32)
    theirs = tv.complete_box_iou_loss(torch.from_numpy(b1), torch.from_numpy(b2))
    np.testing.assert_allclose(losses.ciou_loss(b1, b2), theirs.numpy(), rtol=RTOL, atol=ATOL)
    assert np.isfinite(jax.grad(lambda p: jnp.sum(losses.ciou_loss(p, b2)))(b1)).all()


def torchvision_boxes():
    """`torchvision.ops.boxes`: its box geometry is plain torch (only `nms` needs compiled ops)."""
    return ref.torchvision_ops("boxes")


@pytest.mark.parametrize("leading", [(), (2,)])
def test_box_iou_and_giou_match_torchvision(rng, leading):
    tvb = torchvision_boxes()
    b1, b2 = box_pairs(rng, n=10)
    b1, b2 = np.broadcast_to(b1, leading + b1.shape).copy(), np.broadcast_to(b2[:7], leading + (7, 4)).copy()
    for ours, theirs in [(ops.box_iou, tvb.box_iou), (ops.generalized_box_iou, tvb.generalized_box_iou)]:
        expected = theirs(torch.from_numpy(b1), torch.from_numpy(b2)).numpy()
        np.testing.assert_allclose(ours(b1, b2), expected, rtol=RTOL, atol=ATOL)


def test_box_iou_of_zero_area_boxes_is_zero_where_torchvision_is_nan():
    tvb = torchvision_boxes()
    points = np.array([[1, 1, 1, 1], [2, 2, 2, 2], [0, 0, 3, 3]], np.float32)
    theirs = tvb.box_iou(torch.from_numpy(points), torch.from_numpy(points)).numpy()
    ours = np.asarray(ops.box_iou(points, points))
    nan = np.isnan(theirs)
    assert nan[0, 0] and nan[1, 1]
    np.testing.assert_array_equal(ours[nan], 0.0)
    np.testing.assert_allclose(ours[~nan], theirs[~nan], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("in_fmt", ops.FORMATS)
@pytest.mark.parametrize("out_fmt", ops.FORMATS)
def test_box_convert_matches_torchvision(rng, in_fmt, out_fmt):
    tvb = torchvision_boxes()
    boxes = rng.uniform(0.5, 20, (2, 5, 4)).astype(np.float32)
    expected = tvb.box_convert(torch.from_numpy(boxes), in_fmt, out_fmt).numpy()
    np.testing.assert_array_equal(ops.box_convert(boxes, in_fmt, out_fmt), expected)


def test_box_area_and_clip_match_torchvision(rng, monkeypatch):
    tvb = torchvision_boxes()
    b1, _ = box_pairs(rng)
    boxes = (b1 * 3 - 8).reshape(2, -1, 4)
    np.testing.assert_allclose(ops.box_area(boxes), tvb.box_area(torch.from_numpy(boxes)).numpy(), rtol=RTOL)
    # The bare torchvision package lacks `_is_tracing`, which clip_boxes_to_image reads.
    monkeypatch.setattr(sys.modules["torchvision"], "_is_tracing", lambda: False, raising=False)
    expected = tvb.clip_boxes_to_image(torch.from_numpy(boxes), (13, 17)).numpy()
    np.testing.assert_array_equal(ops.clip_boxes(boxes, (13, 17)), expected)
