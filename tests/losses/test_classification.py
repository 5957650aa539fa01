"""cross_entropy, binary_cross_entropy, focal_loss and sigmoid_focal_loss against NumPy formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses
from tests.losses import numpy_reference as ref


@pytest.fixture
def rng():
    return np.random.default_rng(1)


def random_case(rng, shape=(2, 5, 6), num_classes=4, ignore=None, scale=3.0):
    logits = (scale * rng.standard_normal(shape + (num_classes,))).astype(np.float32)
    labels = rng.integers(0, num_classes, shape).astype(np.int32)
    if ignore is not None:
        labels[rng.random(shape) < 0.3] = ignore
    return logits, labels


def check_grad(jax_fn, numpy_fn, logits, rtol=1e-3, atol=1e-5):
    """JAX gradient vs central differences of the float64 NumPy reference."""
    grad = jax.jit(jax.grad(jax_fn))(jnp.asarray(logits))
    expected = ref.numeric_grad(numpy_fn, logits.astype(np.float64))
    np.testing.assert_allclose(grad, expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- cross_entropy


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_value(rng, reduction, weighted, ignore, smoothing):
    logits, labels = random_case(rng, ignore=ignore)
    weight = rng.uniform(0.2, 3, 4).astype(np.float32) if weighted else None
    ours = losses.cross_entropy(
        logits, labels, class_weights=weight, ignore_index=ignore, label_smoothing=smoothing, reduction=reduction
    )
    expected = ref.cross_entropy(logits.astype(np.float64), labels, weight, ignore, smoothing, reduction)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    assert ours.dtype == jnp.float32


def test_cross_entropy_gradient(rng):
    logits, labels = random_case(rng, shape=(2, 2, 3), ignore=255)
    weight = np.array([0.5, 1.0, 2.0, 1.5], np.float32)
    options = dict(weight=weight, ignore_index=255, smoothing=0.2)
    check_grad(
        lambda x: losses.cross_entropy(x, labels, class_weights=weight, ignore_index=255, label_smoothing=0.2),
        lambda x: ref.cross_entropy(x, labels, **options),
        logits,
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_soft_targets(rng, weighted):
    logits, _ = random_case(rng)
    targets = rng.dirichlet(np.ones(4), logits.shape[:-1]).astype(np.float32)
    weight = rng.uniform(0.2, 3, 4) if weighted else None
    ours = losses.cross_entropy(logits, targets, class_weights=weight, label_smoothing=0.1)
    np.testing.assert_allclose(ours, ref.cross_entropy_soft(logits.astype(np.float64), targets, weight, 0.1), rtol=1e-5)


def test_cross_entropy_one_hot_targets_equal_labels(rng):
    logits, labels = random_case(rng)
    one_hot = np.eye(4, dtype=np.float32)[labels]
    np.testing.assert_allclose(
        losses.cross_entropy(logits, one_hot, label_smoothing=0.2),
        losses.cross_entropy(logits, labels, label_smoothing=0.2),
        rtol=1e-6,
    )


def test_cross_entropy_mask_equals_ignoring(rng):
    logits, labels = random_case(rng)
    keep = rng.random(labels.shape) > 0.4
    ignored = np.where(keep, labels, 255)
    np.testing.assert_allclose(
        losses.cross_entropy(logits, labels, mask=keep),
        losses.cross_entropy(logits, ignored, ignore_index=255),
        rtol=1e-6,
    )


def test_cross_entropy_all_ignored_is_zero_with_zero_gradient(rng):
    logits, labels = random_case(rng)
    labels[:] = 255
    value, grad = jax.value_and_grad(lambda x: losses.cross_entropy(x, labels, ignore_index=255, label_smoothing=0.1))(
        jnp.asarray(logits)
    )
    assert value == 0.0
    assert np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x, y: losses.cross_entropy(x, y[:, :3]), "integer labels must have shape"),
        (lambda x, y: losses.cross_entropy(x, y + 10), "labels must be int in \\[0, 4\\)"),
        (lambda x, y: losses.cross_entropy(x, y, class_weights=[1.0, 2.0]), "class_weights must have shape \\(4,\\)"),
        (lambda x, y: losses.cross_entropy(x, y, reduction="avg"), "reduction must be one of"),
        (lambda x, y: losses.cross_entropy(x.astype(np.int32), y), "logits must be a floating array"),
        (lambda x, y: losses.cross_entropy(x, np.eye(4, dtype=np.float32)[y], ignore_index=0), "ignore_index applies"),
        (lambda x, y: losses.cross_entropy(x, y, mask=np.ones((3, 3))), "mask of shape"),
    ],
)
def test_cross_entropy_errors_name_the_problem(rng, call, message):
    logits, labels = random_case(rng)
    with pytest.raises((ValueError, TypeError), match=message):
        call(logits, labels)


def test_out_of_range_label_error_names_value_and_position(rng):
    logits, labels = random_case(rng)
    labels[1, 2, 3] = 300
    with pytest.raises(ValueError, match=r"got 300 at index \(1, 2, 3\)"):
        losses.cross_entropy(logits, labels, ignore_index=255)


# ----------------------------------------------------------------------------- binary


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_value(rng, reduction):
    x = (4 * rng.standard_normal((3, 4, 5))).astype(np.float32)
    y = rng.uniform(0, 1, x.shape).astype(np.float32)
    pos_weight = rng.uniform(0.5, 2, 5)
    weight = rng.uniform(0.5, 2, x.shape)
    ours = losses.binary_cross_entropy(x, y, pos_weight=pos_weight, weights=weight, reduction=reduction)
    expected = ref.bce_with_logits(x.astype(np.float64), y, pos_weight, weight)
    expected = {"none": expected, "sum": expected.sum(), "mean": expected.mean()}[reduction]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_binary_cross_entropy_ignore_and_smoothing(rng):
    x = (4 * rng.standard_normal((3, 4, 1))).astype(np.float32)
    y = rng.integers(0, 2, x.shape).astype(np.float32)
    y[rng.random(y.shape) < 0.3] = -1
    keep = y != -1
    smoothed = np.where(y == 1, 0.9, 0.1)
    expected = ref.bce_with_logits(x.astype(np.float64), smoothed)[keep].mean()
    ours = losses.binary_cross_entropy(x, y, ignore_index=-1, label_smoothing=0.1)
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
    check_grad(
        lambda z: losses.binary_cross_entropy(z, y, ignore_index=-1, label_smoothing=0.1),
        lambda z: ref.bce_with_logits(z, smoothed)[keep].mean(),
        x,
    )


# ----------------------------------------------------------------------------- focal


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_focal_value_and_gradient(rng, gamma, weighted):
    logits, labels = random_case(rng, shape=(2, 2, 3), ignore=255)
    weight = np.array([0.5, 1.0, 2.0, 1.5]) if weighted else None
    ours = lambda x: losses.focal_loss(x, labels, gamma=gamma, ignore_index=255, class_weights=weight)
    expected = lambda x: ref.softmax_focal(x, labels, gamma, 255, weight)
    np.testing.assert_allclose(ours(logits), expected(logits.astype(np.float64)), rtol=1e-5)
    check_grad(ours, expected, logits)


def test_softmax_focal_gamma_zero_is_cross_entropy(rng):
    logits, labels = random_case(rng, ignore=255)
    weight = np.array([0.5, 1.0, 2.0, 1.5], np.float32)
    for reduction in ("mean", "sum", "none"):
        np.testing.assert_allclose(
            losses.focal_loss(logits, labels, gamma=0.0, ignore_index=255, class_weights=weight, reduction=reduction),
            losses.cross_entropy(logits, labels, ignore_index=255, class_weights=weight, reduction=reduction),
            rtol=1e-6,
            atol=1e-7,
        )


def test_softmax_focal_scalar_alpha_weights_background_by_one_minus_alpha(rng):
    logits, labels = random_case(rng)
    alpha = np.where(np.arange(4) == 0, 0.75, 0.25)
    np.testing.assert_allclose(
        losses.focal_loss(logits, labels, alpha=0.25, reduction="none"),
        alpha[labels] * np.asarray(losses.focal_loss(logits, labels, reduction="none")),
        rtol=1e-6,
    )


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
@pytest.mark.parametrize("alpha", [None, 0.3])
def test_sigmoid_mode_focal_matches_smp_formula(rng, mode, gamma, alpha):
    channels = 1 if mode == "binary" else 3
    x = (4 * rng.standard_normal((2, 3, 4, channels))).astype(np.float32)
    y = rng.integers(0, 2, x.shape).astype(np.float32)
    y[rng.random(y.shape) < 0.2] = -1
    ours = lambda z: losses.focal_loss(z, y, mode=mode, gamma=gamma, alpha=alpha, ignore_index=-1)
    expected = lambda z: ref.smp_binary_focal(z, y, gamma, alpha, -1)
    np.testing.assert_allclose(ours(x), expected(x.astype(np.float64)), rtol=1e-5)
    check_grad(ours, expected, x)


def test_sigmoid_mode_focal_soft_targets(rng):
    x = (3 * rng.standard_normal((2, 3, 3))).astype(np.float32)
    y = rng.uniform(0, 1, x.shape).astype(np.float32)
    ours = lambda z: losses.focal_loss(z, y, mode="multilabel", gamma=0.7)
    expected = lambda z: ref.smp_binary_focal(z, y, 0.7)
    np.testing.assert_allclose(ours(x), expected(x.astype(np.float64)), rtol=1e-5)
    check_grad(ours, expected, x)


def test_binary_focal_accepts_labels_without_channel_axis(rng):
    x = rng.standard_normal((2, 3, 4, 1)).astype(np.float32)
    y = rng.integers(0, 2, (2, 3, 4))
    np.testing.assert_allclose(
        losses.focal_loss(x, y, mode="binary"), losses.focal_loss(x, y[..., None], mode="binary"), rtol=1e-7
    )
    with pytest.raises(ValueError, match="binary mode needs logits with one channel"):
        losses.focal_loss(np.zeros((2, 3, 4, 2), np.float32), np.zeros((2, 3, 4, 2)), mode="binary")


@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_sigmoid_focal_matches_torchvision_formula(rng, alpha, gamma):
    x = (4 * rng.standard_normal((3, 5))).astype(np.float32)
    y = rng.uniform(0, 1, x.shape).round(1).astype(np.float32)
    ours = lambda z, r="sum": losses.sigmoid_focal_loss(z, y, alpha=alpha, gamma=gamma, reduction=r)
    expected = ref.sigmoid_focal(x.astype(np.float64), y, alpha, gamma)
    np.testing.assert_allclose(ours(x, "none"), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours(x, "mean"), expected.mean(), rtol=1e-5)
    check_grad(ours, lambda z: ref.sigmoid_focal(z, y, alpha, gamma).sum(), x)
